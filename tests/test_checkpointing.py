"""Tests for jaxseg/checkpointing.py: round trips, retention, errors, crash safety, bit rot."""

import asyncio
import gc
import logging
import os
import re
import shutil
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from flax import struct

from jaxseg import checkpointing, sharding
from jaxseg import workdir as workdir_lib


@struct.dataclass
class TinyState:
    """Same fields as the train loop's TrainState, tiny shapes."""

    step: jax.Array
    params: dict
    batch_stats: dict
    opt_state: optax.OptState
    rng: jax.Array


_OPTIMIZER = optax.sgd(0.1, momentum=0.9)


def make_state(seed: int, width: int = 8) -> TinyState:
    """Distinct, seed-dependent values in every leaf, so a mixed-up restore is detectable.

    Built in numpy and put on device once: jax.random.normal alone costs seconds of XLA:CPU
    compilation per shape.
    """
    rs = np.random.default_rng(seed)
    params = {
        "conv": {
            "kernel": rs.standard_normal((3, 3, 4, width), np.float32),
            "bias": np.arange(width, dtype=np.float32),
        },
        "head": {"kernel": rs.standard_normal((width, 16), np.float32)},
    }
    opt_state = jax.tree.map(lambda x: np.asarray(x) + seed, _OPTIMIZER.init(params))
    state = TinyState(
        step=np.int32(100 + seed),
        params=params,
        batch_stats={"bn": {"mean": np.full((width,), seed, np.float32)}},
        opt_state=opt_state,
        rng=rs.integers(0, 2**32, size=2, dtype=np.uint32),  # raw threefry key data
    )
    return jax.device_put(state)


def restore_target(state, mesh, min_fsdp_size=2**18):
    """Abstract state with shardings attached, as the train loop builds it."""
    abstract = jax.eval_shape(lambda: state)
    shardings = sharding.state_shardings(abstract, mesh, min_fsdp_size=min_fsdp_size)
    return sharding.with_shardings(abstract, shardings)


def assert_trees_equal(actual, expected):
    assert jax.tree.structure(actual) == jax.tree.structure(expected)
    for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected), strict=True):
        assert a.dtype == e.dtype
        np.testing.assert_array_equal(np.asarray(a), np.asarray(e))


@pytest.fixture(scope="module")
def mesh():
    return sharding.make_mesh(4, 2)


def test_round_trip_state(tmp_path, mesh):
    state = make_state(1)
    with checkpointing.Checkpointer(tmp_path) as ckpt:
        assert ckpt.save(101, state)
        ckpt.wait_until_finished()
        assert (tmp_path / "checkpoints" / "101").is_dir()
        restored = ckpt.restore(restore_target(state, mesh))
    assert isinstance(restored, TinyState)
    assert_trees_equal(restored, state)
    assert restored.rng.dtype == jnp.uint32 and restored.step.dtype == jnp.int32


def test_partial_restore_reads_only_the_target_subtrees(tmp_path, mesh):
    """What inference restores: the state without its optimiser state."""
    state = make_state(5)
    with checkpointing.Checkpointer(tmp_path) as ckpt:
        ckpt.save(3, state)
        target = restore_target(state.replace(opt_state=None), mesh)
        with pytest.raises(ValueError, match="in checkpoint but not in target: opt_state"):
            ckpt.restore(target)  # Without `partial` a missing subtree is a mismatch.
        restored = ckpt.restore(target, partial=True)
    assert restored.opt_state is None
    assert_trees_equal(restored, state.replace(opt_state=None))


def test_restore_into_fsdp_shardings(tmp_path, mesh):
    state = make_state(2)
    target = restore_target(state, mesh, min_fsdp_size=64)
    with checkpointing.Checkpointer(tmp_path) as ckpt:
        ckpt.save(7, state)
        restored = ckpt.restore(target, step=7)
    for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(target), strict=True):
        assert got.sharding == want.sharding
    # conv kernel [3, 3, 4, 8]: 288 >= 64 elements, last dim split over fsdp=2.
    kernel = restored.params["conv"]["kernel"]
    assert kernel.sharding.spec == jax.sharding.PartitionSpec(None, None, None, "fsdp")
    assert kernel.addressable_shards[0].data.shape == (3, 3, 4, 4)
    assert restored.step.sharding.spec == jax.sharding.PartitionSpec()
    assert_trees_equal(restored, state)


