"""Every config in configs/ loads, matches its data set, and builds its full train state."""

import importlib
import pathlib

import jax
import numpy as np
import pytest

from jaxseg import optim, sharding, train_state
from jaxseg.data import datasets
from jaxseg.models import build_model

CONFIG_DIR = pathlib.Path(__file__).parent.parent / "configs"
CONFIGS = sorted(p.stem for p in CONFIG_DIR.glob("*.py") if "def get_config" in p.read_text())


def test_expected_configs_exist():
    expected = {"default", "smoke", "fcn32s_voc", "fcn16s_voc", "fcn8s_voc", "fcn8s_atonce_voc"}
    expected |= {"unet_isbi"}
    assert expected <= set(CONFIGS)


@pytest.mark.parametrize("name", CONFIGS)
def test_config_builds_train_state(name):
    config = importlib.import_module(f"configs.{name}").get_config()
    spec = datasets.dataset_spec(config.data)
    assert config.model.num_classes == spec.num_classes, name
    assert config.batch_size % config.grad_accum_steps == 0
    model = build_model(config.model)
    tx, schedule = optim.make_optimizer(config.optim, config.total_steps)
    mesh = sharding.make_mesh(num_fsdp=config.mesh.fsdp)
    abstract, _, _ = train_state.create_state(config, model, tx, mesh, spec)
    assert int(np.prod(abstract.step.shape)) == 1
    assert jax.tree.leaves(abstract.params)
    # The learning rate is defined over the whole run and finite at both ends.
    for step in (0, config.total_steps - 1):
        assert np.isfinite(float(schedule(step)))


def test_fcn_recipes_follow_reference_release():
    lrs = {}
    for variant in ("fcn32s", "fcn16s", "fcn8s"):
        c = importlib.import_module(f"configs.{variant}_voc").get_config()
        assert c.model.alignment == "reference" and c.batch_size == 1
        assert c.optim.momentum == 0.99 and not c.loss.normalize
        lrs[variant] = c.optim.learning_rate
    assert lrs == {"fcn32s": 1e-10, "fcn16s": 1e-12, "fcn8s": 1e-14}


def test_locked_config_rejects_unknown_keys():
    config = importlib.import_module("configs.default").get_config()
    config.lock()
    with pytest.raises(AttributeError, match="learning_rate"):
        config.optim.learnig_rate = 1.0


def test_fcn8s_at_once_recipe_is_the_release_solver():
    """voc-fcn8s-atonce: from VGG16 in one stage, lr 1e-10 (not the staged 8s's 1e-14), 300k."""
    c = importlib.import_module("configs.fcn8s_atonce_voc").get_config()
    assert c.model.name == "fcn8s" and c.model.at_once and c.model.alignment == "reference"
    assert c.optim.learning_rate == 1e-10 and c.total_steps == 300_000
    assert c.optim.momentum == 0.99 and c.optim.weight_decay == 5e-4 and not c.loss.normalize
    assert c.batch_size == 1 and c.optim.schedule == "constant"
    assert c.init_from.startswith("vgg16:") and c.init_from.endswith(".h5")


def test_unet_isbi_recipe_uses_the_paper_pieces():
    c = importlib.import_module("configs.unet_isbi").get_config()
    d = c.data
    assert d.weight_map and (d.weight_map_w0, d.weight_map_sigma) == (10.0, 5.0)
    assert c.loss.class_weights == ()  # w_c lives in the weight map, not applied twice
    assert d.elastic and d.rotation_degrees > 0 and d.shift_px > 0
    assert c.eval.isbi_metrics and c.eval.mode == "overlap_tile"
    assert "warping error is not computed" in importlib.import_module("configs.unet_isbi").__doc__
    # The defaults leave every other recipe as it was.
    default = importlib.import_module("configs.default").get_config()
    assert not default.data.weight_map and not default.eval.isbi_metrics
    assert default.data.rotation_degrees == default.data.shift_px == 0.0
