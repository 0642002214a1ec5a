"""Checkpoints of the train state: asynchronous saves, verified restores, retention.

Layout (the rest of the run directory: jaxseg.workdir):
  <workdir>/checkpoints/<step>/state     the train-state pytree (orbax PyTree handler, tensorstore)
  <workdir>/checkpoints/<step>/metrics   JSON metrics used to rank checkpoints (if given)
  <workdir>/checkpoints/<step>/checksums JSON {array path: [dtype, sum, weighted sum]}, see below
  <workdir>/corrupt_checkpoints/<step>.<UTC time>   checkpoints that failed to restore, moved
                                         aside by `restore_latest_intact` (never deleted)

Checkpoints written before this layout also hold `<step>/extra` (a JSON dict with the step,
which the state holds too) and were saved through orbax's StandardCheckpointHandler, whose
files are the PyTree handler's; both restore as they are, `extra` is never read.

Crash safety comes from orbax: a step is written to `<step>.orbax-checkpoint-tmp` and renamed to
`<step>` only once complete, so a process killed mid-save leaves the previous complete step as
the latest one; leftover tmp directories are never listed as steps and are deleted by the next
`Checkpointer` before its first save. (On object stores without atomic rename orbax marks
completion with a commit file instead; the same guarantee holds.)

Bit rot: every save records, per state array, two 32-bit checksums of its raw bits (the plain
sum and a position-weighted sum, mod 2**32, computed on device so the save stays asynchronous)
and `restore` recomputes them on what it read. A truncated file, a deleted `_METADATA` or a
flipped byte makes `restore` raise `CorruptCheckpointError` naming the step, the file or array
and the cause. Checkpoints written before checksums existed restore unverified.
"""

import contextlib
import dataclasses
import datetime
import errno
import logging as std_logging
import math
import re
import shutil
import signal
import sys
import threading
import traceback
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from jax.experimental import multihost_utils
from orbax.checkpoint import checkpoint_managers

from jaxseg import workdir as workdir_lib

_STATE, _CHECKSUMS = "state", "checksums"
_MAX_LISTED = 10  # Differences listed per category in a tree-mismatch error.


class CorruptCheckpointError(RuntimeError):
    """A checkpoint that exists but cannot be restored as saved (truncated, rotten, incomplete).

    Attributes:
      step: the checkpoint's step.
      path: the file, array or directory at fault (as precise as the cause tells).
      cause: what went wrong, one line.
    """

    def __init__(self, step: int, path: str, cause: str):
        self.step, self.path, self.cause = step, path, cause
        super().__init__(f"checkpoint {step} is corrupt: {path}: {cause}")


class CheckpointMismatchError(ValueError):
    """A checkpoint whose arrays differ from the restore target's: an intact checkpoint of
    another model, optimiser or class count (the caller knows which config keys changed).

    Attributes:
      path: the checkpoint's directory.
      missing: "<array path> <shape>" in the target but not in the checkpoint.
      unexpected: "<array path> <shape>" in the checkpoint but not in the target.
      reshaped: "<array path>: checkpoint <shape> vs target <shape>".
    """

    def __init__(self, path: str, missing: list[str], unexpected: list[str], reshaped: list[str]):
        self.path = path
        self.missing, self.unexpected, self.reshaped = missing, unexpected, reshaped
        super().__init__(
            f"Checkpoint {path} does not match the restore target (a different model, optimizer "
            f"or config?):\n{self.arrays()}"
        )

    def arrays(self, limit: int = _MAX_LISTED) -> str:
        """The differing arrays, one indented line per kind, `limit` of each."""
        kinds = (
            ("in target but not in checkpoint", self.missing),
            ("in checkpoint but not in target", self.unexpected),
            ("shapes differ", self.reshaped),
        )
        return "\n".join(f"  {kind}: {_listing(items, limit)}" for kind, items in kinds if items)