def test_save_returns_before_write_and_tolerates_donation(tmp_path, mesh):
    # The train step donates the state right after `save` returns: the asynchronous write must
    # not read the device buffers afterwards.
    state = make_state(3)
    expected = jax.tree.map(np.asarray, state)
    with checkpointing.Checkpointer(tmp_path) as ckpt:
        ckpt.save(1, state)
        for leaf in jax.tree.leaves(state):
            leaf.delete()
        restored = ckpt.restore(restore_target(make_state(3), mesh))
    assert_trees_equal(restored, expected)


def test_keeps_last_k_and_best(tmp_path, mesh):
    state = make_state(0)
    target = restore_target(state, mesh)
    mious = [0.1, 0.5, 0.2, 0.3, None, 0.4]  # step 2 is best; step 5 has no eval
    with checkpointing.Checkpointer(tmp_path, max_to_keep=2) as ckpt:
        for step, miou in enumerate(mious, start=1):
            metrics = None if miou is None else {"miou": miou, "loss": 1.0 - miou}
            assert ckpt.save(step, state.replace(step=np.int32(step)), metrics=metrics)
        ckpt.wait_until_finished()
        # Latest two (5, 6) plus the best (2), although it is older than both.
        assert ckpt.all_steps() == [2, 5, 6]
        assert (ckpt.latest_step(), ckpt.best_step()) == (6, 2)
        assert int(ckpt.restore(target, "best").step) == 2
        assert int(ckpt.restore(target, "latest").step) == 6
    on_disk = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    assert on_disk == [2, 5, 6]

    # A resumed run reads metrics back from disk; a better checkpoint releases the old best.
    with checkpointing.Checkpointer(tmp_path, max_to_keep=2) as ckpt:
        assert (ckpt.all_steps(), ckpt.best_step()) == ([2, 5, 6], 2)
        ckpt.save(7, state, metrics={"miou": 0.9})
        ckpt.wait_until_finished()
        assert ckpt.all_steps() == [6, 7]
        assert ckpt.best_step() == 7


def test_every_save_writes_and_an_existing_step_is_never_overwritten(tmp_path, mesh):
    state = make_state(0)
    with checkpointing.Checkpointer(tmp_path) as ckpt:
        assert ckpt.save(5, state)  # The caller decides when: no interval of its own.
        assert ckpt.save(13, state)
        assert not ckpt.save(13, make_state(1))  # never overwritten
        ckpt.wait_until_finished()
        assert ckpt.all_steps() == [5, 13]
        assert ckpt.best_step() is None
        assert_trees_equal(ckpt.restore(restore_target(state, mesh), 13), state)


def test_restore_errors_name_directory_and_steps(tmp_path, mesh):
    state = make_state(0)
    target = restore_target(state, mesh)
    with checkpointing.Checkpointer(tmp_path) as ckpt:
        with pytest.raises(FileNotFoundError, match=f"No checkpoints found in {tmp_path}"):
            ckpt.restore(target)
        ckpt.save(4, state)
        ckpt.save(8, state)
        with pytest.raises(FileNotFoundError, match=r"step 5 .* available steps: \[4, 8\]"):
            ckpt.restore(target, step=5)
        with pytest.raises(FileNotFoundError, match="step 'newest'"):
            ckpt.restore(target, step="newest")
        with pytest.raises(FileNotFoundError, match="saved with metric 'miou'"):
            ckpt.restore(target, step="best")


def test_restore_mismatched_tree_lists_differences(tmp_path, mesh):
    with checkpointing.Checkpointer(tmp_path) as ckpt:
        ckpt.save(1, make_state(0, width=8))
        # A "different model": wider layers, and an extra parameter.
        other = make_state(0, width=6)
        other = other.replace(params={**other.params, "aux": {"kernel": jnp.zeros((2, 2))}})
        with pytest.raises(checkpointing.CheckpointMismatchError) as err:
            ckpt.restore(restore_target(other, mesh))
    assert isinstance(err.value, ValueError)
    message = str(err.value)
    assert str(tmp_path / "checkpoints" / "1") in message
    assert "in target but not in checkpoint: params/aux/kernel (2, 2)" in message
    assert "params/conv/kernel: checkpoint (3, 3, 4, 8) vs target (3, 3, 4, 6)" in message
    # optax's momentum trace is named by its field, so optimizer mismatches are readable too.
    assert "opt_state/0/trace/conv/kernel" in message


def test_restore_requires_shardings(tmp_path):
    state = make_state(0)
    with checkpointing.Checkpointer(tmp_path) as ckpt:
        ckpt.save(1, state)
        with pytest.raises(ValueError, match="needs a sharding.*step"):
            ckpt.restore(jax.eval_shape(lambda: state))


