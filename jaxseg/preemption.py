"""Preemption: SIGTERM (or jax's preemption service) turned into one agreed stop step.

Schedulers announce preemption with SIGTERM and a grace period. The train loop asks
`PreemptionWatcher.should_stop(step)` after every step; a True answer makes it checkpoint and
exit with status 75 (see `train_lib.EXIT_STOPPED_EARLY`), so a requeued job resumes there.
Outside the loop (the first data-set build, compiling, the final evaluation) `sigterm_raises`
turns SIGTERM into an `Interrupted` exception, so the same status comes after a clean unwind.
"""

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils


class PreemptionWatcher:
    """Context manager that turns SIGTERM (preemption notice) into a clean stop decision.

    Usage, called at every step by every process:
      with PreemptionWatcher() as watcher:
          for step in range(start, total_steps):
              ...
              if watcher.should_stop(step):
                  ckpt.save(step + 1, state)
                  break

    Single process: a SIGTERM handler sets a flag; no collective is ever run. The previous
    handler is put back on exit.

    Multiple processes: only some processes may receive SIGTERM, yet all must stop at the same
    step or the next collective hangs. If jax's preemption service is on (the default after
    `jax.distributed.initialize()`), jax owns SIGTERM and `should_stop` asks it for the agreed
    sync step through orbax (`ocp.multihost.reached_preemption`, what
    `CheckpointManager.reached_preemption` calls: a disabled service or a Pathways backend
    reads as "not preempted" instead of raising); no Python handler is installed because it
    would replace jax's. Otherwise the local flags are all-gathered every `sync_every_steps`
    steps and any flag stops everyone.
    """

    def __init__(self, *, sync_every_steps: int = 1):
        if sync_every_steps < 1:
            raise ValueError(f"sync_every_steps must be >= 1, got {sync_every_steps}.")
        self._sync_every_steps = sync_every_steps
        self._received = False
        self._installed = False
        self._previous_handler: Any = None
        self._use_jax_service = False

    @property
    def signal_received(self) -> bool:
        """Whether this process has received SIGTERM since entering."""
        return self._received

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        del frame
        self._received = True
        logging.warning("Received signal %d: will checkpoint and stop at the next step.", signum)

    def __enter__(self) -> "PreemptionWatcher":
        self._received = False
        self._use_jax_service = jax.process_count() > 1 and jax.config.jax_enable_preemption_service
        if not self._use_jax_service:
            if threading.current_thread() is not threading.main_thread():
                raise RuntimeError(
                    "PreemptionWatcher must be entered in the main thread: Python only allows "
                    "signal handlers to be installed there."
                )
            self._previous_handler = signal.signal(signal.SIGTERM, self._on_sigterm)
            self._installed = True
        return self

    def __exit__(self, *exc_info) -> None:
        if self._installed:
            # None means the previous handler was installed outside Python and cannot be
            # reinstated from here; the default action is the closest safe choice.
            previous = signal.SIG_DFL if self._previous_handler is None else self._previous_handler
            signal.signal(signal.SIGTERM, previous)
            self._installed = False

    def should_stop(self, step: int) -> bool:
        """Whether training should checkpoint and stop after `step`; same answer on all processes.

        In a multi-process job every process must call this at every step.
        """
        if self._use_jax_service:
            return bool(ocp.multihost.reached_preemption(int(step)))
        if jax.process_count() == 1:
            return self._received
        if step % self._sync_every_steps:
            return False
        flags = multihost_utils.process_allgather(np.int32(self._received))
        return bool(np.any(flags))


class Interrupted(Exception):
    """SIGTERM arrived outside the training loop (building the data set, compiling, the final
    evaluation): the work in progress was abandoned through the normal error path, so temporary
    files were removed (tfds deletes its `incomplete.*` build directory) and the last checkpoint
    is intact. train.py exits 75: rerunning the same command resumes."""


@contextlib.contextmanager
def sigterm_raises(what: str = "outside the training loop") -> Iterator[None]:
    """Within the block, SIGTERM raises `Interrupted` in the main thread instead of ending the
    process at once (status 143, no cleanup). `PreemptionWatcher`, entered inside it, takes the
    signal over for the training loop and hands it back. A no-op outside the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        del frame
        raise Interrupted(f"received signal {signum} {what}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)