class Checkpointer:
    """Asynchronous orbax checkpoints of the train state in `<workdir>/checkpoints`.

    Retention: the latest `max_to_keep` checkpoints plus the single best one by
    `metrics[best_metric]` (higher is better), even if it is older than those. Checkpoints saved
    without metrics never count as best, so they are kept only while among the latest
    `max_to_keep`. (orbax's `LatestN` OR `BestN(n=1)` preservation policies.)

    Multi-process: every process must call `save`/`restore` with the same step (they contain
    barriers). Each process writes its own shards of the state; `metrics` are written by
    process 0 only, so they must be identical on all processes.

    Every `save` call writes (the caller decides when); the state's own step counter is the
    input pipeline's position too, so nothing else needs saving.

    Usage:
      ckpt = Checkpointer(workdir, max_to_keep=3)
      if ckpt.latest_step() is not None:
          state = ckpt.restore(abstract_state_with_shardings)
      ...
      ckpt.save(step, state, metrics={"miou": 0.61})
      ckpt.close()  # waits for the last asynchronous save
    """

    def __init__(
        self,
        workdir: str | epath.PathLike,
        *,
        max_to_keep: int = 3,
        best_metric: str = "miou",
        read_only: bool = False,
    ):
        """Opens (creating unless `read_only`) `<workdir>/checkpoints`.

        Args:
          workdir: run directory: a local path, relative or absolute (made absolute here, as
            orbax requires), or any URL-style path etils.epath understands (gs://, untouched).
          max_to_keep: number of most recent checkpoints kept, >= 1.
          best_metric: key of the `metrics` dict that ranks checkpoints, higher is better.
          read_only: open for restore only (e.g. evaluation): never creates or deletes anything.
        """
        if max_to_keep < 1:
            raise ValueError(f"max_to_keep must be >= 1, got {max_to_keep}.")
        self._run = workdir_lib.RunDir(workdir)
        self.directory = self._run.checkpoints
        self.best_metric = best_metric

        def metric_of(metrics: Mapping[str, Any]) -> float:
            return float(metrics[best_metric])

        options = ocp.CheckpointManagerOptions(
            # read_only implies save_interval_steps=0; saying so avoids orbax's warning. Saves
            # are all forced: the train loop alone decides when to write.
            save_interval_steps=0 if read_only else 1,
            best_fn=metric_of,  # Makes orbax write the metrics and answer best_step().
            best_mode="max",
            preservation_policy=checkpoint_managers.AnyPreservationPolicy(
                [
                    checkpoint_managers.LatestN(n=max_to_keep),
                    checkpoint_managers.BestN(
                        get_metric_fn=metric_of,
                        reverse=False,  # Ascending sort, keep the last one: higher is better.
                        n=1,
                        keep_checkpoints_without_metrics=False,
                    ),
                ]
            ),
            cleanup_tmp_directories=not read_only,
            create=not read_only,
            read_only=read_only,
            enable_async_checkpointing=True,
        )
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=options,
            item_handlers={
                # The PyTree handler (what StandardCheckpointHandler wraps, same files) for its
                # partial restore: inference reads params without the optimiser state.
                _STATE: ocp.PyTreeCheckpointHandler(),
                _CHECKSUMS: ocp.JsonCheckpointHandler(),
            },
        )
        self._read_only = read_only

    def save(self, step: int, state: Any, metrics: Mapping[str, float] | None = None) -> bool:
        """Starts an asynchronous save of `state` as checkpoint `step`.

        Returns once the arrays are copied off the devices, so `state` may be donated to the
        next train step right away; the write to disk continues in the background (see
        `wait_until_finished`).

        Args:
          step: the training step this state has reached (the checkpoint's name).
          state: any pytree of jax.Arrays / numpy arrays (the TrainState).
          metrics: scalars for this state, e.g. {"miou": 0.61}; must then contain
            `best_metric`, finite. None = this checkpoint never counts as best.

        Returns:
          Whether a checkpoint was started: False if `step` already exists (never overwritten).
        """
        step = int(step)
        if step in self._manager.all_steps():
            logging.info("Checkpoint for step %d already exists in %s.", step, self.directory)
            return False
        if metrics is not None:
            metrics = self._checked_metrics(step, metrics)
        self._check_free_space(step, state)
        # Ctrl-C inside orbax's synchronous part would leave a save that can never finish;
        # deferred to just after it, the train loop's cleanup then waits for the write.
        with _sigint_deferred():
            checksums = array_checksums(state)
            return self._manager.save(
                step,
                args=ocp.args.Composite(
                    **{
                        _STATE: ocp.args.PyTreeSave(state),
                        _CHECKSUMS: ocp.args.JsonSave(checksums),
                    }
                ),
                metrics=metrics,
                force=True,
            )

    def _check_free_space(self, step: int, state: Any) -> None:
        """Refuses to start a save the local disk cannot hold (a full disk would otherwise
        surface later, in orbax's background thread, naming no path)."""
        if workdir_lib.is_remote(self.directory):
            return
        needed = sum(int(np.prod(x.shape)) * x.dtype.itemsize for x in jax.tree.leaves(state))
        free = shutil.disk_usage(self.directory).free
        if free < needed * 1.05 + 2**20:  # the arrays, plus metadata and some slack
            latest = self.latest_step()
            raise OSError(
                errno.ENOSPC,
                f"no room to save checkpoint {step} in {self.directory}: it needs about "
                f"{needed / 2**20:.1f} MiB and {free / 2**20:.1f} MiB are free. Free some space "
                "(or point --workdir elsewhere) and rerun the same command"
                + (f"; checkpoint {latest} is intact" if latest is not None else ""),
            )

    def _checked_metrics(self, step: int, metrics: Mapping[str, Any]) -> dict[str, float]:
        if self.best_metric not in metrics:
            raise ValueError(
                f"metrics for step {step} lack the ranking metric {self.best_metric!r} "
                f"(got keys {sorted(metrics)}); pass metrics=None to save without ranking."
            )
        checked = {}
        for key, value in metrics.items():
            try:
                checked[key] = float(np.asarray(value))
            except (TypeError, ValueError) as e:
                raise ValueError(f"metrics[{key!r}] for step {step} is not a scalar: {e}") from e
        if not math.isfinite(checked[self.best_metric]):
            # NaN would make the ranking (a sort) meaningless rather than just wrong.
            raise ValueError(
                f"metrics[{self.best_metric!r}] = {checked[self.best_metric]} for step {step} is "
                "not finite; pass metrics=None to save without ranking."
            )
        return checked

    def restore(
        self, abstract_state: Any, step: int | str | None = None, *, partial: bool = False
    ) -> Any:
        """Restores the state, each leaf read straight into its target sharding.

        Args:
          abstract_state: the target pytree, same structure as what was saved, whose leaves have
            `.shape`, `.dtype` and `.sharding` (e.g. `jax.ShapeDtypeStruct(shape, dtype,
            sharding=...)` built from `jax.eval_shape(init)`; see `sharding.with_shardings`).
            A leaf's dtype may differ from the saved one: values are cast.
          step: None or "latest" for the newest step, "best" for the best by `best_metric`,
            or an existing step number.
          partial: the target may leave out saved subtrees (None there, e.g. a TrainState
            without opt_state); only the target's arrays are read.

        Returns:
          The state, with the structure of `abstract_state`.

        Raises:
          CheckpointMismatchError if the checkpoint's arrays differ from the target's.
          CorruptCheckpointError if it cannot be read as saved.
        """
        quiet_abandoned_reads()  # Before the first read: the metadata's may fail too.
        self._manager.wait_until_finished()  # A save of the requested step may be in flight.
        step = self._resolve_step(step)
        step_dir = self.directory / str(step)
        self._check_target(abstract_state, step, partial=partial)
        has_checksums = (step_dir / _CHECKSUMS).exists()
        # orbax's partial restore leaves out subtrees missing from a dict target, not None ones.
        target = _without_none(abstract_state) if partial else abstract_state
        items = {
            _STATE: ocp.args.PyTreeRestore(
                target,
                restore_args=ocp.checkpoint_utils.construct_restore_args(target),
                partial_restore=partial,
            )
        }
        if has_checksums:
            items[_CHECKSUMS] = ocp.args.JsonRestore()
        try:
            restored = self._manager.restore(step, args=ocp.args.Composite(**items))
        except Exception as e:  # orbax / tensorstore raise many types for damaged files.
            raise CorruptCheckpointError(step, _culprit(e, step_dir), _one_line(e)) from e
        if has_checksums:
            _verify_checksums(restored[_STATE], restored[_CHECKSUMS], step, step_dir / _STATE)
        else:
            logging.info("Checkpoint %d has no checksums (older jaxseg): not verified.", step)
        logging.info("Restored checkpoint %d from %s.", step, self.directory)
        state = restored[_STATE]
        if partial:  # The dict orbax filled in, back into the target's structure.
            named = _flatten_named(state)
            leaves = [named[path] for path in _flatten_named(abstract_state)]
            state = jax.tree.unflatten(jax.tree.structure(abstract_state), leaves)
        return state

    def restore_latest_intact(self, abstract_state: Any) -> Any | None:
        """Restores the newest checkpoint that is intact; None if there are no checkpoints.

        Each newer checkpoint that raises `CorruptCheckpointError` is reported (step, file,
        cause) and moved aside to `<workdir>/corrupt_checkpoints/` (never deleted), then the
        previous one is tried. Raises `CorruptCheckpointError` if every checkpoint is corrupt
        (all of them then lie in corrupt_checkpoints/, so a rerun starts from scratch).
        """
        last_error = None
        for step in reversed(self.all_steps()):
            try:
                return self.restore(abstract_state, step)
            except CorruptCheckpointError as e:
                last_error = e
                moved = self._move_aside(step)
                logging.error(
                    "Checkpoint %d is corrupt and was moved to %s: %s: %s. Falling back to the "
                    "previous checkpoint.",
                    step,
                    moved,
                    e.path,
                    e.cause,
                )
        if last_error is not None:
            raise CorruptCheckpointError(
                last_error.step,
                last_error.path,
                f"{last_error.cause} (every checkpoint failed to restore; all were moved to "
                f"{self._run.corrupt_checkpoints}; rerun to start from "
                "scratch)",
            )
        return None

    def _move_aside(self, step: int) -> epath.Path:
        """Renames checkpoint `step` into <workdir>/corrupt_checkpoints/ (process 0)."""
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%d-%H%M%S")
        target = self._run.corrupt_checkpoints / f"{step}.{stamp}"
        if self._read_only:
            return self.directory / str(step)  # eval.py never moves anything.
        if jax.process_index() == 0:
            target.parent.mkdir(parents=True, exist_ok=True)
            (self.directory / str(step)).rename(target)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices(f"jaxseg: checkpoint {step} moved aside")
        self._manager.reload()  # Forget the moved step.
        return target

    def _resolve_step(self, step: int | str | None) -> int:
        available = self.all_steps()
        if not available:
            raise FileNotFoundError(f"No checkpoints found in {self.directory}.")
        if step is None or step == "latest":
            return available[-1]
        if step == "best":
            best = self.best_step()
            if best is None:
                raise FileNotFoundError(
                    f"No checkpoint in {self.directory} was saved with metric "
                    f"{self.best_metric!r}; available steps: {available}."
                )
            return best
        if isinstance(step, str) or int(step) not in available:
            raise FileNotFoundError(
                f"No checkpoint for step {step!r} in {self.directory}; available steps: "
                f"{available} (or 'latest', 'best')."
            )
        return int(step)

    def _check_target(self, abstract_state: Any, step: int, *, partial: bool = False) -> None:
        """Raises if `abstract_state` lacks shardings or differs from checkpoint `step`'s tree
        (with `partial`, saved arrays the target leaves out are not a difference)."""
        target = _flatten_named(abstract_state)
        unsharded = [p for p, leaf in target.items() if getattr(leaf, "sharding", None) is None]
        if unsharded:
            raise ValueError(
                "Every restore target leaf needs a sharding (jax.ShapeDtypeStruct(..., "
                f"sharding=...)); missing for: {_listing(unsharded)}."
            )
        step_dir = self.directory / str(step)
        try:
            saved_metadata = self._manager.item_metadata(step)[_STATE]
        except Exception as e:
            raise CorruptCheckpointError(step, _culprit(e, step_dir), _one_line(e)) from e
        saved = _flatten_named(getattr(saved_metadata, "tree", saved_metadata))
        if not saved:
            # A deleted or emptied state/_METADATA reads as an empty tree, not as an error.
            raise CorruptCheckpointError(
                step, str(step_dir / _STATE / "_METADATA"), "missing or empty array metadata"
            )
        missing = [f"{p} {tuple(target[p].shape)}" for p in target if p not in saved]
        unexpected = (
            [] if partial else [f"{p} {tuple(saved[p].shape)}" for p in saved if p not in target]
        )
        reshaped = [
            f"{p}: checkpoint {tuple(saved[p].shape)} vs target {tuple(target[p].shape)}"
            for p in target
            if p in saved and tuple(saved[p].shape) != tuple(target[p].shape)
        ]
        if missing or unexpected or reshaped:
            raise CheckpointMismatchError(str(step_dir), missing, unexpected, reshaped)

    def latest_step(self) -> int | None:
        """The newest complete (or in-flight) checkpoint step, None if there is none."""
        return self._manager.latest_step()

    def best_step(self) -> int | None:
        """The step with the highest `best_metric`, None if no checkpoint has metrics."""
        return self._manager.best_step()

    def all_steps(self) -> list[int]:
        """All kept checkpoint steps, ascending."""
        return sorted(self._manager.all_steps())

    def wait_until_finished(self) -> None:
        """Blocks until the pending asynchronous save (and old-step deletion) is on disk.

        Raises:
          OSError naming the checkpoint directory if the background write failed.
        """
        with self._naming_the_directory():
            self._manager.wait_until_finished()

    def close(self) -> None:
        """Waits for pending saves and releases orbax's resources (raises like
        `wait_until_finished`)."""
        with self._naming_the_directory():
            self._manager.close()

    @contextlib.contextmanager
    def _naming_the_directory(self):
        try:
            yield
        except OSError as e:
            raise OSError(
                e.errno, f"writing checkpoints in {self.directory} failed: {e.strerror or e}"
            ) from e

    def __enter__(self) -> "Checkpointer":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


