"""Host loading with Grain over tfds data sources: read, decode, bring to a fixed shape.

No TensorFlow: tfds builds our data sets and opens their ArrayRecord files as random-access data
sources, which decode examples to numpy. The host does nothing random; augmentation runs on the
device (`jaxseg.data.augment`). That makes the training stream a pure function of
(seed, position):

- Global stream position `s` holds example `permutation(seed, epoch)[s mod n]` of the n-example
  split, epoch = s // n: a fresh exact permutation every epoch (numpy's generator seeded with
  (seed, epoch), drawn once per epoch per process), no shuffle buffer.
- Global batch `b` is positions [b*G, (b+1)*G); host `p` of P reads only its slice
  [b*G + p*G/P, b*G + (p+1)*G/P), so the hosts' local batches concatenate to the global batch.
- Example `s` is augmented on the device with the key fold_in(key(seed), s).

So the position is just the step: `make_train_iterator(..., start_step=k)` yields exactly the
batches a run that was never stopped would have seen from step k, bit for bit, with no decoding of
skipped examples, for any host count that divides the global batch and any number of loader
workers (each batch is a pure function of its index, so workers only change who computes it).

Loaded host batches (training): {"image": uint8 [L, H, W, C], "label": int32 [L, H, W] (255 =
ignore, also in the padding), "size": int32 [L, 2] (each example's real height and width),
"position": uint32 [L, 2] (global stream position: high, low word)} (+ "weight": float32
[L, H, W], the precomputed eq. 2 map, 0 in the padding), (H, W) = `config.data.eval_pad_size`,
or with `config.data.pad_buckets` > 1 the batch's size bucket (`_StreamOrder`).

Evaluation reads each host's contiguous share of the split once, at native resolution, normalised
and padded to `config.data.eval_pad_size` on the host (`pad_image`: 0 after normalisation), and
pads the last batches with `valid=False` examples so every host runs the same number of
same-shaped batches (one compilation).
"""

import logging
import math
from collections.abc import Callable, Iterator, Sequence

import grain
import jax
import ml_collections
import numpy as np
import tensorflow_datasets as tfds
from absl import flags
from jax.experimental import multihost_utils

from jaxseg import backend, logs
from jaxseg.data import augment, datasets, precomputed, weight_maps
from jaxseg.data.builders import image_folder
from jaxseg.labels import IGNORE_ID

