"""Host loading (Grain) and the device-augmented training stream: batch contract, exact resume,
host, device and worker independence, exactly-once evaluation, no TensorFlow."""

import dataclasses
from pathlib import Path

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from configs.base import data_config
from jaxseg.data import datasets, loading

NUM_TRAIN, NUM_VAL = 16, 8


@pytest.fixture(scope="module")
def cfg(tmp_path_factory):
    """16 train / 8 validation scenes at 32 px with 24 px crops, built once (about a second)."""
    cfg = data_config()
    cfg.data_dir = str(tmp_path_factory.mktemp("tfds"))
    cfg.synthetic.image_size = 32
    cfg.synthetic.num_train = NUM_TRAIN
    cfg.synthetic.num_validation = NUM_VAL
    cfg.crop_size = (24, 24)
    cfg.eval_pad_size = (32, 32)
    loading.open_split(cfg, "train", key="test")  # builds it
    return cfg


def _take(iterator, count):
    return [next(iterator) for _ in range(count)]


def _stored_labels(cfg, split):
    """Oracle: the labels as tfds decodes them (PIL), keyed by their bytes."""
    _, source = loading.open_split(cfg, split, key="test")
    builder = datasets.dataset_spec(cfg).make_builder(cfg)
    decoded = builder.as_data_source(split)
    return [decoded[i]["label"][..., 0].astype(np.int32) for i in range(len(source))]


def _mesh_sharding(num_devices):
    mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:num_devices]), ("data",))
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))


def _host(cfg, **kwargs):
    kwargs.setdefault("global_batch_size", 4)
    kwargs.setdefault("seed", 0)
    return loading.host_batches(cfg, **kwargs)


def test_loaded_host_batches_follow_the_contract(cfg):
    for batch in _take(_host(cfg), 2):
        assert set(batch) == {"image", "label", "size", "position"}
        assert batch["image"].shape == (4, 32, 32, 3) and batch["image"].dtype == np.uint8
        assert batch["label"].shape == (4, 32, 32) and batch["label"].dtype == np.int32
        assert batch["size"].tolist() == [[32, 32]] * 4
        assert batch["position"].dtype == np.uint32 and batch["position"].shape == (4, 2)
    first, second = _take(_host(cfg), 2)
    positions = np.concatenate([first["position"], second["position"]])
    assert positions[:, 0].tolist() == [0] * 8 and positions[:, 1].tolist() == list(range(8))


def test_train_batches_follow_the_contract(cfg):
    iterator = loading.make_train_iterator(cfg, global_batch_size=8, seed=0)
    for batch in _take(iterator, 3):
        assert set(batch) == {"image", "label"}
        assert batch["image"].shape == (8, 24, 24, 3) and batch["image"].dtype == np.float32
        assert batch["label"].shape == (8, 24, 24) and batch["label"].dtype == np.int32
        assert len(batch["image"].addressable_shards) == 8  # every device, along the batch
        image, label = np.asarray(batch["image"]), np.asarray(batch["label"])
        assert np.isfinite(image).all()
        assert set(np.unique(label)) <= set(range(6)) | {255}
        # Normalised: roughly zero-centred, not raw [0, 255] or [0, 1] pixels.
        assert -2.5 < image.mean() < 2.5 and image.min() < 0


def test_restore_from_step_gives_the_same_next_batches(cfg):
    first = _take(loading.make_train_iterator(cfg, global_batch_size=8, seed=3), 6)
    resumed = loading.make_train_iterator(cfg, global_batch_size=8, seed=3, start_step=4)
    for expected, got in zip(first[4:], _take(resumed, 2)):
        np.testing.assert_array_equal(expected["image"], got["image"])
        np.testing.assert_array_equal(expected["label"], got["label"])
    other_seed = next(loading.make_train_iterator(cfg, global_batch_size=8, seed=4))
    assert not np.array_equal(other_seed["image"], first[0]["image"])


def test_batches_do_not_depend_on_the_device_count(cfg):
    """The same global batch, augmented on 8 devices and on 1: the same sampling grids (labels
    exactly), the same pixels up to float32 round-off (XLA fuses the two programs differently)."""
    eight = next(loading.make_train_iterator(cfg, global_batch_size=8, seed=2))
    one = next(
        loading.make_train_iterator(cfg, global_batch_size=8, seed=2, sharding=_mesh_sharding(1))
    )
    np.testing.assert_array_equal(np.asarray(eight["label"]), np.asarray(one["label"]))
    np.testing.assert_allclose(np.asarray(eight["image"]), np.asarray(one["image"]), atol=1e-5)