class _sigint_deferred:
    """Holds back SIGINT (KeyboardInterrupt) for the duration, raising it on exit.

    Only where Python's own handler is installed and in the main thread; elsewhere a no-op.
    """

    def __enter__(self):
        self._received = False
        self._active = (
            threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGINT) is signal.default_int_handler
        )
        if self._active:
            signal.signal(signal.SIGINT, self._on_sigint)
        return self

    def _on_sigint(self, signum, frame):
        del signum, frame
        self._received = True

    def __exit__(self, exc_type, *rest):
        if self._active:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            if self._received and exc_type is None:
                raise KeyboardInterrupt


def _leaf_checksum(x: jax.Array) -> jax.Array:
    """[sum, position-weighted sum] of the raw bits of `x` as uint32, wrapping mod 2**32.

    Integer sums are exact and associative, so the result does not depend on the sharding or
    the reduction order; the weighted sum also catches swapped or shifted values.
    """
    if x.dtype == jnp.bool_:
        bits = x.astype(jnp.uint32)
    else:
        width = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint32}[x.dtype.itemsize]
        bits = jax.lax.bitcast_convert_type(x, width)
        if bits.ndim > x.ndim:  # 8-byte values split into two uint32 words.
            bits = bits.reshape(*x.shape, -1)
        bits = bits.astype(jnp.uint32)
    flat = bits.reshape(-1)
    weights = jnp.arange(flat.size, dtype=jnp.uint32) * jnp.uint32(2654435761) + jnp.uint32(1)
    return jnp.stack([jnp.sum(flat, dtype=jnp.uint32), jnp.sum(flat * weights, dtype=jnp.uint32)])