def test_save_rejects_bad_metrics(tmp_path):
    state = make_state(0)
    with checkpointing.Checkpointer(tmp_path) as ckpt:
        with pytest.raises(ValueError, match="lack the ranking metric 'miou'.*'loss'"):
            ckpt.save(1, state, metrics={"loss": 0.3})
        with pytest.raises(ValueError, match="'miou'.* nan for step 1 is not finite"):
            ckpt.save(1, state, metrics={"miou": float("nan")})
        assert ckpt.all_steps() == []


def test_incomplete_checkpoint_is_ignored_and_cleaned_up(tmp_path, mesh):
    state1, state2 = make_state(1), make_state(2)
    with checkpointing.Checkpointer(tmp_path) as ckpt:
        ckpt.save(1, state1)
        ckpt.save(2, state2)
    root = tmp_path / "checkpoints"
    # What a process killed during the save of step 3 leaves: orbax's tmp directory, here even
    # with every file written, just not yet renamed (the last moment a kill can strike).
    shutil.copytree(root / "2", root / "3.orbax-checkpoint-tmp")
    # And one killed early, with a partial file only.
    (root / "4.orbax-checkpoint-tmp" / "state").mkdir(parents=True)
    (root / "4.orbax-checkpoint-tmp" / "state" / "partial").write_bytes(b"\0" * 10)

    with checkpointing.Checkpointer(tmp_path) as ckpt:
        assert ckpt.all_steps() == [1, 2]
        restored = ckpt.restore(restore_target(state2, mesh), "latest")
        assert_trees_equal(restored, state2)
        # The next save of the resumed run removes the leftovers before writing.
        ckpt.save(3, state1)
        ckpt.wait_until_finished()
        assert ckpt.all_steps() == [1, 2, 3]
    assert sorted(p.name for p in root.iterdir() if "tmp" in p.name) == []
    with checkpointing.Checkpointer(tmp_path) as ckpt:
        assert ckpt.latest_step() == 3
        assert_trees_equal(ckpt.restore(restore_target(state1, mesh)), state1)


def test_read_only_creates_nothing(tmp_path, mesh):
    workdir = tmp_path / "missing_run"
    ckpt = checkpointing.Checkpointer(workdir, read_only=True)
    with pytest.raises(FileNotFoundError, match="missing_run/checkpoints"):
        ckpt.restore(restore_target(make_state(0), mesh))
    assert not workdir.exists()


def _largest_data_file(step_dir) -> str:
    files = [p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d"]
    return str(max(files, key=lambda p: p.stat().st_size))


def _truncate(step_dir):
    path = _largest_data_file(step_dir)
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])


def _truncate_every_data_file(step_dir):
    # A checkpoint cut short as a whole (disk full, a copy interrupted): every read fails, and
    # orbax abandons the ones in flight when the first fails (`quiet_abandoned_reads`).
    for path in (step_dir / "state").rglob("*"):
        if path.is_file() and path.parent.name == "d":
            path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _flip_bytes(step_dir):
    # Bit rot: 8 bytes inverted in the middle of a data file, its size and name unchanged.
    path = _largest_data_file(step_dir)
    data = bytearray(open(path, "rb").read())
    middle = len(data) // 2
    data[middle : middle + 8] = bytes(b ^ 0xFF for b in data[middle : middle + 8])
    open(path, "wb").write(bytes(data))


def _delete_metadata(step_dir):
    os.remove(step_dir / "state" / "_METADATA")


