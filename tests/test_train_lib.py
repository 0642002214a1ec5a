"""The train loop in-process: init_from another run, the non-finite stop, bfloat16 compute."""

import math

import jax
import numpy as np
import pytest

from configs import smoke
from jaxseg import checkpointing, optim, sharding, train_lib
from jaxseg.models import build_model


def _smoke(data_dir, **overrides):
    config = smoke.get_config()
    config.data.data_dir = data_dir
    config.total_steps = 3
    config.eval_every_steps = 3
    config.checkpoint_every_steps = 3
    for key, value in overrides.items():
        node = config
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return config


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tfds"))


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, data_dir):
    workdir = str(tmp_path_factory.mktemp("run_a"))
    result = train_lib.train_and_evaluate(_smoke(data_dir), workdir)
    return workdir, result


def _restore(config, workdir, step="latest"):
    return train_lib.restore_checkpoint(config, workdir, step)[1]


def test_run_writes_report_and_checkpoint(trained_run):
    workdir, result = trained_run
    assert 0.0 <= result["mean_iou"] <= 1.0 and result["num_examples"] == 8
    ckpt = checkpointing.Checkpointer(workdir, read_only=True)
    assert ckpt.all_steps() == [3] and ckpt.best_step() == 3
    ckpt.close()


def test_init_from_run_copies_every_shared_parameter(trained_run, data_dir):
    workdir, _ = trained_run
    source = _restore(_smoke(data_dir), workdir)
    # A different decoder: bilinear up-sampling has [1, 1, C, C/2] kernels, not [2, 2, C, C/2].
    config = _smoke(data_dir, **{"model.upsampling": "bilinear", "init_from": workdir})
    model = build_model(config.model)
    tx = optim.make_optimizer(config.optim, config.total_steps)
    abstract, _, init = train_lib.create_state(config, model, tx, sharding.make_mesh())
    fresh = init(jax.random.key(0))
    state = train_lib._initial_weights(config, fresh, abstract)
    np.testing.assert_array_equal(
        state.params["down1"]["conv1"]["kernel"], source.params["down1"]["conv1"]["kernel"]
    )
    np.testing.assert_array_equal(
        state.batch_stats["bottom"]["bn2"]["mean"], source.batch_stats["bottom"]["bn2"]["mean"]
    )
    np.testing.assert_array_equal(
        state.params["upconv1"]["kernel"], fresh.params["upconv1"]["kernel"]
    )
    assert int(state.step) == 0  # weights only: a new run with its own schedule


def test_non_finite_loss_stops_and_keeps_last_checkpoint(trained_run, data_dir, tmp_path):
    workdir, _ = trained_run
    import shutil

    copy = str(tmp_path / "run")
    shutil.copytree(workdir, copy)
    nan = float("nan")
    config = _smoke(data_dir, **{"total_steps": 6, "loss.class_weights": (nan,) * 6})
    with pytest.raises(train_lib.NonFiniteLossError, match="step 4"):
        train_lib.train_and_evaluate(config, copy)
    ckpt = checkpointing.Checkpointer(copy, read_only=True)
    assert ckpt.all_steps() == [3]
    ckpt.close()
    state = _restore(_smoke(data_dir), copy, 3)
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(jax.device_get(state.params)))


def test_bfloat16_compute_keeps_float32_params_and_loss(data_dir):
    config = _smoke(data_dir, **{"model.dtype": "bfloat16"})
    model = build_model(config.model)
    tx = optim.make_optimizer(config.optim, config.total_steps)
    mesh = sharding.make_mesh()
    _, shardings, init = train_lib.create_state(config, model, tx, mesh)
    state = init(jax.random.key(0))
    step = train_lib.make_train_step(config, model, tx, mesh, shardings)
    rng = np.random.default_rng(0)
    batch = {
        "image": rng.normal(size=(8, 32, 32, 3)).astype(np.float32),
        "label": rng.integers(0, 6, (8, 32, 32)).astype(np.int32),
    }
    state, metrics = step(state, jax.device_put(batch, sharding.batch_sharding(mesh)))
    assert metrics["loss"].dtype == np.float32 and math.isfinite(float(metrics["loss"]))
    assert {x.dtype for x in jax.tree.leaves(state.params)} == {np.dtype("float32")}
    # Close to ln(6) at init: bf16 rounding does not distort the loss.
    assert abs(float(metrics["loss"]) - math.log(6)) < 0.5