@jax.jit
def _tree_checksums(tree: Any) -> Any:
    return jax.tree.map(lambda x: _leaf_checksum(jnp.asarray(x)), tree)


def array_checksums(state: Any) -> dict[str, list]:
    """{array path: [dtype name, sum, weighted sum]} for every leaf of `state`."""
    sums = jax.device_get(_tree_checksums(state))
    named = _flatten_named(state)
    return {
        path: [str(jnp.asarray(leaf).dtype), int(c[0]), int(c[1])]
        for (path, leaf), c in zip(named.items(), _flatten_named(sums).values(), strict=True)
    }


def _verify_checksums(state: Any, recorded: dict, step: int, where: epath.Path) -> None:
    """Raises CorruptCheckpointError naming the first array whose checksums differ."""
    actual = array_checksums(state)
    for path, (dtype, *sums) in recorded.items():
        if path not in actual or actual[path][0] != dtype:
            continue  # Cast on restore (another dtype) or not in the target: nothing to compare.
        if actual[path][1:] != sums:
            raise CorruptCheckpointError(
                step,
                f"{where} array {path}",
                f"checksum mismatch (saved {sums}, read {actual[path][1:]}): the file was "
                "changed or damaged after the save",
            )


def _culprit(error: BaseException, step_dir: epath.Path) -> str:
    """The checkpoint file an orbax/tensorstore error names, else the step directory."""
    text = str(error)
    for match in re.findall(r"[\w./-]*" + re.escape(str(step_dir)) + r"[\w./-]*", text):
        return match.rstrip(".:")
    return str(step_dir)