@pytest.mark.parametrize(
    "damage, culprit",
    [
        (_truncate, r"checkpoints/2/state/?: Exception: Encountered error while reading array"),
        (_truncate_every_data_file, r"checkpoints/2/state/?: \w+: "),
        (_flip_bytes, r"checkpoints/2/state array \S+: checksum mismatch"),
        (_delete_metadata, r"checkpoints/2/state/_METADATA: missing or empty"),
    ],
)
@pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")
def test_corrupt_latest_checkpoint_is_named_moved_aside_and_the_previous_one_used(
    tmp_path, mesh, caplog, monkeypatch, damage, culprit
):
    # The console shows the damage once, not the late errors of the reads orbax abandoned when
    # it failed (`quiet_abandoned_reads`, installed here afresh over pytest's own hook).
    monkeypatch.setattr(sys, "unraisablehook", sys.unraisablehook)
    monkeypatch.setattr(logging.getLogger("asyncio"), "filters", [])
    monkeypatch.setattr(checkpointing, "_quieted", False)
    old, new = make_state(1, width=64), make_state(2, width=64)
    with checkpointing.Checkpointer(tmp_path) as ckpt:
        ckpt.save(1, old)
        ckpt.save(2, new)
    damage(tmp_path / "checkpoints" / "2")
    target = restore_target(old, mesh)
    # What eval.py meets: the error names the step, the file or array, and the cause.
    with checkpointing.Checkpointer(tmp_path, read_only=True) as ckpt:
        with pytest.raises(checkpointing.CorruptCheckpointError, match="checkpoint 2 is corrupt: "):
            ckpt.restore(target, "latest")
    with checkpointing.Checkpointer(tmp_path) as ckpt:
        state = ckpt.restore_latest_intact(target)
        assert ckpt.all_steps() == [1]
    assert_trees_equal(state, old)
    moved = list((tmp_path / workdir_lib.CORRUPT_DIRNAME).iterdir())
    assert [p.name.split(".")[0] for p in moved] == ["2"]
    assert (moved[0] / "checksums").is_dir()  # Moved whole, never deleted.
    report = "\n".join(r.getMessage() for r in caplog.records if r.levelname == "ERROR")
    assert re.search(r"Checkpoint 2 is corrupt and was moved to \S+corrupt_checkpoints/2\.", report)
    assert re.search(culprit, report), report
    assert "TensorStore details" not in report and "bound method" not in report  # orbax's noise
    gc.collect()  # abandoned reads' futures: "exception was never retrieved" when collected
    assert not [r for r in caplog.records if r.name == "asyncio"]


def test_checkpoint_without_checksums_still_restores(tmp_path, mesh):
    """Checkpoints written before checksums existed (no `checksums` item) restore unverified."""
    state = make_state(3)
    with checkpointing.Checkpointer(tmp_path) as ckpt:
        ckpt.save(5, state)
    shutil.rmtree(tmp_path / "checkpoints" / "5" / "checksums")
    with checkpointing.Checkpointer(tmp_path, read_only=True) as ckpt:
        restored = ckpt.restore(restore_target(state, mesh))
    assert_trees_equal(restored, state)


def test_every_checkpoint_corrupt_is_an_error_naming_it(tmp_path, mesh):
    state = make_state(4)
    with checkpointing.Checkpointer(tmp_path) as ckpt:
        ckpt.save(1, state)
    _delete_metadata(tmp_path / "checkpoints" / "1")
    with checkpointing.Checkpointer(tmp_path) as ckpt:
        with pytest.raises(checkpointing.CorruptCheckpointError, match="every checkpoint failed"):
            ckpt.restore_latest_intact(restore_target(state, mesh))
        assert ckpt.all_steps() == []


def _write_old_format(workdir, steps_and_states):
    """Checkpoints as jaxseg wrote them before `extra` was dropped (commit 38f0e00): items
    state (orbax StandardCheckpointHandler), extra {"step": n} and checksums, plus the metrics
    orbax writes for ranked steps. Built with orbax directly, the way that Checkpointer did."""
    options = ocp.CheckpointManagerOptions(
        best_fn=lambda m: float(m["miou"]), best_mode="max", enable_async_checkpointing=False
    )
    handlers = {
        "state": ocp.StandardCheckpointHandler(),
        "extra": ocp.JsonCheckpointHandler(),
        "checksums": ocp.JsonCheckpointHandler(),
    }
    directory = workdir_lib.resolve(workdir) / "checkpoints"
    with ocp.CheckpointManager(directory, options=options, item_handlers=handlers) as manager:
        for step, state, miou in steps_and_states:
            args = ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                extra=ocp.args.JsonSave({"step": step}),
                checksums=ocp.args.JsonSave(checkpointing.array_checksums(state)),
            )
            manager.save(step, args=args, metrics=None if miou is None else {"miou": miou})


def test_checkpoints_of_the_previous_format_restore_and_resume(tmp_path, mesh):
    ranked, latest = make_state(1), make_state(2)
    _write_old_format(tmp_path, [(4, ranked, 0.5), (6, latest, None)])
    assert (tmp_path / "checkpoints" / "6" / "extra").is_dir()
    target = restore_target(ranked, mesh)
    with checkpointing.Checkpointer(tmp_path, read_only=True) as ckpt:  # eval.py's view
        assert (ckpt.all_steps(), ckpt.best_step()) == ([4, 6], 4)
        assert_trees_equal(ckpt.restore(target, "best"), ranked)
        inference = ckpt.restore(restore_target(ranked.replace(opt_state=None), mesh), partial=True)
        assert_trees_equal(inference, latest.replace(opt_state=None))
    # A resumed run: the old latest step restores verified, new saves sit beside the old ones.
    with checkpointing.Checkpointer(tmp_path, max_to_keep=2) as ckpt:
        assert_trees_equal(ckpt.restore_latest_intact(target), latest)
        assert ckpt.save(8, ranked, metrics={"miou": 0.7})
        ckpt.wait_until_finished()
        assert (ckpt.all_steps(), ckpt.best_step()) == ([6, 8], 8)


