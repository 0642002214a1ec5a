"""The run directory (workdir): its layout, its config.json, path resolution, the train lock.

Layout of a run:
  <workdir>/config.json             the resolved config (`write_config`; older differing ones
                                    are kept as config.<UTC timestamp>.json)
  <workdir>/train.lock              held by the one training process writing the run
  <workdir>/train.log               every log line, the libraries' too (jaxseg.logs)
  <workdir>/checkpoints/<step>/     orbax checkpoints (jaxseg.checkpointing)
  <workdir>/corrupt_checkpoints/    checkpoints that failed to restore, moved aside, never deleted
  <workdir>/metrics.jsonl           train/eval scalars (jaxseg.metric_writers), tensorboard/ too
  <workdir>/run_info.json           provenance of each invocation (jaxseg.run_info)
  <workdir>/eval/                   report.json, per_class.md and figures (jaxseg.evaluation)

orbax refuses relative checkpoint paths, and a relative path means something else once anything
changes the working directory. `resolve` is applied where a workdir enters a component that
writes or reads it by path (the Checkpointer, through which train, eval, predict and
`init_from` all pass), so every caller may hand in what the user typed.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import socket
import time
from typing import Any

import jax
import ml_collections
from etils import epath

CONFIG_FILENAME = "config.json"
TRAIN_LOG_FILENAME = "train.log"
CHECKPOINT_DIRNAME = "checkpoints"
CORRUPT_DIRNAME = "corrupt_checkpoints"


def log_filename(process_index: int) -> str:
    """The library log of one training process (jaxseg.logs): train.log, train.process<i>.log."""
    if process_index == 0:
        return TRAIN_LOG_FILENAME
    return TRAIN_LOG_FILENAME.replace(".log", f".process{process_index}.log")


def is_remote(path: str | os.PathLike) -> bool:
    """Whether `path` names an object store or other URL-style location (gs://, s3://, ...)."""
    return "://" in os.fspath(path)


def resolve(path: str | os.PathLike) -> epath.Path:
    """An absolute local path, or a URL-style path untouched.

    A relative path is taken against the current directory, where every other file of the run
    (config.json, metrics.jsonl, eval/) is written too. `~` is not expanded (no shell expands it
    in `--workdir=~/x` either), so all of the run's files stay in one place.
    """
    text = os.fspath(path)
    if is_remote(text):
        return epath.Path(text)
    return epath.Path(os.path.abspath(text))


LOCK_FILENAME = "train.lock"


class WorkdirLockedError(RuntimeError):
    """Another live training run holds the workdir."""


class TrainLock:
    """An exclusive lock on a workdir for the lifetime of one training run.

    `<workdir>/train.lock` holds {"pid", "host", "started"} of the holder. It is created with
    O_CREAT | O_EXCL (atomic on local and NFS file systems), so of two runs starting together
    exactly one wins; the other gets a `WorkdirLockedError` naming the holder. A lock left by a
    process that died without releasing it (SIGKILL, power loss) is stale: on the same host a
    pid that no longer exists proves it, and the lock is taken over (logged). On another host
    liveness cannot be checked, so the error says which file to delete if that run is gone.
    Readers (eval.py, predict.py, export) never take the lock.

    Object-store workdirs (gs://...) have no exclusive create; they are not locked (logged).

    Usage:
      with TrainLock(workdir):
          ...  # train
    """

    def __init__(self, workdir: str | os.PathLike):
        self._path = None if is_remote(workdir) else os.path.join(resolve(workdir), LOCK_FILENAME)
        self._held = False

    @property
    def path(self) -> str | None:
        return self._path

    def acquire(self) -> None:
        if self._path is None:
            logging.warning("Workdir is remote: not locked against a second training run.")
            return
        os.makedirs(os.path.dirname(self._path), exist_ok=True)
        me = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.time(),
            "boot_ticks": _process_start(os.getpid()),
        }
        for _ in range(3):  # Only a stale lock's removal racing another starter repeats this.
            try:
                fd = os.open(self._path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._read_holder()
                if holder is not None and not self._is_stale(holder, me["host"]):
                    raise WorkdirLockedError(
                        f"{os.path.dirname(self._path)} is in use by another training run "
                        f"(pid {holder.get('pid')} on host {holder.get('host')}, since "
                        f"{_when(holder.get('started'))}; lock file {self._path}). Wait for it, "
                        "use another --workdir, or delete the lock file if that run is gone. "
                        "eval.py and predict.py may read the workdir meanwhile."
                    ) from None
                logging.warning("Removing stale workdir lock %s (holder %s).", self._path, holder)
                try:
                    os.remove(self._path)
                except FileNotFoundError:
                    pass
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self._held = True
            return
        raise WorkdirLockedError(f"could not take the workdir lock {self._path}")

    def _read_holder(self) -> dict | None:
        try:
            with open(self._path) as f:
                return json.load(f)
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            # Written by a holder that died between create and write, or garbage: stale.
            return {}

    @staticmethod
    def _is_stale(holder: dict, host: str) -> bool:
        if not holder:
            return True
        if holder.get("host") != host:
            return False
        try:
            pid = int(holder["pid"])
        except (KeyError, TypeError, ValueError):
            return True
        recorded = holder.get("boot_ticks")
        if pid == os.getpid():
            # Another TrainLock of this very process holds it, unless the pid was reused.
            return recorded is None or recorded != _process_start(pid)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            pass  # Alive, owned by another user.
        # A live pid may still be a reused one (e.g. a restarted container): compare start times.
        return recorded is not None and _process_start(pid) not in (None, recorded)

    def release(self) -> None:
        if self._held:
            try:
                os.remove(self._path)
            except FileNotFoundError:
                pass
            self._held = False

    def __enter__(self) -> TrainLock:
        self.acquire()
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()


def _process_start(pid: int) -> int | None:
    """Start time of process `pid` in clock ticks since boot (Linux /proc), None elsewhere."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            # Field 22; the command name (field 2) may hold spaces, so split after its ")".
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def _when(timestamp) -> str:
    try:
        return datetime.datetime.fromtimestamp(float(timestamp)).isoformat(timespec="seconds")
    except (TypeError, ValueError, OverflowError):
        return "an unknown time"


def write_config(workdir: str | os.PathLike, config: ml_collections.ConfigDict) -> epath.Path:
    """Writes the resolved `config` as `<workdir>/config.json` (process 0 only).

    A resumed run overwrites config.json; if the existing one differs (a changed flag on
    resume), it is first kept as `config.<UTC timestamp>.json` so the run's history stays
    readable. Values that JSON cannot hold (e.g. tuples) are stored in their JSON form.

    Returns:
      The path of config.json.
    """
    workdir = epath.Path(workdir)
    path = workdir / CONFIG_FILENAME
    if jax.process_index() != 0:
        return path
    text = config.to_json_best_effort(indent=2, sort_keys=True) + "\n"
    workdir.mkdir(parents=True, exist_ok=True)
    if path.exists() and _read_json(path) != json.loads(text):
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%d-%H%M%S")
        backup = workdir / f"config.{stamp}.json"
        suffix = 1
        while backup.exists():  # Two changes within one second.
            backup = workdir / f"config.{stamp}-{suffix}.json"
            suffix += 1
        path.rename(backup)
        logging.warning("Config changed since the last run; previous one kept as %s.", backup)
    # Write then rename, so a crash never leaves a truncated config.json behind.
    tmp = workdir / (CONFIG_FILENAME + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return path


def read_config(workdir: str | os.PathLike) -> ml_collections.ConfigDict:
    """Reads `<workdir>/config.json` written by `write_config` (tuples come back as lists)."""
    path = epath.Path(workdir) / CONFIG_FILENAME
    if not path.exists():
        raise FileNotFoundError(f"No {CONFIG_FILENAME} in {workdir}: is it a jaxseg workdir?")
    return ml_collections.ConfigDict(_read_json(path))


def _read_json(path: epath.Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from e
