"""Train/eval pipelines: batch contract, exact resume, host sharding, exactly-once evaluation."""

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from configs.default import data_config
from jaxseg.data import datasets, pipeline

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
    pipeline.open_split(cfg, "train", key="test")  # builds it
    return cfg


def _plain(cfg):
    """No augmentation and full-size crops: training examples equal the stored examples."""
    cfg = cfg.copy_and_resolve_references()
    cfg.min_scale = cfg.max_scale = 1.0
    cfg.hflip = False
    cfg.brightness = cfg.contrast = cfg.saturation = cfg.hue = 0.0
    cfg.crop_size = (32, 32)
    return cfg


def _take(iterator, count):
    return [next(iterator) for _ in range(count)]


def _stored_labels(cfg, split):
    """Oracle: the labels as tfds decodes them (PIL), keyed by their bytes."""
    _, source = pipeline.open_split(cfg, split, key="test")
    builder = datasets.dataset_spec(cfg).make_builder(cfg)
    decoded = builder.as_data_source(split)
    return [decoded[i]["label"][..., 0].astype(np.int32) for i in range(len(source))]


def test_train_batches_follow_the_contract(cfg):
    iterator = pipeline.make_train_iterator(cfg, global_batch_size=4, seed=0)
    for batch in _take(iterator, 3):
        assert set(batch) == {"image", "label"}
        assert batch["image"].shape == (4, 24, 24, 3) and batch["image"].dtype == np.float32
        assert batch["label"].shape == (4, 24, 24) and batch["label"].dtype == np.int32
        assert np.isfinite(batch["image"]).all()
        assert set(np.unique(batch["label"])) <= set(range(6)) | {255}
        # Normalised: roughly zero-centred, not raw [0, 255] or [0, 1] pixels.
        assert -2.5 < batch["image"].mean() < 2.5 and batch["image"].min() < 0


def test_restore_from_step_gives_the_same_next_batches(cfg):
    first = _take(pipeline.make_train_iterator(cfg, global_batch_size=4, seed=3), 6)
    resumed = pipeline.make_train_iterator(cfg, global_batch_size=4, seed=3, start_step=4)
    for expected, got in zip(first[4:], _take(resumed, 2)):
        np.testing.assert_array_equal(expected["image"], got["image"])
        np.testing.assert_array_equal(expected["label"], got["label"])
    other_seed = next(pipeline.make_train_iterator(cfg, global_batch_size=4, seed=4))
    assert not np.array_equal(other_seed["image"], first[0]["image"])


def test_two_hosts_read_disjoint_halves_of_the_global_batch(cfg):
    single = _take(pipeline.make_train_iterator(cfg, global_batch_size=4, seed=1), 2)
    hosts = [
        _take(
            pipeline.make_train_iterator(
                cfg, global_batch_size=4, seed=1, process_index=p, process_count=2
            ),
            2,
        )
        for p in range(2)
    ]
    for step in range(2):
        assert hosts[0][step]["image"].shape[0] == 2
        for key in ("image", "label"):
            joined = np.concatenate([hosts[0][step][key], hosts[1][step][key]])
            np.testing.assert_array_equal(joined, single[step][key])


def test_each_epoch_is_a_fresh_permutation_of_the_split(cfg):
    plain = _plain(cfg)
    stored = {lab.tobytes() for lab in _stored_labels(plain, "train")}
    assert len(stored) == NUM_TRAIN
    iterator = pipeline.make_train_iterator(plain, global_batch_size=4, seed=0)
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
    batches = pipeline.make_eval_iterator(cfg, global_batch_size=16)
    assert batches.num_batches == 1 and batches.num_examples == NUM_VAL
    seen = []
    for batch in batches:
        assert batch["image"].shape == (16, 32, 32, 3) and batch["valid"].dtype == np.bool_
        arrays = pipeline.to_global(batch, sharding)
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
        batches = pipeline.make_eval_iterator(
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
    batch = next(iter(pipeline.make_eval_iterator(padded, global_batch_size=8)))
    assert batch["label"].shape == (8, 40, 36)
    assert (batch["label"][:, 32:] == 255).all() and (batch["label"][:, :, 32:] == 255).all()
    assert (batch["label"][:, :32, :32] != 255).all()
    small = cfg.copy_and_resolve_references()
    small.eval_pad_size = (16, 16)
    with pytest.raises(Exception, match="eval_pad_size"):
        next(iter(pipeline.make_eval_iterator(small, global_batch_size=8)))


def test_configuration_errors_name_the_key(cfg):
    bad = cfg.copy_and_resolve_references()
    bad.train_split = "training"
    with pytest.raises(ValueError, match="config.data.train_split.*'training'"):
        pipeline.make_train_iterator(bad, global_batch_size=4, seed=0)
    empty = cfg.copy_and_resolve_references()
    empty.train_split = "train[:0]"
    with pytest.raises(ValueError, match="empty"):
        pipeline.make_train_iterator(empty, global_batch_size=4, seed=0)
    with pytest.raises(ValueError, match="multiple of the process count"):
        pipeline.make_train_iterator(
            cfg, global_batch_size=3, seed=0, process_count=2, process_index=0
        )
    grey = cfg.copy_and_resolve_references()
    grey.mean, grey.std = (0.5,), (0.25,)
    with pytest.raises(ValueError, match="config.data.mean"):
        pipeline.make_train_iterator(grey, global_batch_size=4, seed=0)
    unknown = cfg.copy_and_resolve_references()
    unknown.name = "voc2012"
    with pytest.raises(ValueError, match="valid names.*synthetic_scenes"):
        pipeline.make_train_iterator(unknown, global_batch_size=4, seed=0)


def test_stored_data_is_array_record(cfg):
    builder = datasets.dataset_spec(cfg).make_builder(cfg)
    assert builder.info.file_format == tfds.core.file_adapters.FileFormat.ARRAY_RECORD
