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


def test_nan_right_after_a_save_keeps_the_newer_checkpoint(
    trained_run, data_dir, tmp_path, monkeypatch
):
    """The save of step 4 is still being written when the loss of step 5 is found non-finite:
    the loop must wait for it (a finished save of a finite state is good data)."""
    import shutil

    workdir, _ = trained_run
    copy = tmp_path / "run"
    shutil.copytree(workdir, copy)
    real_check = train_lib._check_finite

    def nan_at_step_5(metrics, step, **kwargs):
        if step == 5:  # Where a real NaN is detected: the first log step after the save.
            metrics = dict(metrics, loss=float("nan"))
        return real_check(metrics, step, **kwargs)

    monkeypatch.setattr(train_lib, "_check_finite", nan_at_step_5)
    config = _smoke(data_dir, total_steps=6, log_every_steps=1, checkpoint_every_steps=1)
    with pytest.raises(train_lib.NonFiniteLossError, match="step 5") as error:
        train_lib.train_and_evaluate(config, str(copy))
    # Checked at once, before anything else could finish the save in the background.
    names = sorted(p.name for p in (copy / "checkpoints").iterdir())
    assert names == ["3", "4"], names
    # grad_clip_norm is on in smoke (default 1.0): the hint must not suggest enabling it.
    assert "already clipped" in str(error.value) and "enable" not in str(error.value)
    assert not (copy / "train.lock").exists()  # Released on the error path too.
    state = _restore(config, str(copy), 4)
    assert int(state.step) == 4


def test_nan_hint_suggests_clipping_only_when_it_is_off():
    with pytest.raises(train_lib.NonFiniteLossError, match="enable optim.grad_clip_norm"):
        train_lib._check_finite({"loss": float("inf")}, 7, grad_clip_norm=0.0)


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
    train_lib.validate_config(smoke.get_config(), mesh)
    for key, (value, message) in cases.items():
        config = smoke.get_config()
        config[key] = value
        with pytest.raises(ValueError, match=message):
            train_lib.validate_config(config, mesh)