def test_two_hosts_read_disjoint_halves_of_the_global_batch(cfg):
    single = _take(_host(cfg, seed=1), 2)
    hosts = [_take(_host(cfg, seed=1, process_index=p, process_count=2), 2) for p in range(2)]
    for step in range(2):
        assert hosts[0][step]["image"].shape[0] == 2
        for key in single[step]:
            joined = np.concatenate([hosts[0][step][key], hosts[1][step][key]])
            np.testing.assert_array_equal(joined, single[step][key])


def test_one_and_two_loader_workers_give_identical_batches(cfg, capfd):
    threads = _take(_host(cfg, seed=5, start_step=3, workers=0), 3)
    processes = _take(_host(cfg, seed=5, start_step=3, workers=2), 3)
    one = _take(_host(cfg, seed=5, start_step=3, workers=1), 3)
    for a, b, c in zip(threads, processes, one):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
            np.testing.assert_array_equal(a[key], c[key])
    # The workers' consoles are filtered like the main process's (jaxseg.logs.route_worker_logs):
    # tfds's words for the custom data set size were printed again by each worker.
    console = capfd.readouterr().err
    assert "custom data configuration" not in console and "WARNING:absl" not in console, console


@pytest.mark.parametrize(
    "platform, devices, cores, expected",
    [
        ("cpu", 8, 2, 0),  # XLA:CPU: workers would take the step's own cores
        ("cpu", 1, 64, 0),
        ("gpu", 1, 16, 8),  # one H200 and its 16 host cores: 8 workers
        ("gpu", 8, 96, 64),  # 8 per local device
        ("gpu", 8, 32, 31),  # at most the usable cores minus the training process's
        ("tpu", 4, 1, 0),
    ],
)
def test_automatic_loader_workers_follow_devices_and_cores(
    monkeypatch, platform, devices, cores, expected
):
    monkeypatch.setattr(jax, "default_backend", lambda: platform)
    monkeypatch.setattr(jax, "local_device_count", lambda: devices)
    monkeypatch.setattr(loading.backend, "usable_cores", lambda: cores)
    assert loading.loader_workers(-1) == expected
    assert [loading.loader_workers(n) for n in (0, 3)] == [0, 3]  # a given count is kept
    assert data_config().loader_workers == -1  # the base config's default is automatic


