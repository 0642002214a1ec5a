"""tf.data input pipelines: resumable training batches, padded evaluation batches, global arrays.

Examples are read by index from tfds ArrayRecord files (random access), which makes the training
stream a pure function of (seed, position):

- Global stream position `s` holds example `index_shuffle(s mod n, seed=(seed, epoch))` of the
  n-example split, epoch = s // n: a fresh exact permutation every epoch, no shuffle buffer.
- Global batch `b` is positions [b*G, (b+1)*G); host `p` of P reads only its slice
  [b*G + p*G/P, b*G + (p+1)*G/P), so the hosts' local batches concatenate to the global batch.
- Example `s` is augmented with the stateless seed (seed, s).

So the position is just the step: `make_train_iterator(..., start_step=k)` yields exactly the
batches a run that was never stopped would have seen from step k, bit for bit, with no decoding of
skipped examples. The same holds for any host count that divides the global batch.

Evaluation reads each host's contiguous share of the split once, at native resolution padded to
`config.data.eval_pad_size`, and pads the last batches with `valid=False` examples so every
host runs the same number of same-shaped batches (one compilation).
"""

import math
from collections.abc import Iterator

import jax
import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from jax.experimental import multihost_utils

from jaxseg.data import datasets, transforms
from jaxseg.labels import IGNORE_ID

Batch = dict[str, np.ndarray]
# The map functions are plain TF code; AutoGraph would only re-parse them (seconds per pipeline).
_graph_fn = tf.autograph.experimental.do_not_convert
_SHUFFLE_SALT = 0x5EED  # keeps shuffle draws apart from augmentation draws of the same seed


class EvalBatches:
    """Re-iterable padded evaluation batches of one host.

    Each pass yields `num_batches` batches `{"image": float32 [L, H, W, C], "label": int32
    [L, H, W], "valid": bool [L]}` with (H, W) = `config.data.eval_pad_size`; the count is the
    same on every host. Padding pixels have label 255; padding examples have valid=False.
    """

    def __init__(self, dataset: tf.data.Dataset, num_batches: int, num_examples: int):
        self._dataset = dataset
        self.num_batches = num_batches
        self.num_examples = num_examples  # in the whole split, over all hosts

    def __iter__(self) -> Iterator[Batch]:
        return self._dataset.as_numpy_iterator()


def _processes(process_index: int | None, process_count: int | None) -> tuple[int, int]:
    index = jax.process_index() if process_index is None else process_index
    count = jax.process_count() if process_count is None else process_count
    if not 0 <= index < count:
        raise ValueError(f"process_index {index} is not in [0, process_count={count})")
    return index, count


def _local_batch_size(global_batch_size: int, process_count: int) -> int:
    if global_batch_size < 1 or global_batch_size % process_count:
        raise ValueError(
            f"global_batch_size {global_batch_size} must be a positive multiple of the "
            f"process count {process_count}"
        )
    return global_batch_size // process_count


def open_split(
    data_cfg: ml_collections.ConfigDict,
    split: str,
    *,
    key: str,
    spec: datasets.DatasetSpec | None = None,
):
    """Prepares the data set if needed and opens `split` for reading raw records by index.

    Args:
      data_cfg: `config.data`.
      split: split name, tfds slicing allowed ("train[:90%]").
      key: the config key `split` came from, for error messages.
      spec: `datasets.dataset_spec(data_cfg)` if the caller has it (a run computes it once).

    Returns:
      (spec, source): the DatasetSpec and a sequence of serialized tf.train.Examples.
    """
    spec = spec or datasets.dataset_spec(data_cfg)
    if len(data_cfg.mean) != spec.image_channels or len(data_cfg.std) != spec.image_channels:
        raise ValueError(
            f"config.data.mean/std have {len(data_cfg.mean)}/{len(data_cfg.std)} values but "
            f"{spec.name} images have {spec.image_channels} channel(s)"
        )
    builder = _prepare(spec, data_cfg)
    base = split.split("[")[0]
    known = list(builder.info.splits)  # empty under tfds.testing.mock_data: nothing to check
    if known and base not in known:
        raise ValueError(f"{key}: {spec.name} has no split {base!r}; it has {sorted(known)}")
    if known and builder.info.splits[split].num_examples == 0:
        raise ValueError(f"{key}: split {split!r} of {spec.name} is empty")
    source = builder.as_data_source(
        split, deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES
    )
    if len(source) == 0:
        raise ValueError(f"{key}: split {split!r} of {spec.name} is empty")
    return spec, source


