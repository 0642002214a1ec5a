"""The train loop in-process: init_from another run, the non-finite stop, bfloat16 compute."""

import json
import math
import os
import shutil

import jax
import numpy as np
import pytest

from configs import smoke
from jaxseg import checkpointing, optim, sharding, train_lib, train_state
from jaxseg import workdir as workdir_lib
from jaxseg.data import datasets
from jaxseg.models import build_model


def _config(workdir, **overrides):
    """The run's config.json (what eval.py and a resumed train.py read), with `overrides`."""
    config = workdir_lib.read_config(workdir)
    for key, value in overrides.items():
        node = config
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return config


@pytest.fixture(scope="module")
def trained_run(smoke_run):
    """The session's smoke run (tests/conftest.py): 6 steps, evaluated and saved at 3 and 6."""
    return str(smoke_run)


def _restore(config, workdir, step="latest"):
    return train_state.restore_checkpoint(config, workdir, step)[1]


def test_run_writes_report_and_checkpoint(trained_run):
    workdir = trained_run
    with open(os.path.join(workdir, "eval", "report.json")) as f:
        report = json.load(f)
    assert 0.0 <= report["mean_iou"] <= 1.0 and report["num_examples"] == 8
    assert report["step"] == 6 and report["checkpoint"] == "final"
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    evals = {r["step"]: r["mean_iou"] for r in records if r["split"] == "eval"}
    assert sorted(evals) == [3, 6] and evals[6] == report["mean_iou"]
    ckpt = checkpointing.Checkpointer(workdir, read_only=True)
    assert ckpt.all_steps() == [3, 6] and ckpt.best_step() == max(evals, key=evals.get)
    ckpt.close()


def test_init_from_run_copies_every_shared_parameter(trained_run):
    workdir = trained_run
    source = _restore(_config(workdir), workdir)
    # A different decoder: bilinear up-sampling has [1, 1, C, C/2] kernels, not [2, 2, C, C/2].
    config = _config(workdir, **{"model.upsampling": "bilinear", "init_from": workdir})
    model = build_model(config.model)
    tx, _ = optim.make_optimizer(config.optim, config.total_steps)
    spec = datasets.dataset_spec(config.data)
    abstract, _, init = train_state.create_state(config, model, tx, sharding.make_mesh(), spec)
    fresh = init(jax.random.key(0))
    state = train_state.initial_weights(config, fresh, abstract)
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


def test_non_finite_loss_stops_and_keeps_last_checkpoint(trained_run, tmp_path):
    workdir = trained_run
    copy = str(tmp_path / "run")
    shutil.copytree(workdir, copy)
    nan = float("nan")
    # Resumed from step 6; the first log step (every 2) after it finds the loss non-finite.
    config = _config(copy, **{"total_steps": 9, "loss.class_weights": (nan,) * 6})
    with pytest.raises(train_lib.NonFiniteLossError, match="step 8"):
        train_lib.train_and_evaluate(config, copy)
    ckpt = checkpointing.Checkpointer(copy, read_only=True)
    assert ckpt.all_steps() == [3, 6]
    ckpt.close()
    state = _restore(_config(copy), copy, 6)
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(jax.device_get(state.params)))


def test_bfloat16_compute_keeps_float32_params_and_loss(trained_run):
    config = _config(trained_run, **{"model.dtype": "bfloat16"})
    model = build_model(config.model)
    tx, _ = optim.make_optimizer(config.optim, config.total_steps)
    mesh = sharding.make_mesh()
    spec = datasets.dataset_spec(config.data)
    _, shardings, init = train_state.create_state(config, model, tx, mesh, spec)
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


def test_nan_right_after_a_save_keeps_the_newer_checkpoint(trained_run, tmp_path, monkeypatch):
    """The save of step 7 is still being written when the loss of step 8 is found non-finite:
    the loop must wait for it (a finished save of a finite state is good data)."""
    copy = tmp_path / "run"
    shutil.copytree(trained_run, copy)
    real_check = train_lib._check_finite

    def nan_at_step_8(metrics, step, **kwargs):
        if step == 8:  # Where a real NaN is detected: the first log step after the save.
            metrics = dict(metrics, loss=float("nan"))
        return real_check(metrics, step, **kwargs)

    monkeypatch.setattr(train_lib, "_check_finite", nan_at_step_8)
    config = _config(copy, total_steps=9, log_every_steps=1, checkpoint_every_steps=1)
    with pytest.raises(train_lib.NonFiniteLossError, match="step 8") as error:
        train_lib.train_and_evaluate(config, str(copy))
    # Checked at once, before anything else could finish the save in the background.
    names = sorted((p.name for p in (copy / "checkpoints").iterdir()), key=int)
    assert names[-2:] == ["6", "7"], names  # (3 too if it is the best by mIoU)
    # grad_clip_norm is on in smoke (default 1.0): the hint must not suggest enabling it.
    assert "already clipped" in str(error.value) and "enable" not in str(error.value)
    assert not (copy / "train.lock").exists()  # Released on the error path too.
    state = _restore(config, str(copy), 7)
    assert int(state.step) == 7