Batch = dict[str, np.ndarray]
_SHUFFLE_SALT = 0x5EED  # keeps shuffle draws apart from augmentation draws of the same seed
_BUCKET_SALT = 0xB0C5  # and the batch order within a bucketing window apart from both
_BUCKET_WINDOW = 16  # global batches whose examples are grouped by size (pad_buckets > 1)


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
    """Prepares the data set if needed and opens `split` for reading decoded examples by index.

    Args:
      data_cfg: `config.data`.
      split: split name, tfds slicing allowed ("train[:90%]").
      key: the config key `split` came from, for error messages.
      spec: `datasets.dataset_spec(data_cfg)` if the caller has it (a run computes it once).

    Returns:
      (spec, source): the DatasetSpec and a tfds data source (a sequence of feature dicts).
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
    source = builder.as_data_source(split)
    if len(source) == 0:
        raise ValueError(f"{key}: split {split!r} of {spec.name} is empty")
    if spec.name == "image_folder":
        warn_if_one_class(image_folder.recorded_class_pixels(builder, split), spec, split, key)
    return spec, source


def warn_if_one_class(
    class_pixels: Sequence[int] | None, spec: datasets.DatasetSpec, split: str, key: str
) -> bool:
    """Logs a warning (and returns True) when at most one class has pixels in `split`.

    `class_pixels`: pixels per class id, as the image_folder build records them (None: not
    recorded, e.g. built-in data sets: no warning). Such a split teaches nothing (training on it
    drives the loss to 0 by predicting that class everywhere) and scores a meaningless mIoU.
    """
    if class_pixels is None:
        return False
    present = [name for name, pixels in zip(spec.class_names, class_pixels) if pixels]
    if len(present) > 1:
        return False
    logging.warning(
        "%s: only %s of the %d classes has pixels in split %r of %s; every mask is that one "
        "class (or ignore). Check the masks and their encoding (python -m jaxseg.data.inspect; "
        "config.data.folder.mask_format, id_map, ignore_ids, class_names).",
        key,
        repr(present[0]) if present else "no class",
        len(spec.class_names),
        split,
        spec.name,
    )
    return True


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
            _download_and_prepare(spec, data_cfg, download_config)
        multihost_utils.sync_global_devices(f"jaxseg: {spec.name} prepared by process 0")
    return _download_and_prepare(spec, data_cfg, download_config)


def _download_and_prepare(spec, data_cfg, download_config):
    builder = spec.make_builder(data_cfg)
    try:
        builder.download_and_prepare(download_config=download_config)
    except ImportError as e:
        if "tensorflow" not in str(e).lower():
            raise
        # tfds's own builders of oxford_iiit_pet, cityscapes and ade20k call TensorFlow while
        # generating (archive extraction, tf.io.gfile, tf.image); reading needs none.
        raise ImportError(
            f"{spec.name}: tfds's builder needs TensorFlow to prepare this data set once "
            f'({e}). Install it for that step (pip install -e ".[savedmodel]" or '
            "tensorflow-cpu), or prepare it where TensorFlow is installed (`tfds build "
            f"{spec.name} --file_format=array_record`) and point config.data.data_dir there; "
            "training on the prepared data set needs no TensorFlow"
        ) from e
    return builder


class Decoder:
    """Example index -> {"image": uint8 [H, W, C], "label": int32 [H, W]} (the data set's label
    map applied), with errors that name the split, index and file. Picklable (loader workers)."""

    def __init__(self, spec: datasets.DatasetSpec, source, split: str):
        self.spec, self.source, self.split = spec, source, split
        self.table = None if spec.label_map is None else np.asarray(spec.label_map, np.uint8)

    def name(self, index: int, features=None) -> str:
        if self.spec.id_key and features is not None and self.spec.id_key in features:
            value = features[self.spec.id_key]
            value = value.decode() if isinstance(value, bytes) else str(value)
            return f"{self.spec.name}/{self.split} example index {index} ({value})"
        return f"{self.spec.name}/{self.split} example index {index}"

    def __call__(self, index: int) -> Batch:
        index = int(index)
        try:
            features = self.source[index]
        except Exception as e:
            raise ValueError(f"{self.name(index)}: cannot be read or decoded: {e}") from e
        image = np.asarray(features[self.spec.image_key])
        label = np.asarray(features[self.spec.label_key])
        if image.ndim == 2:
            image = image[..., None]
        image = _channels(image, self.spec.image_channels, self.name(index, features))
        if label.ndim == 3:
            label = label[..., 0]
        if image.shape[:2] != label.shape:
            raise ValueError(
                f"{self.name(index, features)}: image and mask sizes differ: image "
                f"{image.shape[:2]}, mask {label.shape}"
            )
        label = label.astype(np.int32)  # 16-bit masks keep their values (inspection names them)
        if self.table is not None:
            label = self.table[np.minimum(label, 255)].astype(np.int32)
        return {"image": image.astype(np.uint8), "label": label}


def _channels(image: np.ndarray, channels: int, name: str) -> np.ndarray:
    if image.shape[-1] == channels:
        return image
    if image.shape[-1] == 1:
        return np.repeat(image, channels, axis=-1)
    if image.shape[-1] == 4 and channels == 3:
        return image[..., :3]
    raise ValueError(f"{name}: image has {image.shape[-1]} channels, the data set {channels}")


def decoded_examples(
    data_cfg: ml_collections.ConfigDict, split: str, *, key: str, max_examples: int = 0
) -> tuple[datasets.DatasetSpec, int, Iterator[Batch]]:
    """The examples of `split` in file order, decoded exactly as training and evaluation decode
    them (the data set's label map applied), without any transform.

    Returns:
      (spec, number of examples read, iterator of {"image": uint8 [H, W, C], "label": int32
      [H, W]}), read by a few threads in order.
    """
    spec, source = open_split(data_cfg, split, key=key)
    count = len(source) if max_examples <= 0 else min(max_examples, len(source))
    dataset = grain.MapDataset.range(count).map(Decoder(spec, source, split))
    return spec, count, iter(dataset.to_iter_dataset(_read_options(data_cfg)))


def pad_image(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """The one border rule for images, shared by training, evaluation and predict.py.

    Pads a normalised image [h, w, C] at the bottom and right to [height, width] with 0, i.e.
    the data set's mean: what the FCN release's conv1_1 zero padding adds after mean
    subtraction, so a band costs no spurious edge. Pixel (y, x) stays at (y, x). (On the
    device, `augment.warp` gives 0 to every pixel its grid takes from outside the image.)
    """
    h, w = image.shape[:2]
    if h > height or w > width:
        raise ValueError(f"image of shape {image.shape} exceeds the pad size {height}x{width}")
    return np.pad(image, ((0, height - h), (0, width - w), (0, 0)))


def normalize(image: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """uint8 [h, w, C] -> float32 (image / 255 - mean) / std per channel (mean, std in [0, 1])."""
    scaled = np.asarray(image, np.float32) / np.float32(255.0)
    return (scaled - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)


def _pad_to(array: np.ndarray, height: int, width: int, value, name: str, key: str):
    h, w = array.shape[:2]
    if h > height or w > width:
        raise ValueError(f"{name} of shape {(h, w)} exceeds {key} ({height}, {width}); raise it")
    if (h, w) == (height, width):
        return array
    pad = [(0, height - h), (0, width - w)] + [(0, 0)] * (array.ndim - 2)
    return np.pad(array, pad, constant_values=value)


def pad_sizes(pad_size: Sequence[int], buckets: int) -> tuple[tuple[int, ...], ...]:
    """Per axis, the sizes training examples are padded to: `pad * k / buckets` for k = 1 ..
    `buckets`, rounded up to a multiple of 32 px (at most `pad`). One bucket: just `pad_size`."""
    if int(buckets) < 1:
        raise ValueError(f"config.data.pad_buckets must be >= 1, got {buckets}")

    def ceil(a: int, b: int) -> int:
        return -(-a // b)

    return tuple(
        tuple(sorted({min(n, ceil(ceil(n * k, buckets), 32) * 32) for k in range(1, buckets + 1)}))
        for n in (int(v) for v in pad_size)
    )


def check_pad_size(sizes: np.ndarray, pad_size: Sequence[int], decoder: "Decoder") -> None:
    """Raises, naming `config.data.eval_pad_size`, the size needed and the largest example, if
    an example of `sizes` (int32 [n, 2], the split's (height, width)s) does not fit: before
    the first step, not when a batch first holds it."""
    height, width = (int(v) for v in pad_size)
    over = np.flatnonzero((sizes[:, 0] > height) | (sizes[:, 1] > width))
    if over.size:
        largest = over[np.argmax(sizes[over].prod(axis=1))]
        needed = tuple(int(v) for v in np.maximum(sizes.max(axis=0), (height, width)))
        raise ValueError(
            f"config.data.eval_pad_size = {(height, width)} is smaller than {over.size} "
            f"example(s) of {decoder.spec.name}/{decoder.split}, e.g. {decoder.name(int(largest))} "
            f"of {tuple(int(v) for v in sizes[largest])} px: set it to at least {needed}"
        )


class _StreamOrder:
    """Global stream position -> example index, and global batch -> the shape it is padded to.

    Without buckets, position s holds `permutation(seed, epoch)[s mod n]` (module docstring)
    and every batch has the shape `config.data.eval_pad_size`. With `config.data.pad_buckets`
    > 1, the examples of each window of `_BUCKET_WINDOW` consecutive global batches are those
    same positions' examples, sorted by their bucket shape (stably) and cut into batches, whose
    order is then shuffled (seeded by the window); a batch is padded to its largest member's
    bucket. So a batch still is a pure function of (seed, step), every example still appears
    once per epoch (up to the window that straddles two epochs), and the padding shrinks to
    about each example's own bucket. Picklable (loader workers).
    """

    def __init__(self, seed, num_examples, global_batch, pad_size, shapes=None):
        self.seed, self.num_examples, self.global_batch = seed, num_examples, global_batch
        self.pad_size = tuple(int(v) for v in pad_size)
        self.shapes = shapes  # int32 [n, 2] bucket shape per example, or None: no buckets
        self._perms = ()  # ((epoch, permutation), ...): the last two drawn, replaced as one
        self._window = (None, None, None)  # (window, examples, batch shapes), replaced as one

    def _permutation(self, epoch: int) -> np.ndarray:
        for drawn, order in self._perms:
            if drawn == epoch:
                return order
        order = np.random.default_rng([self.seed, _SHUFFLE_SALT, epoch]).permutation(
            self.num_examples
        )
        self._perms = (*self._perms[-1:], (epoch, order))
        return order

    def _shuffled(self, position: int) -> int:
        epoch, slot = divmod(position, self.num_examples)
        return int(self._permutation(epoch)[slot])

    def _bucketed(self, window: int) -> tuple[np.ndarray, np.ndarray]:
        drawn, examples, shapes = self._window
        if drawn == window:
            return examples, shapes
        span = _BUCKET_WINDOW * self.global_batch
        examples = np.asarray([self._shuffled(window * span + i) for i in range(span)])
        own = self.shapes[examples]
        examples = examples[np.lexsort((own[:, 1], own[:, 0]))]  # lexsort is stable
        batches = examples.reshape(_BUCKET_WINDOW, self.global_batch)
        rng = np.random.default_rng([self.seed, _BUCKET_SALT, window])
        batches = batches[rng.permutation(_BUCKET_WINDOW)]
        shapes = self.shapes[batches].max(axis=1)  # [window batches, 2]
        self._window = (window, batches.reshape(-1), shapes)
        return batches.reshape(-1), shapes

    def example_of(self, position: int) -> int:
        if self.shapes is None:
            return self._shuffled(position)
        window, offset = divmod(position, _BUCKET_WINDOW * self.global_batch)
        return int(self._bucketed(window)[0][offset])

    def batch_shape(self, step: int) -> tuple[int, int]:
        if self.shapes is None:
            return self.pad_size
        window, batch = divmod(step, _BUCKET_WINDOW)
        height, width = self._bucketed(window)[1][batch]
        return int(height), int(width)


def bucket_shapes(sizes: np.ndarray, pad_size: Sequence[int], buckets: int) -> np.ndarray:
    """int32 [n, 2]: each example's (height, width) rounded up to its axis's smallest pad size
    (`pad_sizes`); a side beyond `pad_size` keeps `pad_size` (padding then names the example)."""
    out = np.empty_like(np.asarray(sizes, np.int32))
    for axis, options in enumerate(pad_sizes(pad_size, buckets)):
        options = np.asarray(options)
        index = np.searchsorted(options, sizes[:, axis], side="left")
        out[:, axis] = options[np.minimum(index, len(options) - 1)]
    return out


class _TrainExample:
    """Host-local counter -> one loaded training example (see the module docstring)."""

    def __init__(self, decoder, weights, order, local, index, key):
        self.decoder, self.weights, self.order = decoder, weights, order
        self.local, self.index, self.key = local, index, key

    def __call__(self, counter: int) -> Batch:
        step, slot = divmod(int(counter), self.local)
        position = step * self.order.global_batch + self.index * self.local + slot
        example = self.order.example_of(position)
        decoded = self.decoder(example)
        name = self.decoder.name(example)
        height, width = self.order.batch_shape(step)
        out = {
            "image": _pad_to(decoded["image"], height, width, 0, name, self.key),
            "label": _pad_to(decoded["label"], height, width, IGNORE_ID, name, self.key),
            "size": np.asarray(decoded["label"].shape, np.int32),
            "position": augment.position_words(np.asarray([position]))[0],
        }
        if self.weights is not None:
            out["weight"] = _pad_to(self.weights[example], height, width, 0.0, name, self.key)
        return out


def _read_options(data_cfg: ml_collections.ConfigDict) -> grain.ReadOptions:
    return grain.ReadOptions(num_threads=2, prefetch_buffer_size=max(2, data_cfg.prefetch_batches))


def host_batches(
    data_cfg: ml_collections.ConfigDict,
    *,
    global_batch_size: int,
    seed: int,
    start_step: int = 0,
    spec: datasets.DatasetSpec | None = None,
    process_index: int | None = None,
    process_count: int | None = None,
    workers: int | None = None,
) -> Iterator[Batch]:
    """Endless loaded (not yet augmented) training batches of this host, from `start_step`.

    Args:
      data_cfg: `config.data`.
      global_batch_size: examples per step over all hosts; a multiple of process_count.
      seed: data seed (order; the device augmentation uses the same seed).
      start_step: first step to yield (a resumed run passes its restored state's step).
      spec: `datasets.dataset_spec(data_cfg)` if the caller has it.
      process_index, process_count: this host and the host count; default from jax.
      workers: loader worker processes; default `config.data.loader_workers` (0 = threads of
        this process, -1 = automatic: `loader_workers`).

    Returns:
      an iterator of the loaded host batches described in the module docstring.
    """
    index, count = _processes(process_index, process_count)
    local = _local_batch_size(global_batch_size, count)
    split = data_cfg.train_split
    spec, source = open_split(data_cfg, split, key="config.data.train_split", spec=spec)
    decoder, weights = Decoder(spec, source, split), None
    if data_cfg.weight_map:
        if spec.num_classes != 2:
            raise ValueError(
                f"config.data.weight_map needs a binary data set (class 1 = cell); {spec.name} "
                f"has {spec.num_classes} classes"
            )
        weights = weight_maps.open_weight_maps(
            data_cfg,
            spec,
            split,
            lambda index: decoder(index)["label"],
            len(source),
            w0=data_cfg.weight_map_w0,
            sigma=data_cfg.weight_map_sigma,
        )
    pad_size, buckets = tuple(data_cfg.eval_pad_size), data_cfg.pad_buckets
    shapes = None
    if pad_sizes(pad_size, buckets) != tuple((n,) for n in pad_size):
        sizes = precomputed.example_sizes(
            data_cfg, spec, split, lambda index: decoder(index)["label"].shape, len(source)
        )
        check_pad_size(sizes, pad_size, decoder)
        shapes = bucket_shapes(sizes, pad_size, buckets)
    order = _StreamOrder(seed, len(source), global_batch_size, pad_size, shapes)
    example = _TrainExample(decoder, weights, order, local, index, "config.data.eval_pad_size")
    start = start_step * local
    dataset = (
        grain.MapDataset.range(start, start + local * 2**40)
        .map(example)
        .batch(local, drop_remainder=True)
        .to_iter_dataset(_read_options(data_cfg))
    )
    workers = loader_workers(data_cfg.loader_workers if workers is None else workers)
    if workers > 0:
        # Grain's workers read absl flags; outside an absl app (a notebook, pytest) they were
        # never parsed, and the defaults are what we want.
        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()
        dataset = dataset.mp_prefetch(
            grain.MultiprocessingOptions(num_workers=workers),
            worker_init_fn=logs.route_worker_logs,
        )
    return iter(dataset)


WORKERS_PER_ACCELERATOR = 8  # each H200 fed 2-3x its paper-model step rate (BENCHMARKS.md)


def loader_workers(configured: int) -> int:
    """The loader worker processes of `config.data.loader_workers` = `configured`: itself, or
    for -1 (automatic) none where the model runs on the CPU, else WORKERS_PER_ACCELERATOR per
    local device, at most this process's usable cores minus one (the training loop's own)."""
    if configured >= 0:
        return configured
    if jax.default_backend() == "cpu":
        return 0
    devices = jax.local_device_count()
    workers = max(0, min(WORKERS_PER_ACCELERATOR * devices, backend.usable_cores() - 1))
    logging.info(
        "Loading with %d worker processes (config.data.loader_workers = -1: automatic, for %d "
        "local %s device(s))",
        workers,
        devices,
        jax.default_backend(),
    )
    return workers


def make_train_iterator(
    data_cfg: ml_collections.ConfigDict,
    *,
    global_batch_size: int,
    seed: int,
    start_step: int = 0,
    context: tuple[int, int] = (0, 0),
    spec: datasets.DatasetSpec | None = None,
    sharding: jax.sharding.NamedSharding | None = None,
) -> Iterator[dict[str, jax.Array]]:
    """Endless, deterministic, resumable training batches, augmented on the devices.

    Args:
      data_cfg: `config.data` (dataset, `train_split`, augmentation, crop size, ...).
      global_batch_size: examples per step over all hosts; a multiple of the process count.
      seed: data seed (order and augmentation).
      start_step: first step to yield: a resumed run passes its restored state's step (the
        batches are a pure function of (seed, step), so nothing else needs saving).
      context: (rows, cols) the model's output lies inside its input
        (`jaxseg.models.input_context`); images are mirror-padded by it.
      spec: `datasets.dataset_spec(data_cfg)` if the caller has it.
      sharding: the batch sharding (NamedSharding, batch axis first); default: every device
        of this process along one "data" axis.

    Returns:
      an iterator of global `{"image": float32 [N, h, w, C] normalised, "label": int32
      [N, h, w]}` (+ "weight" f32 [N, h, w] with `config.data.weight_map`), (h, w) =
      `config.data.crop_size`, sharded along the batch; `config.data.prefetch_batches` of
      them are loaded and augmented ahead.
    """
    if sharding is None:
        mesh = jax.sharding.Mesh(np.asarray(jax.devices()), ("data",))
        sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    leading = jax.sharding.NamedSharding(
        sharding.mesh, jax.sharding.PartitionSpec(*sharding.spec[:1])
    )
    batches = host_batches(
        data_cfg, global_batch_size=global_batch_size, seed=seed, start_step=start_step, spec=spec
    )
    fn = augment.make_augment(data_cfg, seed=seed, sharding=leading, context=context)
    return _prefetched((fn(to_global(b, sharding)) for b in batches), data_cfg.prefetch_batches)


def _prefetched(iterator: Iterator, depth: int) -> Iterator:
    """Keeps `depth` items in flight (device transfers and augmentation dispatch ahead)."""
    queue = []
    for item in iterator:
        queue.append(item)
        if len(queue) > max(depth, 0):
            yield queue.pop(0)


class EvalBatches:
    """Re-iterable padded evaluation batches of one host.

    Each pass yields `num_batches` batches `{"image": float32 [L, H, W, C], "label": int32
    [L, H, W], "valid": bool [L]}` with (H, W) = `config.data.eval_pad_size`; the count is the
    same on every host. Padding pixels have label 255; padding examples have valid=False.
    """

    def __init__(self, dataset, num_batches: int, num_examples: int):
        self._dataset = dataset
        self.num_batches = num_batches
        self.num_examples = num_examples  # in the whole split, over all hosts

    def __iter__(self) -> Iterator[Batch]:
        return iter(self._dataset)


class _EvalExample:
    def __init__(self, decoder, stop, pad_size, mean, std):
        self.decoder, self.stop, self.pad_size = decoder, stop, pad_size
        self.mean, self.std = mean, std

    def __call__(self, index: int) -> Batch:
        height, width = self.pad_size
        if index >= self.stop:
            channels = self.decoder.spec.image_channels
            return {
                "image": np.zeros([height, width, channels], np.float32),
                "label": np.full([height, width], IGNORE_ID, np.int32),
                "valid": np.bool_(False),
            }
        decoded = self.decoder(index)
        name = self.decoder.name(index)
        key = "config.data.eval_pad_size"
        image = normalize(decoded["image"], self.mean, self.std)
        return {
            "image": _pad_to(image, height, width, 0.0, name, key),
            "label": _pad_to(
                decoded["label"].astype(np.int32), height, width, IGNORE_ID, name, key
            ),
            "valid": np.bool_(True),
        }


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
    decoder = Decoder(spec, source, split)
    # Every evaluation example must fit the pad size: checked once (the sizes are stored beside
    # the data set), before training, not at the first evaluation hundreds of steps later.
    sizes = precomputed.example_sizes(
        data_cfg, spec, split, lambda i: decoder(i)["label"].shape, num_examples
    )
    check_pad_size(sizes, data_cfg.eval_pad_size, decoder)
    example = _EvalExample(
        decoder, stop, tuple(data_cfg.eval_pad_size),
        tuple(data_cfg.mean), tuple(data_cfg.std),
    )  # fmt: skip
    dataset = (
        grain.MapDataset.range(start, start + num_batches * local)
        .map(example)
        .batch(local, drop_remainder=True)
        .to_iter_dataset(_read_options(data_cfg))
    )
    return EvalBatches(dataset, num_batches, num_examples)


def read_in_order(items: Sequence, read: Callable, *, threads: int = 2, ahead: int = 4) -> Iterator:
    """`read(item)` for each of `items`, in order, computed by `threads` loader threads up to
    `ahead` items in advance: how predict.py reads the user's files (not a data set) with the
    loader that reads training and evaluation examples."""
    options = grain.ReadOptions(num_threads=threads, prefetch_buffer_size=ahead)
    return iter(grain.MapDataset.source(list(items)).map(read).to_iter_dataset(options))


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