def _prepare(spec: datasets.DatasetSpec, data_cfg: ml_collections.ConfigDict):
    """Builds the data set if it is not there yet; returns its builder.

    In a multi-process job, concurrent builds into one shared data dir would race: process 0
    builds first while the others wait at a barrier, then they open it (or, on host-local
    disks, build their own copy).
    """
    download_config = tfds.download.DownloadConfig(
        manual_dir=data_cfg.manual_dir, compute_stats=tfds.download.ComputeStatsMode.SKIP
    )
    if jax.process_count() > 1:
        if jax.process_index() == 0:
            spec.make_builder(data_cfg).download_and_prepare(download_config=download_config)
        multihost_utils.sync_global_devices(f"jaxseg: {spec.name} prepared by process 0")
    builder = spec.make_builder(data_cfg)
    builder.download_and_prepare(download_config=download_config)
    return builder


def _read_records(source, indices: tf.Tensor) -> tf.Tensor:
    """Reads serialized records [k] for example indices [k] (int64) from the data source."""

    def read(idx: np.ndarray) -> np.ndarray:
        return np.array([source[int(i)] for i in idx], dtype=object)

    # stateful=True: tf.data must never run two reads concurrently (its map parallelisation
    # optimisation would for a "pure" function), so one thread owns the data source.
    records = tf.numpy_function(read, [indices], tf.string, stateful=True)
    return tf.ensure_shape(records, indices.shape)


def _decoder(spec: datasets.DatasetSpec, split: str):
    """Returns fn(record, index) -> {"image": float32 [H, W, C] in [0, 1], "label": int32 [H, W]}.

    Raises (at iteration) an InvalidArgumentError naming the example when the image and mask
    sizes differ.
    """
    features = {
        spec.image_key: tf.io.FixedLenFeature([], tf.string),
        spec.label_key: tf.io.FixedLenFeature([], tf.string),
    }
    if spec.id_key:
        features[spec.id_key] = tf.io.FixedLenFeature([], tf.string)
    table = None if spec.label_map is None else tf.constant(spec.label_map, tf.int32)

    def decode(record: tf.Tensor, index: tf.Tensor) -> transforms.Example:
        parsed = tf.io.parse_single_example(record, features)
        image = tf.io.decode_image(
            parsed[spec.image_key], channels=spec.image_channels, expand_animations=False
        )
        raw = tf.io.decode_image(parsed[spec.label_key], channels=0, expand_animations=False)
        label = tf.cast(raw[..., 0], tf.int32)
        if table is not None:
            label = tf.gather(table, label)
        name = parsed[spec.id_key] if spec.id_key else tf.constant("")
        check = tf.debugging.Assert(
            tf.reduce_all(tf.shape(image)[:2] == tf.shape(label)),
            [f"{spec.name}/{split}: image and mask sizes differ at example index", index,
             name, "image", tf.shape(image), "mask", tf.shape(label)],
        )  # fmt: skip
        with tf.control_dependencies([check]):
            image = tf.image.convert_image_dtype(image, tf.float32)
        return {"image": image, "label": label}

    return decode


