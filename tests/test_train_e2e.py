"""train.py end to end, in subprocesses: run artifacts, a bad flag, resumption, SIGTERM, SIGKILL.

Every training run here is `configs/smoke.py` with the same OVERRIDES (TOTAL_STEPS steps), so any
run that reaches TOTAL_STEPS, however it was interrupted and resumed, must end in the same
TrainState as the uninterrupted ("straight") run: that run is the oracle of the resume tests.
Only the checkpoint cadence and `max_steps_per_run` vary, and neither enters the train step.

Children share, session-wide under pytest's basetemp, one tfds data dir and one persistent XLA
compilation cache: the straight run compiles, later runs load its executables from disk, which
cuts each later run from about a minute of CPU to about 20 s. The subprocess helpers, OVERRIDES
and that shared folder live in conftest.py; test_multiprocess.py, test_sweeps.py and
test_readme.py use them (and the cache) too.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import math
import re
import signal
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import (  # The end-to-end helpers shared with the other e2e modules.
    HALF,
    RUN_TIMEOUT_S,
    TMP_SUFFIX,
    TOTAL_STEPS,
    Run,
    checkpoint_steps,
    child_env,
    config_flags,
    expected_config,
    finish,
    make_restore,
    max_param_change,
    read_metrics,
    shared_dir,
    start,
    train,
)

from jaxseg import checkpointing, train_lib
from jaxseg import workdir as workdir_lib


def assert_states_close(actual, expected, *, rtol: float = 0.0, atol: float = 1e-6) -> None:
    """Every leaf (step, params, batch_stats, opt_state, rng) of two TrainStates agrees."""
    flat_actual = jax.tree_util.tree_leaves_with_path(actual)
    flat_expected = jax.tree.leaves(expected)
    assert len(flat_actual) == len(flat_expected)
    for (path, a), e in zip(flat_actual, flat_expected, strict=True):
        np.testing.assert_allclose(
            np.asarray(a), np.asarray(e), rtol=rtol, atol=atol, err_msg=jax.tree_util.keystr(path)
        )


@dataclasses.dataclass
class Chain:
    """An interrupted run, what it left on disk, and the rerun of the same command."""

    first: Run
    second: Run
    complete_after_first: list[int]
    partial_after_first: list[str]


def _max_steps_chain(workdir: Path, env: dict[str, str]) -> Chain:
    args = config_flags(checkpoint_every_steps=HALF, max_steps_per_run=HALF)
    first = train(workdir, args, env, "first")
    complete, partial = checkpoint_steps(workdir)
    return Chain(first, train(workdir, args, env, "second"), complete, partial)


@dataclasses.dataclass
class Preemption:
    """SIGTERM, then SIGKILL of the rerun, then a second rerun that finishes (see below)."""

    sigterm: Chain  # .second is the run that got SIGKILL.
    sigkill: Chain  # .first is that same run; .second finished the training.
    sigterm_sent: bool
    sigkill_sent: bool


def _run_until(workdir, args, env, name, ready, sig) -> tuple[Run, bool]:
    """Starts a run, sends `sig` once `ready()` holds (polled every 10 ms), waits for the end."""
    proc, log_path = start(workdir, args, env, name)
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while proc.poll() is None and not ready() and time.monotonic() < deadline:
        time.sleep(0.01)
    sent = proc.poll() is None
    if sent:
        proc.send_signal(sig)
    return finish(proc, workdir, log_path), sent


def _preemption_chain(workdir: Path, env: dict[str, str]) -> Preemption:
    """One workdir, one command (a checkpoint every step), three invocations.

    1. SIGTERM once step 1's checkpoint is complete: the run should save and exit 0.
    2. The rerun resumes; SIGKILL as soon as it is writing a checkpoint (a tmp directory
       exists), so the kill lands mid-save and leaves a partial checkpoint behind. Saves take
       ~1 s, far longer than the polling interval.
    3. The second rerun must resume from the last complete checkpoint and finish.
    Chaining SIGKILL after SIGTERM saves one process start (~20 s of CPU) over two chains.
    """
    args = config_flags(checkpoint_every_steps=1)
    ckpts = workdir / "checkpoints"
    terminated, term_sent = _run_until(
        workdir, args, env, "sigterm", lambda: (ckpts / "1").is_dir(), signal.SIGTERM
    )
    complete_1, partial_1 = checkpoint_steps(workdir)
    saving = lambda: any(ckpts.glob("*" + TMP_SUFFIX))
    killed, kill_sent = _run_until(workdir, args, env, "sigkill", saving, signal.SIGKILL)
    complete_2, partial_2 = checkpoint_steps(workdir)
    final = train(workdir, args, env, "final")
    return Preemption(
        sigterm=Chain(terminated, killed, complete_1, partial_1),
        sigkill=Chain(killed, final, complete_2, partial_2),
        sigterm_sent=term_sent,
        sigkill_sent=kill_sent,
    )


@dataclasses.dataclass
class Interrupted:
    """A run sent SIGINT (Ctrl-C) while a checkpoint was being written."""

    run: Run
    sent: bool
    saving: list[str]  # The partial step directories when SIGINT was sent.
    complete: list[int]
    partial: list[str]


def _interrupt_mid_save(workdir: Path, env: dict[str, str]) -> Interrupted:
    """Ctrl-C 0.3 s after a checkpoint's tmp directory appears: save() has returned and the
    write is in flight in the background (a save takes ~1 s), so only waiting keeps it."""
    ckpts = workdir / "checkpoints"
    saving = []

    def ready():
        saving[:] = sorted(p.name for p in ckpts.glob("*" + TMP_SUFFIX))
        if saving:
            time.sleep(0.3)
        return bool(saving)

    run, sent = _run_until(
        workdir, config_flags(checkpoint_every_steps=1), env, "sigint", ready, signal.SIGINT
    )
    complete, partial = checkpoint_steps(workdir)
    return Interrupted(run, sent, saving, complete, partial)


def _second_writer(straight: Run, env: dict[str, str]) -> tuple[Run, str]:
    """train.py on a workdir whose lock this (live) pytest process holds; readers still work."""
    with workdir_lib.TrainLock(straight.workdir) as lock:
        refused = train(straight.workdir, config_flags(), env, "second_writer")
        holder = Path(lock.path).read_text()
        # eval.py / predict.py open checkpoints read-only and never take the lock.
        ckpt = checkpointing.Checkpointer(straight.workdir, read_only=True)
        try:
            readable = ckpt.all_steps()
        finally:
            ckpt.close()
    assert readable == [HALF, TOTAL_STEPS]
    return refused, holder


@dataclasses.dataclass
class Runs:
    """The straight run, done; the others as futures (tests wait only for what they check)."""

    straight: Run
    bad_flag: concurrent.futures.Future
    max_steps: concurrent.futures.Future
    preemption: concurrent.futures.Future
    second_writer: concurrent.futures.Future
    interrupted: concurrent.futures.Future


@pytest.fixture(scope="module")
def sigint_reaches_children():
    """SIGINT at its default in the children, as in a terminal. A shell starts a background job
    (`pytest ... &`) with SIGINT ignored, and an ignored signal stays ignored across exec, so the
    Ctrl-C run would never see its SIGINT and would train to the end; a Python handler here is
    reset to the default in a child at exec."""
    ignored = signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    if ignored:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    if ignored:
        signal.signal(signal.SIGINT, signal.SIG_IGN)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, sigint_reaches_children):
    """Starts every run of this module; tests wait on the ones they check.

    The straight run goes first and alone (bar the bad-flag run, which never compiles): it builds
    the data set and fills the compilation cache that the two chains then load from.
    """
    env = child_env(shared_dir(tmp_path_factory), num_devices=8)
    root = tmp_path_factory.mktemp("e2e")
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        bad_flag = pool.submit(train, root / "bad_flag", ["--config.optim.learnig_rate=1"], env)
        straight = train(root / "straight", config_flags(checkpoint_every_steps=HALF), env)
        max_steps = pool.submit(_max_steps_chain, root / "max_steps", env)
        preemption = pool.submit(_preemption_chain, root / "preemption", env)
        second_writer = pool.submit(_second_writer, straight, env)
        interrupted = pool.submit(_interrupt_mid_save, root / "interrupted", env)
        yield Runs(straight, bad_flag, max_steps, preemption, second_writer, interrupted)


@pytest.fixture(scope="module")
def restore():
    return make_restore(expected_config())


@pytest.fixture(scope="module")
def straight_final(runs, restore):
    assert runs.straight.returncode == 0, runs.straight.tail()
    state = restore(runs.straight.workdir, TOTAL_STEPS)
    assert int(state.step) == TOTAL_STEPS
    return state


@pytest.mark.slow
def test_straight_run_writes_checkpoints_config_metrics_and_events(runs, restore, straight_final):
    run = runs.straight
    assert run.returncode == 0, run.tail()
    workdir = run.workdir

    # Saved every HALF steps (with each eval) and at the end; checkpoint_keep = 2 keeps both.
    complete, partial = checkpoint_steps(workdir)
    assert complete == [HALF, TOTAL_STEPS] and partial == []
    # The run trained: step HALF -> TOTAL_STEPS moved the parameters (the resume tests' equality
    # checks are therefore not vacuous).
    halfway = restore(workdir, HALF)
    assert max_param_change(halfway.params, straight_final.params) > 1e-3

    config = expected_config(checkpoint_every_steps=HALF)
    written = json.loads((workdir / "config.json").read_text())
    assert written == json.loads(config.to_json_best_effort())
    assert written["total_steps"] == TOTAL_STEPS and written["optim"]["learning_rate"] == 0.05

    records = read_metrics(workdir)
    train_lines = [r for r in records if r["split"] == "train"]
    eval_lines = [r for r in records if r["split"] == "eval"]
    assert [r["step"] for r in train_lines] == list(range(1, TOTAL_STEPS + 1))
    assert [r["step"] for r in eval_lines] == [HALF, TOTAL_STEPS]
    for r in records:
        bad = {k: v for k, v in r.items() if k != "split" and not math.isfinite(v)}
        assert not bad, f"non-finite metrics at step {r['step']}: {bad}"
    for r in eval_lines:
        assert r["num_examples"] == 8  # smoke's num_validation, padding excluded.
        assert r["num_pixels"] == 8 * 32 * 32
        for k in ("pixel_accuracy", "mean_accuracy", "mean_iou", "frequency_weighted_iou"):
            assert 0.0 <= r[k] <= 1.0, (k, r)
    # The learning rate logged is the schedule's: cosine from 0.05 (no warmup) over 8 steps.
    lrs = [r["learning_rate"] for r in train_lines]
    expected_lrs = [0.025 * (1 + math.cos(math.pi * s / TOTAL_STEPS)) for s in range(TOTAL_STEPS)]
    np.testing.assert_allclose(lrs, expected_lrs, rtol=1e-5)

    # The final eval report holds the same numbers as the last eval line.
    report = json.loads((workdir / "eval" / "report.json").read_text())
    assert report["step"] == TOTAL_STEPS
    assert report["mean_iou"] == pytest.approx(eval_lines[-1]["mean_iou"], rel=1e-9)

    # TensorBoard events mirror metrics.jsonl, value for value.
    events = _read_scalars(workdir / "tensorboard" / "train")
    assert {s: v for (tag, s), v in events.items() if tag == "loss"} == pytest.approx(
        {r["step"]: r["loss"] for r in train_lines}, rel=1e-6
    )
    eval_events = _read_scalars(workdir / "tensorboard" / "eval")
    assert eval_events[("mean_iou", TOTAL_STEPS)] == pytest.approx(eval_lines[-1]["mean_iou"])


def _read_scalars(folder: Path) -> dict[tuple[str, int], float]:
    """{(tag, step): value} as TensorBoard reads the event files in `folder` (no TensorFlow)."""
    from tensorboard.backend.event_processing import plugin_event_accumulator as pea
    from tensorboard.util import tensor_util

    assert sorted(folder.glob("events.out.tfevents.*")), f"no TensorBoard event files in {folder}"
    acc = pea.EventAccumulator(str(folder), size_guidance={pea.TENSORS: 0})  # 0: keep all
    acc.Reload()
    # Scalars only; the eval split also has the prediction grid.
    return {
        (tag, event.step): float(tensor_util.make_ndarray(event.tensor_proto))
        for tag in acc.PluginTagToContent("scalars")
        for event in acc.Tensors(tag)
    }


@pytest.mark.slow
def test_straight_run_training_loss_decreases(runs):
    losses = [r["loss"] for r in read_metrics(runs.straight.workdir) if r["split"] == "train"]
    assert len(losses) == TOTAL_STEPS
    # A trend, not one lucky batch: the least-squares slope is negative and the last loss is
    # clearly below the first (about 2.08 -> 1.62 when written).
    slope = np.polyfit(np.arange(len(losses)), losses, 1)[0]
    assert slope < 0 and losses[-1] < 0.9 * losses[0], losses


@pytest.mark.slow
def test_misspelt_config_key_fails_naming_it(runs):
    run = runs.bad_flag.result()
    assert run.returncode != 0
    assert "learnig_rate" in run.log, run.tail()
    assert 'Did you mean "learning_rate"' in run.log, run.tail()
    assert not (run.workdir / "checkpoints").exists()  # Failed before doing anything.


@pytest.mark.slow
def test_max_steps_per_run_then_rerun_matches_straight_run(runs, restore, straight_final):
    chain = runs.max_steps.result()
    # Stopped early with a checkpoint: the documented "rerun me" status, not success.
    assert chain.first.returncode == train_lib.EXIT_STOPPED_EARLY == 75, chain.first.tail()
    assert f"Stopping early (preemption or max_steps_per_run) at step {HALF}" in chain.first.log
    assert chain.complete_after_first == [HALF]
    assert chain.second.returncode == 0, chain.second.tail()
    assert f"Resumed from step {HALF}" in chain.second.log, chain.second.tail()
    state = restore(chain.second.workdir, "latest")
    assert int(state.step) == TOTAL_STEPS
    assert_states_close(state, straight_final)
    # Same parameters, same evaluation.
    final_eval = [r for r in read_metrics(chain.second.workdir) if r["split"] == "eval"][-1]
    straight_eval = [r for r in read_metrics(runs.straight.workdir) if r["split"] == "eval"][-1]
    assert final_eval["mean_iou"] == pytest.approx(straight_eval["mean_iou"], abs=1e-6)


@pytest.mark.slow
def test_sigterm_checkpoints_exits_cleanly_and_the_rerun_resumes_there(
    runs, restore, straight_final
):
    preemption = runs.preemption.result()
    chain = preemption.sigterm
    assert preemption.sigterm_sent, "the run ended before SIGTERM was sent:\n" + chain.first.tail()
    assert chain.first.returncode == train_lib.EXIT_STOPPED_EARLY, chain.first.tail()
    assert "Received signal 15" in chain.first.log, chain.first.tail()
    stopped = re.search(r"Stopping early .* at step (\d+)", chain.first.log)
    assert stopped, chain.first.tail()
    stop_step = int(stopped.group(1))
    assert 1 <= stop_step < TOTAL_STEPS
    # The stopping step is checkpointed and is the latest; nothing is left half-written.
    assert chain.complete_after_first[-1] == stop_step
    assert chain.partial_after_first == []
    # The rerun of the same command continues from there (it is then SIGKILLed, see below)...
    assert f"Resumed from step {stop_step}" in chain.second.log, chain.second.tail()
    # ... and the third invocation ends where the straight run did.
    final = preemption.sigkill.second
    assert final.returncode == 0, final.tail()
    state = restore(final.workdir, "latest")
    assert_states_close(state, straight_final)


@pytest.mark.slow
def test_sigkill_mid_save_never_restores_the_partial_checkpoint(runs, restore, straight_final):
    preemption = runs.preemption.result()
    chain = preemption.sigkill
    assert preemption.sigkill_sent, "the run ended before SIGKILL was sent:\n" + chain.first.tail()
    assert chain.first.returncode == -signal.SIGKILL, chain.first.tail()
    # Killed while writing a step after the last complete one.
    assert chain.complete_after_first and chain.partial_after_first, (
        chain.complete_after_first,
        chain.partial_after_first,
    )
    last_complete = chain.complete_after_first[-1]
    partial_steps = [int(name.removesuffix(TMP_SUFFIX)) for name in chain.partial_after_first]
    assert min(partial_steps) > last_complete

    assert chain.second.returncode == 0, chain.second.tail()
    # Resumed from the last complete step, and the partial directory was cleaned away.
    assert f"Resumed from step {last_complete}" in chain.second.log, chain.second.tail()
    complete, partial = checkpoint_steps(chain.second.workdir)
    assert partial == [] and complete[-1] == TOTAL_STEPS
    state = restore(chain.second.workdir, "latest")
    assert int(state.step) == TOTAL_STEPS
    assert_states_close(state, straight_final)
    # The killed run had logged steps past its last checkpoint; the resumed runs logged them
    # again. Each (step, split) is in metrics.jsonl once, every train step 1..TOTAL_STEPS.
    records = read_metrics(chain.second.workdir)
    keys = [(r["step"], r["split"]) for r in records]
    assert len(keys) == len(set(keys)), sorted(keys)
    assert sorted(s for s, split in keys if split == "train") == list(range(1, TOTAL_STEPS + 1))


@pytest.mark.slow
def test_second_writer_is_refused_naming_the_holder(runs):
    refused, holder = runs.second_writer.result()
    assert refused.returncode not in (0, train_lib.EXIT_STOPPED_EARLY), refused.tail()
    holder = json.loads(holder)
    assert f"pid {holder['pid']} on host {holder['host']}" in refused.tail(5), refused.tail()
    assert "is in use by another training run" in refused.tail(5)
    # Refused before touching anything: the finished run's checkpoints and metrics are as
    # they were (the readers' check ran while the lock was held, in _second_writer).
    assert checkpoint_steps(refused.workdir) == ([HALF, TOTAL_STEPS], [])
    assert len(read_metrics(refused.workdir)) == TOTAL_STEPS + 2


@pytest.mark.slow
def test_ctrl_c_mid_save_keeps_that_checkpoint_and_ends_with_the_cause(runs):
    result = runs.interrupted.result()
    run = result.run
    assert result.sent and result.saving, "the run ended before SIGINT:\n" + run.tail()
    assert run.returncode not in (0, train_lib.EXIT_STOPPED_EARLY), run.tail()
    # The save in flight at Ctrl-C was waited for: complete, nothing left half-written.
    saved = [int(name.removesuffix(TMP_SUFFIX)) for name in result.saving]
    assert result.partial == [] and set(saved) <= set(result.complete), result
    assert not (run.workdir / workdir_lib.LOCK_FILENAME).exists()  # Released.
    # The last lines say what happened, not asyncio shutdown noise.
    tail = run.tail(3)
    assert "KeyboardInterrupt" in tail, run.tail()
    assert "Event loop is closed" not in run.log, run.tail()