# A restore of a damaged checkpoint: orbax raises at the first read that fails and closes its
# event loop while tensorstore is still reading the checkpoint's other arrays (each array's
# metadata, then its data). Those reads end later, and each one's error is printed, as
# tracebacks through `sys.unraisablehook` (posting to the closed loop, or an orbax read
# coroutine finalized unfinished) or as asyncio's "Future exception was never retrieved" log
# lines. Resuming train.py from a smoke run whose data files were all cut in half printed 226 to
# 670 lines of them in 10 of 18 tries, around the one line that names the damage (none in 12
# tries with this). `quiet_abandoned_reads` drops exactly those and logs each at DEBUG.


def is_abandoned_read(unraisable: Any) -> bool:
    """Whether an unraisable exception (`sys.unraisablehook`'s argument) is a read that orbax
    abandoned ending: a RuntimeError raised by asyncio's `call_soon_threadsafe` on the closed
    loop (`_check_closed`), or one of orbax's read coroutines finalized unfinished (the
    GeneratorExit that orbax re-raises as "Encountered error while reading ...")."""
    error = unraisable.exc_value
    frames = [f.name for f in traceback.extract_tb(unraisable.exc_traceback)]
    if isinstance(error, RuntimeError) and frames[-2:] == ["call_soon_threadsafe", "_check_closed"]:
        return True
    code = getattr(unraisable.object, "cr_code", None)  # a coroutine object
    cause = (error.__cause__ or error.__context__) if error is not None else None
    return code is not None and "orbax" in code.co_filename and isinstance(cause, GeneratorExit)