def test_a_save_the_disk_cannot_hold_fails_at_once_naming_the_path(tmp_path, mesh, monkeypatch):
    """A full disk: the save is refused before anything is written, naming the checkpoint
    directory, the space needed and the intact checkpoint, instead of failing later in orbax's
    background thread with a path-less OSError."""
    state = make_state(4)
    with checkpointing.Checkpointer(tmp_path) as ckpt:
        assert ckpt.save(1, state)
        ckpt.wait_until_finished()
        usage = shutil.disk_usage(tmp_path)
        monkeypatch.setattr(checkpointing.shutil, "disk_usage", lambda _: usage._replace(free=1000))
        with pytest.raises(OSError, match="no room to save checkpoint 2") as error:
            ckpt.save(2, state)
    message = str(error.value)
    assert str(tmp_path / "checkpoints") in message and "checkpoint 1 is intact" in message
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["1"]


def test_a_failed_background_write_raises_naming_the_directory(tmp_path, monkeypatch):
    ckpt = checkpointing.Checkpointer(tmp_path)

    def failing():
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ckpt._manager, "wait_until_finished", failing)
    with pytest.raises(OSError, match="writing checkpoints in .*checkpoints failed: No space"):
        ckpt.wait_until_finished()
    monkeypatch.undo()
    ckpt.close()


# What orbax's read coroutine does when it is finalized unfinished (compiled under an orbax file
# name, as `is_abandoned_read` recognises orbax's coroutines by their code's file).
_ORBAX_LIKE = """
import types

@types.coroutine
def _pause():
    yield

async def _read_array_index_and_device_put():
    try:
        await _pause()
    except GeneratorExit as e:
        raise Exception("Encountered error while reading array index") from e
"""


def _unraisable_events(make_garbage) -> list:
    """The `sys.unraisablehook` arguments that collecting what `make_garbage` leaves produces."""
    events, previous = [], sys.unraisablehook
    sys.unraisablehook = events.append
    try:
        make_garbage()
        gc.collect()
    finally:
        sys.unraisablehook = previous
    return events


def test_reads_abandoned_by_a_failed_restore_stay_off_the_console_and_nothing_else(monkeypatch):
    closed = asyncio.new_event_loop()
    closed.close()

    class LateRead:  # a read ending after orbax's loop closed, as tensorstore's callback posts
        def __del__(self):
            closed.call_soon_threadsafe(print)

    class OtherError:
        def __del__(self):
            raise ValueError("not a checkpoint read")

    def orbax_coroutine():
        namespace = {}
        exec(compile(_ORBAX_LIKE, "/site/orbax/checkpoint/serialization.py", "exec"), namespace)
        coroutine = namespace["_read_array_index_and_device_put"]()
        coroutine.send(None)  # suspended mid-read, then dropped

    (late,) = _unraisable_events(lambda: LateRead())
    (coroutine,) = _unraisable_events(orbax_coroutine)
    (other,) = _unraisable_events(lambda: OtherError())
    assert str(late.exc_value) == "Event loop is closed"
    assert checkpointing.is_abandoned_read(late)
    assert checkpointing.is_abandoned_read(coroutine)
    assert not checkpointing.is_abandoned_read(other)

    # Installed once, the hook drops the two and passes the rest to the hook it wraps.
    passed = []
    monkeypatch.setattr(sys, "unraisablehook", passed.append)
    monkeypatch.setattr(checkpointing, "_quieted", False)
    asyncio_logger = logging.getLogger("asyncio")
    monkeypatch.setattr(asyncio_logger, "filters", [])
    checkpointing.quiet_abandoned_reads()
    checkpointing.quiet_abandoned_reads()
    for event in (late, coroutine, other):
        sys.unraisablehook(event)
    assert passed == [other]

    def record(message):
        return logging.LogRecord("asyncio", logging.ERROR, __file__, 1, message, None, None)

    never = "Future exception was never retrieved\nfuture: <Future finished exception=ValueError("
    (kept_filter,) = asyncio_logger.filters
    read = never + "'OUT_OF_RANGE: Error reading ... [tensorstore_spec=...]')>"
    assert not kept_filter.filter(record(read))
    assert kept_filter.filter(record(never + "'a bug of ours')>"))
    assert kept_filter.filter(record("Executing <Task ...> took 0.2 seconds"))