def test_resume_with_another_width_is_refused_naming_the_config_key(smoke_run, tmp_path):
    """A finished run resumed with model.base_width changed: the error names the key with the
    run's and the new value (model keys before the rest), says what to do, still lists the
    arrays, and the run's files (checkpoints, config.json) are left byte for byte."""
    workdir = tmp_path / "run"
    shutil.copytree(smoke_run, workdir)
    before = {p: p.read_bytes() for p in sorted(workdir.rglob("*")) if p.is_file()}
    config = smoke.get_config()
    config.data.data_dir = workdir_lib.read_config(str(workdir)).data.data_dir
    config.total_steps = 12  # a second, harmless difference: listed after the model's
    config.model.base_width = 8  # the run's is 4
    with pytest.raises(ValueError) as err:
        train_lib.train_and_evaluate(config, str(workdir))
    message = str(err.value)
    lines = message.splitlines()
    width = lines.index("  config.model.base_width: 4 -> 8")
    assert lines.index("  config.total_steps: 6 -> 12") > width, message
    assert "--config.model.base_width=4" in message  # the way back
    assert "new --workdir" in message and f"--config.init_from={workdir}" in message
    assert "shapes differ: params/" in message and "more" in message  # arrays, shortened
    assert isinstance(err.value.__cause__, checkpointing.CheckpointMismatchError)
    after = {p: p.read_bytes() for p in sorted(workdir.rglob("*")) if p.is_file()}
    assert after == before


def test_nan_hint_suggests_clipping_only_when_it_is_off():
    with pytest.raises(train_lib.NonFiniteLossError, match="enable optim.grad_clip_norm"):
        train_lib._check_finite({"loss": float("inf")}, 7, grad_clip_norm=0.0)


def test_lowering_total_steps_below_a_finished_run_exits_finished_and_changes_nothing(
    smoke_run, tmp_path
):
    """A finished 6-step run rerun with total_steps = 4: exit 0 (not 75, which a requeueing
    scheduler would repeat forever), and the run's files are left exactly as they were."""
    workdir = tmp_path / "run"
    shutil.copytree(smoke_run, workdir)
    before = {p: p.read_bytes() for p in sorted(workdir.rglob("*")) if p.is_file()}
    config = smoke.get_config()
    config.data.data_dir = workdir_lib.read_config(str(workdir)).data.data_dir
    config.total_steps = 4
    assert train_lib.run(config, str(workdir)) == train_lib.EXIT_FINISHED == 0
    after = {p: p.read_bytes() for p in sorted(workdir.rglob("*")) if p.is_file()}
    changed = [p for p in before if after.get(p) != before[p]]
    # train.log is the only file this invocation may write (its own log lines).
    assert [p.name for p in changed] in ([], ["train.log"]), changed


def test_a_failing_evaluation_saves_the_steps_trained_before_it(trained_run, tmp_path, monkeypatch):
    """Resumed at 6, evaluating at 8 fails (any cause): checkpoint 8 is written first, so the
    rerun starts at 8, not at the last periodic checkpoint (6)."""
    from jaxseg import evaluation

    copy = tmp_path / "run"
    shutil.copytree(trained_run, copy)

    def broken(self, state):
        raise RuntimeError("evaluation broke")

    monkeypatch.setattr(evaluation.Evaluator, "evaluate", broken)
    config = _config(copy, total_steps=10, eval_every_steps=8, checkpoint_every_steps=100)
    with pytest.raises(RuntimeError, match="evaluation broke"):
        train_lib.train_and_evaluate(config, str(copy))
    names = sorted((p.name for p in (copy / "checkpoints").iterdir()), key=int)
    assert names[-1] == "8", names
    assert int(_restore(config, str(copy), 8).step) == 8


def test_an_eval_pad_size_too_small_for_the_validation_images_stops_before_training(
    trained_run,
):
    from jaxseg.data import loading

    config = _config(trained_run)
    config.data.eval_pad_size = (16, 16)  # smoke's validation images are 32 x 32
    with pytest.raises(ValueError, match=r"config.data.eval_pad_size = \(16, 16\).*\(32, 32\)"):
        loading.make_eval_iterator(config.data, global_batch_size=8)