class _AbandonedReadFilter(std_logging.Filter):
    """Drops asyncio's "Future/Task exception was never retrieved" about a tensorstore read."""

    def filter(self, record: std_logging.LogRecord) -> bool:
        message = record.getMessage()
        if not message.startswith(("Future exception was never", "Task exception was never")):
            return True
        if "tensorstore" not in message.lower():
            return True
        logging.debug("A read abandoned by a failed restore: %s", message.splitlines()[-1][:300])
        return False


def quiet_abandoned_reads() -> None:
    """Keeps the reads orbax abandons in a failed restore off the console (the comment above);
    installed once per process, before the first restore. Every other unraisable exception goes
    to the hook this one wraps, every other asyncio record is logged."""
    global _quieted
    with _install_lock:
        if _quieted:
            return
        previous = sys.unraisablehook

        def hook(unraisable):
            if is_abandoned_read(unraisable):
                logging.debug("A read abandoned by a failed restore: %s", unraisable.exc_value)
            else:
                previous(unraisable)

        sys.unraisablehook = hook
        std_logging.getLogger("asyncio").addFilter(_AbandonedReadFilter())
        _quieted = True


_install_lock = threading.Lock()
_quieted = False


def _one_line(error: BaseException) -> str:
    """An exception's message cut to its first line and 300 characters, without orbax's
    " See full TensorStore details: <bound method ...spec of TensorStore({" tail (it prints the
    method, not the spec, and the spec's lines that follow say nothing of the damage)."""
    text = (str(error).strip().splitlines() or [type(error).__name__])[0]
    text = text.split(" See full TensorStore details")[0]
    return f"{type(error).__name__}: {text[:300]}"


def _key_name(key: Any) -> str:
    """Name of one jax key-path entry, spelled as orbax spells it in checkpoint metadata."""
    for attr in ("key", "name", "idx"):  # DictKey / FlattenedIndexKey, GetAttrKey, SequenceKey.
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def _flatten_named(tree: Any) -> dict[str, Any]:
    """{"params/conv1/kernel": leaf, ...} for a pytree; None subtrees (empty states) vanish."""
    leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {"/".join(_key_name(k) for k in path): leaf for path, leaf in leaves}


def _without_none(tree: Any) -> Any:
    """`tree` with its dataclass and dict levels as dicts, None-valued entries dropped."""
    if dataclasses.is_dataclass(tree):
        tree = {f.name: getattr(tree, f.name) for f in dataclasses.fields(tree)}
    if isinstance(tree, Mapping):
        return {k: _without_none(v) for k, v in tree.items() if v is not None}
    return tree


def _listing(items: list[str], limit: int = _MAX_LISTED) -> str:
    shown = ", ".join(items[:limit])
    if len(items) > limit:
        shown += f", ... and {len(items) - limit} more"
    return shown