def decoded_examples(
    data_cfg: ml_collections.ConfigDict, split: str, *, key: str, max_examples: int = 0
) -> tuple[datasets.DatasetSpec, int, tf.data.Dataset]:
    """The examples of `split` in file order, decoded exactly as training and evaluation decode
    them (the data set's label map applied), without any transform.

    Args:
      data_cfg: `config.data`.
      split: split name, tfds slicing allowed.
      key: the config key `split` came from, for error messages.
      max_examples: read only the first this many; 0 = all.

    Returns:
      (spec, number of examples read, dataset of {"image": float32 [H, W, C] in [0, 1],
      "label": int32 [H, W]}).
    """
    spec, source = open_split(data_cfg, split, key=key)
    count = len(source) if max_examples <= 0 else min(max_examples, len(source))
    decode = _decoder(spec, split)
    dataset = (
        tf.data.Dataset.range(count)
        .batch(64)
        .map(lambda idx: (idx, _read_records(source, idx)))
        .unbatch()
        .map(lambda idx, record: decode(record, idx), num_parallel_calls=tf.data.AUTOTUNE)
        .prefetch(tf.data.AUTOTUNE)
    )
    return spec, count, dataset


def make_train_iterator(
    data_cfg: ml_collections.ConfigDict,
    *,
    global_batch_size: int,
    seed: int,
    start_step: int = 0,
    context: tuple[int, int] = (0, 0),
    spec: datasets.DatasetSpec | None = None,
    process_index: int | None = None,
    process_count: int | None = None,
) -> Iterator[Batch]:
    """Endless, deterministic, resumable training batches for this host.

    Args:
      data_cfg: `config.data` (dataset, `train_split`, augmentation, crop size, ...).
      global_batch_size: examples per step over all hosts; a multiple of process_count.
      seed: data seed (shuffling and augmentation).
      start_step: first step to yield: a resumed run passes its restored state's step (the
        batches are a pure function of (seed, step), so nothing else needs saving).
      context: (rows, cols) the model's output lies inside its input
        (`jaxseg.models.input_context`); images are mirror-padded by it before augmentation.
      spec: `datasets.dataset_spec(data_cfg)` if the caller has it.
      process_index, process_count: this host and the host count; default from jax.

    Returns:
      an iterator of `{"image": float32 [L, h, w, C] normalised, "label": int32 [L, h, w]}`
      (plus "weight": float32 [L, h, w] with `config.data.weight_map`),
      L = global_batch_size / process_count, (h, w) = `config.data.crop_size`.
    """
    index, count = _processes(process_index, process_count)
    local = _local_batch_size(global_batch_size, count)
    spec, source = open_split(
        data_cfg, data_cfg.train_split, key="config.data.train_split", spec=spec
    )
    num_examples = len(source)
    if data_cfg.weight_map and spec.num_classes != 2:
        raise ValueError(
            f"config.data.weight_map needs a binary data set (class 1 = cell); {spec.name} has "
            f"{spec.num_classes} classes"
        )
    chain = transforms.train_transforms(data_cfg, context=context)
    decode = _decoder(spec, data_cfg.train_split)

    def locate(counter):
        # counter enumerates this host's examples; see the module docstring for the layout.
        step, slot = counter // local, counter % local
        position = step * global_batch_size + index * local + slot
        epoch = position // num_examples
        shuffle_seed = tf.stack([tf.constant(seed ^ _SHUFFLE_SALT, tf.int64), epoch])
        example = tf.random.experimental.index_shuffle(
            position % num_examples, shuffle_seed, num_examples - 1
        )
        return position, example

    def load(positions, examples):
        return positions, examples, _read_records(source, examples)

    def prepare(position, example, record):
        augment_seed = tf.stack([tf.constant(seed, tf.int64), position])
        return transforms.apply(chain, decode(record, example), augment_seed)

    dataset = (
        tf.data.Dataset.range(start_step * local, np.iinfo(np.int64).max)
        .map(_graph_fn(locate))
        .batch(local)  # read a batch of records per Python call
        .map(_graph_fn(load))
        .unbatch()
        .map(_graph_fn(prepare), num_parallel_calls=tf.data.AUTOTUNE)
        .batch(local, drop_remainder=True)
        .prefetch(data_cfg.prefetch_batches)
    )
    return dataset.with_options(_options()).as_numpy_iterator()


