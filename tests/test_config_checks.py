"""Start-up checks of the config (jaxseg.config_checks): each error names the key and the fix."""

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
