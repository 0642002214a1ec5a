"""Start-up checks of the config (jaxseg.config_checks): each error names the key and the fix."""

import re

import pytest

from configs import base, smoke
from jaxseg import config_checks, sharding
from jaxseg.data import datasets


def test_every_per_class_setting_is_checked_against_the_class_count():
    mesh = sharding.make_mesh()
    config = base.get_config()
    config.data.name = "image_folder"
    config.data.folder.class_names = tuple(f"c{i}" for i in range(3))
    config.model.num_classes = 3
    config_checks.validate_config(config, mesh, datasets.dataset_spec(config.data))
    cases = {
        "loss.class_weights": ((1.0, 2.0), r"config\.loss\.class_weights has 2 values"),
        "data.folder.palette": (((0, 0, 0),), r"config\.data\.folder\.palette has 1 colours"),
        "data.folder.class_names": (("a", "b"), r"config\.data\.folder\.class_names has 2 names"),
    }
    for key, (value, message) in cases.items():
        bad = config.copy_and_resolve_references()
        *parents, leaf = key.split(".")
        node = bad
        for p in parents:
            node = node[p]
        node[leaf] = value
        with pytest.raises(ValueError, match=message):
            config_checks.validate_config(bad, mesh, datasets.dataset_spec(bad.data))
    # A built-in data set's class count is fixed: the error names model.num_classes.
    synthetic = base.get_config()
    synthetic.model.num_classes = 5
    with pytest.raises(ValueError, match=r"config\.model\.num_classes = 5 but .* has 6"):
        config_checks.validate_config(synthetic, mesh, datasets.dataset_spec(synthetic.data))


def test_start_up_validation_names_the_key_and_the_device_count():
    mesh = sharding.make_mesh()
    assert mesh.size == 8  # conftest's fake devices
    cases = {
        "batch_size": (12, r"config\.batch_size = 12 is not a positive multiple of the 8 devices"),
        "eval_batch_size": (4, r"config\.eval_batch_size = 4 .* 8 devices"),
        "log_every_steps": (0, r"config\.log_every_steps = 0: must be >= 1"),
        "eval_every_steps": (-1, r"config\.eval_every_steps = -1: must be >= 1"),
        "checkpoint_every_steps": (0, r"config\.checkpoint_every_steps = 0"),
        "max_steps_per_run": (-2, r"config\.max_steps_per_run = -2"),
    }
    spec = datasets.dataset_spec(smoke.get_config().data)
    config_checks.validate_config(smoke.get_config(), mesh, spec)
    for key, (value, message) in cases.items():
        config = smoke.get_config()
        config[key] = value
        with pytest.raises(ValueError, match=message):
            config_checks.validate_config(config, mesh, spec)
    config = smoke.get_config()
    config.data.loader_workers = -2  # -1 is automatic, 0 threads; nothing else below 0
    with pytest.raises(ValueError, match=r"config\.data\.loader_workers = -2: must be >= 0"):
        config_checks.validate_config(config, mesh, spec)


def _set(config, key, value):
    *parents, leaf = key.split(".")
    node = config
    for p in parents:
        node = node[p]
    node[leaf] = value


def test_one_class_stops_at_start_up_naming_the_keys():
    # One class: loss and gradients are exactly 0 and the mIoU a perfect 1.0 (issue 23, item 4).
    mesh = sharding.make_mesh()
    config = base.get_config()
    config.data.name = "image_folder"
    config.data.folder.class_names = ("background",)
    config.model.num_classes = 1
    with pytest.raises(
        ValueError,
        match=r"config\.model\.num_classes = 1: segmentation needs at least 2 classes .*"
        r"config\.data\.folder\.class_names and config\.model\.num_classes",
    ):
        config_checks.validate_config(config, mesh, datasets.dataset_spec(config.data))


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("data.crop_size", (96,), r"config\.data\.crop_size = \(96,\): must be \(height, width\)"),
        ("data.crop_size", (96, 0), r"config\.data\.crop_size = \(96, 0\)"),
        ("data.eval_pad_size", (128, 128, 1), r"config\.data\.eval_pad_size = \(128, 128, 1\)"),
        ("data.mean", (0.5, 0.5), r"config\.data\.mean = \(0\.5, 0\.5\): must be 3 finite"),
        ("data.std", (0.2, 0.2, 0.0), r"config\.data\.std = \(0\.2, 0\.2, 0\.0\): every value"),
        ("data.std", (0.2, 0.2, float("nan")), r"config\.data\.std = .*must be 3 finite"),
        ("eval.crop", (96,), r"config\.eval\.crop: crop must be 2 positive sides"),
        ("eval.stride", (8, 8, 8), r"config\.eval\.stride: stride must be 2 positive sides"),
        ("eval.tile_in", (572,), r"config\.eval\.tile_in: tile_in must be 2 positive sides"),
        ("eval.scales", (), r"config\.eval\.scales: scales must be a non-empty list"),
        ("eval.scales", (1.0, float("inf")), r"config\.eval\.scales"),
    ],
)
def test_every_tuple_valued_field_has_its_length_checked_at_start_up(key, value, message):
    # --config.data.crop_size="(96,)" used to end in "not enough values to unpack" (item 10).
    mesh = sharding.make_mesh()
    config = smoke.get_config()
    spec = datasets.dataset_spec(config.data)
    _set(config, key, value)
    with pytest.raises(ValueError, match=message):
        config_checks.validate_config(config, mesh, spec)


@pytest.mark.parametrize(
    "key, value",
    [
        ("data.folder.palette", ((0, 0, 0), (255, 255))),
        ("data.folder.ignore_colors", ((0, 0, 256),)),
        ("data.folder.class_names", ("background", "")),
    ],
)
def test_image_folder_tuples_are_checked_element_by_element(key, value):
    mesh = sharding.make_mesh()
    config = base.get_config()
    config.data.name = "image_folder"
    config.model.num_classes = 2
    config.data.folder.mask_format = "palette"
    _set(config, key, value)
    with pytest.raises(ValueError, match=re.escape(f"config.{key} = ")):
        config_checks.validate_config(config, mesh, datasets.dataset_spec(config.data))