def test_each_epoch_is_a_fresh_permutation_of_the_split(cfg):
    stored = {lab.tobytes() for lab in _stored_labels(cfg, "train")}
    assert len(stored) == NUM_TRAIN
    iterator = _host(cfg)
    epochs = []
    for _ in range(2):
        batches = _take(iterator, NUM_TRAIN // 4)
        epochs.append([lab.tobytes() for b in batches for lab in b["label"]])
    for epoch in epochs:
        assert sorted(epoch) == sorted(stored)  # every example exactly once per epoch
    assert epochs[0] != epochs[1]  # reshuffled


def test_eval_on_8_devices_sees_every_example_once(cfg):
    assert jax.device_count() == 8
    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    batches = loading.make_eval_iterator(cfg, global_batch_size=16)
    assert batches.num_batches == 1 and batches.num_examples == NUM_VAL
    seen = []
    for batch in batches:
        assert batch["image"].shape == (16, 32, 32, 3) and batch["valid"].dtype == np.bool_
        arrays = loading.to_global(batch, sharding)
        assert arrays["label"].shape == (16, 32, 32)
        assert len(arrays["image"].addressable_shards) == 8
        assert arrays["valid"].sharding.spec == jax.sharding.PartitionSpec("data")
        valid = np.asarray(arrays["valid"])
        labels = np.asarray(arrays["label"])
        assert (labels[~valid] == 255).all()
        seen += [lab.tobytes() for lab in labels[valid]]
    stored = [lab.tobytes() for lab in _stored_labels(cfg, "validation")]
    assert sorted(seen) == sorted(stored)


def test_eval_on_two_hosts_sees_every_example_once(cfg):
    stored = sorted(lab.tobytes() for lab in _stored_labels(cfg, "validation"))
    seen, lengths = [], []
    for host in range(2):
        batches = loading.make_eval_iterator(
            cfg, global_batch_size=6, process_index=host, process_count=2
        )
        lengths.append(batches.num_batches)
        host_batches = list(batches)
        assert len(host_batches) == batches.num_batches
        for batch in host_batches:
            assert batch["label"].shape == (3, 32, 32)
            seen += [lab.tobytes() for lab in batch["label"][batch["valid"]]]
    assert lengths == [2, 2]  # 4 examples per host in batches of 3: same count everywhere
    assert sorted(seen) == stored


def test_eval_keeps_native_resolution_and_pads_with_255(cfg):
    padded = cfg.copy_and_resolve_references()
    padded.eval_pad_size = (40, 36)
    batch = next(iter(loading.make_eval_iterator(padded, global_batch_size=8)))
    assert batch["label"].shape == (8, 40, 36)
    assert (batch["label"][:, 32:] == 255).all() and (batch["label"][:, :, 32:] == 255).all()
    assert (batch["label"][:, :32, :32] != 255).all()
    small = cfg.copy_and_resolve_references()
    small.eval_pad_size = (16, 16)
    with pytest.raises(Exception, match="eval_pad_size"):
        next(iter(loading.make_eval_iterator(small, global_batch_size=8)))


def test_configuration_errors_name_the_key(cfg):
    bad = cfg.copy_and_resolve_references()
    bad.train_split = "training"
    with pytest.raises(ValueError, match="config.data.train_split.*'training'"):
        loading.make_train_iterator(bad, global_batch_size=8, seed=0)
    empty = cfg.copy_and_resolve_references()
    empty.train_split = "train[:0]"
    with pytest.raises(ValueError, match="empty"):
        loading.make_train_iterator(empty, global_batch_size=8, seed=0)
    with pytest.raises(ValueError, match="multiple of the process count"):
        _host(cfg, global_batch_size=3, process_count=2, process_index=0)
    grey = cfg.copy_and_resolve_references()
    grey.mean, grey.std = (0.5,), (0.25,)
    with pytest.raises(ValueError, match="config.data.mean"):
        loading.make_train_iterator(grey, global_batch_size=8, seed=0)
    unknown = cfg.copy_and_resolve_references()
    unknown.name = "voc2012"
    with pytest.raises(ValueError, match="valid names.*synthetic_scenes"):
        loading.make_train_iterator(unknown, global_batch_size=8, seed=0)


def test_stored_data_is_array_record(cfg):
    builder = datasets.dataset_spec(cfg).make_builder(cfg)
    assert builder.info.file_format == tfds.core.file_adapters.FileFormat.ARRAY_RECORD


def test_examples_larger_than_the_pad_size_are_named(cfg):
    small = cfg.copy_and_resolve_references()
    small.eval_pad_size = (16, 16)
    with pytest.raises(
        ValueError, match=r"synthetic_scenes/train example index \d+.*eval_pad_size"
    ):
        next(_host(small))


def test_loading_and_augmenting_never_import_tensorflow(cfg, no_tensorflow_env):
    """The data path of train/eval runs in a process where TensorFlow is not importable."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(f"""
        import sys
        from configs.base import data_config
        from jaxseg.data import loading
        cfg = data_config()
        cfg.data_dir = {cfg.data_dir!r}
        cfg.synthetic.image_size, cfg.synthetic.num_train = 32, {NUM_TRAIN}
        cfg.synthetic.num_validation = {NUM_VAL}
        cfg.crop_size, cfg.eval_pad_size = (24, 24), (32, 32)
        batch = next(loading.make_train_iterator(cfg, global_batch_size=8, seed=0))
        assert batch["image"].shape == (8, 24, 24, 3)
        assert len(list(loading.make_eval_iterator(cfg, global_batch_size=4))) == 2
        assert "tensorflow" not in sys.modules
    """)
    result = subprocess.run(
        [sys.executable, "-c", script], env=no_tensorflow_env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-3000:]


def test_a_tfds_builder_that_needs_tensorflow_to_prepare_says_so(cfg):
    """tfds's own builders (oxford_iiit_pet, cityscapes, ade20k) import TensorFlow to generate."""

    class NeedsTensorflow:
        def download_and_prepare(self, **kwargs):
            raise ModuleNotFoundError("No module named 'tensorflow'")

    spec = dataclasses.replace(
        datasets.DATASETS["oxford_iiit_pet"], make_builder=lambda data_cfg: NeedsTensorflow()
    )
    with pytest.raises(ImportError, match=r"oxford_iiit_pet: .*TensorFlow to prepare.*tfds build"):
        loading._prepare(spec, cfg)


# Bucketing (config.data.pad_buckets > 1): a folder of images of very different sizes.
SIZES = [(20, 30), (40, 64), (64, 40), (64, 64), (33, 50), (16, 16)]


@pytest.fixture(scope="module")
def varied(tmp_path_factory):
    """An image folder of 24 RGB images in six sizes up to 64 x 64, masks with classes 0-2."""
    from PIL import Image

    root = tmp_path_factory.mktemp("varied")
    (root / "data" / "images").mkdir(parents=True)
    (root / "data" / "masks").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(24):
        h, w = SIZES[i % len(SIZES)]
        pixels = rng.integers(0, 256, (h, w, 3), np.uint8)
        Image.fromarray(pixels).save(root / "data" / "images" / f"img{i:02d}.png")
        Image.fromarray(rng.integers(0, 3, (h, w), np.uint8)).save(
            root / "data" / "masks" / f"img{i:02d}.png"
        )
    cfg = data_config()
    cfg.name = "image_folder"
    cfg.data_dir = str(root / "tfds")
    cfg.folder.root = str(root / "data")
    cfg.folder.name = "varied"
    cfg.folder.class_names = ("a", "b", "c")
    cfg.crop_size = (16, 16)
    cfg.eval_pad_size = (64, 64)
    cfg.pad_buckets = 2  # 32 or 64 px per side
    return cfg


def test_pad_sizes_are_fractions_of_the_pad_size_rounded_up_to_32_px():
    assert loading.pad_sizes((2048, 2048), 4) == ((512, 1024, 1536, 2048),) * 2
    assert loading.pad_sizes((1024, 1000), 4) == ((256, 512, 768, 1024), (256, 512, 768, 1000))
    assert loading.pad_sizes((128, 96), 1) == ((128,), (96,))
    sizes = np.asarray([[20, 30], [33, 64], [64, 1], [65, 70]])
    # The last is too large for the pad size: it keeps the pad size, and padding names it.
    expected = [[32, 32], [64, 64], [64, 32], [64, 64]]
    assert loading.bucket_shapes(sizes, (64, 64), 2).tolist() == expected
    with pytest.raises(ValueError, match="config.data.pad_buckets"):
        loading.pad_sizes((64, 64), 0)


def _cropped(batch):
    """{example bytes: count} of a host batch's examples cut back to their own sizes."""
    out = []
    for image, label, (h, w) in zip(batch["image"], batch["label"], batch["size"]):
        assert (label[h:] == 255).all() and (label[:, w:] == 255).all()
        assert (image[h:] == 0).all() and (image[:, w:] == 0).all()
        out.append(image[:h, :w].tobytes() + label[:h, :w].tobytes())
    return out


def test_bucketed_batches_hold_the_same_examples_with_less_padding(varied):
    """Over one bucketing window (16 batches), the bucketed stream holds exactly the examples of
    the unbucketed one, each batch padded to its largest member's bucket, not to 64 x 64."""
    plain = varied.copy_and_resolve_references()
    plain.pad_buckets = 1
    bucketed = _take(_host(varied, seed=7), 16)
    unbucketed = _take(_host(plain, seed=7), 16)
    examples = lambda batches: sorted(e for b in batches for e in _cropped(b))  # noqa: E731
    assert examples(bucketed) == examples(unbucketed)
    for batch in bucketed:
        own = loading.bucket_shapes(batch["size"], (64, 64), 2)
        assert batch["image"].shape[1:3] == tuple(own.max(axis=0))
    area = lambda batches: sum(np.prod(b["label"].shape) for b in batches)  # noqa: E731
    # A third of the examples fit 32 x 32: about a third of the batches are that small.
    assert sum(b["label"].shape[1:] == (32, 32) for b in bucketed) >= 4
    assert area(bucketed) < 0.8 * area(unbucketed)
    # The sizes were read once and stored beside the data set, one row per example.
    stored = list(Path(varied.data_dir).rglob("example_sizes/train.npy"))
    assert len(stored) == 1 and np.load(stored[0]).shape == (24, 2)


def test_bucketed_batches_resume_and_split_over_hosts_exactly(varied):
    straight = _take(_host(varied, seed=3), 20)
    resumed = _take(_host(varied, seed=3, start_step=17), 3)
    hosts = [_take(_host(varied, seed=3, process_index=p, process_count=2), 20) for p in (0, 1)]
    for step in range(20):
        for key in straight[step]:
            joined = np.concatenate([hosts[0][step][key], hosts[1][step][key]])
            np.testing.assert_array_equal(joined, straight[step][key])
            if step >= 17:
                np.testing.assert_array_equal(resumed[step - 17][key], straight[step][key])


def test_bucketed_batches_are_augmented_to_the_crop_size(varied):
    iterator = loading.make_train_iterator(varied, global_batch_size=8, seed=0)
    for batch in _take(iterator, 4):
        assert batch["image"].shape == (8, 16, 16, 3) and batch["label"].shape == (8, 16, 16)
        assert set(np.unique(np.asarray(batch["label"]))) <= {0, 1, 2, 255}
        assert np.isfinite(np.asarray(batch["image"])).all()


def test_read_in_order_keeps_the_order_when_threads_finish_out_of_it():
    """predict.py's reader: later items finish first here, and still come out in order."""
    import time

    def read(item):
        time.sleep(0.02 * (5 - item))
        return item * item

    assert list(loading.read_in_order(range(6), read, threads=3)) == [0, 1, 4, 9, 16, 25]