def make_eval_iterator(
    data_cfg: ml_collections.ConfigDict,
    *,
    global_batch_size: int,
    spec: datasets.DatasetSpec | None = None,
    process_index: int | None = None,
    process_count: int | None = None,
) -> EvalBatches:
    """Padded evaluation batches; over all hosts, every example of the split exactly once.

    Args:
      data_cfg: `config.data` (`eval_split`, `eval_pad_size`, mean/std).
      global_batch_size: examples per step over all hosts; a multiple of process_count.
      spec: `datasets.dataset_spec(data_cfg)` if the caller has it.
      process_index, process_count: this host and the host count; default from jax.

    Returns:
      EvalBatches (re-iterable, `num_batches` per pass) of `{"image": float32 [L, H, W, C],
      "label": int32 [L, H, W], "valid": bool [L]}`, (H, W) = `config.data.eval_pad_size`.
    """
    index, count = _processes(process_index, process_count)
    local = _local_batch_size(global_batch_size, count)
    split = data_cfg.eval_split
    spec, source = open_split(data_cfg, split, key="config.data.eval_split", spec=spec)
    num_examples = len(source)
    per_host = math.ceil(num_examples / count)
    start = min(index * per_host, num_examples)
    stop = min(start + per_host, num_examples)
    num_batches = math.ceil(per_host / local)
    chain = transforms.eval_transforms(data_cfg)
    decode = _decoder(spec, split)
    pad_h, pad_w = data_cfg.eval_pad_size

    def prepare(example, record):
        decoded = decode(record, example)
        shape = tf.shape(decoded["label"])
        fits = tf.debugging.Assert(
            (shape[0] <= pad_h) & (shape[1] <= pad_w),
            [f"{spec.name}/{split}: example index", example, "of shape", shape,
             f"exceeds config.data.eval_pad_size {tuple(data_cfg.eval_pad_size)}; raise it"],
        )  # fmt: skip
        with tf.control_dependencies([fits]):
            decoded = {k: tf.identity(v) for k, v in decoded.items()}
        out = transforms.apply(chain, decoded, tf.zeros([2], tf.int64))
        return {**out, "valid": tf.constant(True)}

    channels = spec.image_channels
    filler = {
        "image": tf.zeros([pad_h, pad_w, channels], tf.float32),
        "label": tf.fill([pad_h, pad_w], tf.constant(IGNORE_ID, tf.int32)),
        "valid": tf.constant(False),
    }
    examples = (
        tf.data.Dataset.range(start, stop)
        .batch(local)
        .map(_graph_fn(lambda idx: (idx, _read_records(source, idx))))
        .unbatch()
        .map(_graph_fn(prepare), num_parallel_calls=tf.data.AUTOTUNE)
    )
    padding = tf.data.Dataset.from_tensors(filler).repeat(num_batches * local - (stop - start))
    dataset = (
        examples.concatenate(padding)
        .batch(local, drop_remainder=True)
        .prefetch(data_cfg.prefetch_batches)
    )
    return EvalBatches(dataset.with_options(_options()), num_batches, num_examples)


def _options() -> tf.data.Options:
    options = tf.data.Options()
    options.deterministic = True  # parallel maps keep order: batches are reproducible
    return options


def to_global(batch: Batch, sharding: jax.sharding.NamedSharding) -> dict[str, jax.Array]:
    """Assembles host-local batches into global `jax.Array`s sharded along the batch axis.

    Args:
      batch: this host's batch, leading axis = local batch.
      sharding: the batch sharding, e.g. NamedSharding(mesh, PartitionSpec("data")); only its
        first PartitionSpec entry (the batch axis) is used, so one sharding fits every rank.

    Returns:
      the same keys as global arrays with leading axis = local batch x process count.
    """
    spec = jax.sharding.PartitionSpec(*sharding.spec[:1])
    leading = jax.sharding.NamedSharding(sharding.mesh, spec)
    return {k: jax.make_array_from_process_local_data(leading, v) for k, v in batch.items()}
