"""The run directory (workdir): every path in it, every reader of it, the train lock.

Layout of a run (`RunDir` names each of these; nothing else builds their paths):
  <workdir>/config.json             the resolved config (`RunDir.write_config`; older differing
                                    ones are kept as config.<UTC timestamp>.json)
  <workdir>/train.lock              held by the one training process writing the run (local only)
  <workdir>/train.log               every log line, the libraries' too (jaxseg.logs; local only)
  <workdir>/checkpoints/<step>/     orbax checkpoints (jaxseg.checkpointing)
  <workdir>/corrupt_checkpoints/    checkpoints that failed to restore, moved aside, never deleted
  <workdir>/metrics.jsonl           train/eval scalars (jaxseg.metric_writers; `read_metrics`)
  <workdir>/tensorboard/<split>/    the same scalars as TensorBoard event files
  <workdir>/run_info.json           provenance of each invocation (jaxseg.run_info)
  <workdir>/eval/                   report.json, per_class.md and figures (jaxseg.evaluation)

Every file goes through `etils.epath`, so a `gs://` (or any URL epath serves: s3://, az://)
workdir holds all of it, not only the checkpoints. Two exceptions, both local-only by design: the
train lock needs an exclusive create, which object stores do not have, and train.log is a
`logging.FileHandler`, which appends to an open local file (`TrainLock`, `RunDir.log_file`).

orbax refuses relative checkpoint paths, and a relative path means something else once anything
changes the working directory. `resolve` is applied where a workdir enters a component that
writes or reads it by path (`RunDir`, the Checkpointer, through which train, eval, predict and
`init_from` all pass), so every caller may hand in what the user typed.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import os
import socket
import time
from typing import Any

import ml_collections
from etils import epath

CONFIG_FILENAME = "config.json"
TRAIN_LOG_FILENAME = "train.log"
CHECKPOINT_DIRNAME = "checkpoints"
CORRUPT_DIRNAME = "corrupt_checkpoints"
METRICS_FILENAME = "metrics.jsonl"
TENSORBOARD_DIRNAME = "tensorboard"
EVAL_DIRNAME = "eval"
REPORT_FILENAME = "report.json"
RUN_INFO_FILENAME = "run_info.json"


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
        run = RunDir(workdir)
        self._path = None if run.is_remote else os.fspath(run.lock_file)
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
    """`RunDir(workdir).write_config(config)`."""
    return RunDir(workdir).write_config(config)


def read_config(workdir: str | os.PathLike) -> ml_collections.ConfigDict:
    """`RunDir(workdir).read_config()`."""
    return RunDir(workdir).read_config()


class RunDir:
    """One run directory: the path of each of its files and the one reader of each.

    `path` is `resolve(workdir)`: absolute, or a URL (gs://...) untouched. Paths are
    `epath.Path`s; open them with their own `.open()` / `.read_text()`, never `open()`.

    Usage:
      run = RunDir("runs/default")
      records = run.read_metrics()      # [{"step": 100, "split": "train", "loss": ...}, ...]
      report = run.read_report()        # eval/report.json, or None before the final eval
    """

    def __init__(self, workdir: str | os.PathLike):
        self.path = resolve(workdir)

    def __repr__(self) -> str:
        return f"RunDir({os.fspath(self.path)!r})"

    @property
    def is_remote(self) -> bool:
        """Whether the run lives on an object store (gs://...): no append, no exclusive create."""
        return is_remote(self.path)

    def exists(self) -> bool:
        return self.path.exists()

    @property
    def config_json(self) -> epath.Path:
        return self.path / CONFIG_FILENAME

    @property
    def checkpoints(self) -> epath.Path:
        return self.path / CHECKPOINT_DIRNAME

    @property
    def corrupt_checkpoints(self) -> epath.Path:
        return self.path / CORRUPT_DIRNAME

    @property
    def metrics_jsonl(self) -> epath.Path:
        return self.path / METRICS_FILENAME

    @property
    def tensorboard(self) -> epath.Path:
        """The TensorBoard log dir: one folder of event files per split ("train", "eval")."""
        return self.path / TENSORBOARD_DIRNAME

    @property
    def eval_dir(self) -> epath.Path:
        """report.json, per_class.md and the figures (confusion_matrix.png, ...)."""
        return self.path / EVAL_DIRNAME

    @property
    def report_json(self) -> epath.Path:
        return self.eval_dir / REPORT_FILENAME

    @property
    def run_info_json(self) -> epath.Path:
        return self.path / RUN_INFO_FILENAME

    @property
    def lock_file(self) -> epath.Path:
        return self.path / LOCK_FILENAME

    def log_file(self, process_index: int) -> epath.Path | None:
        """The library log of one process (jaxseg.logs), None for a remote run: a
        `logging.FileHandler` keeps a local file open for appending, which object stores lack."""
        if self.is_remote:
            return None
        return self.path / log_filename(process_index)

    def write_config(self, config: ml_collections.ConfigDict) -> epath.Path:
        """Writes the resolved `config` as config.json (process 0 only); returns its path.

        A resumed run overwrites config.json; if the existing one differs (a changed flag on
        resume), it is first kept as `config.<UTC timestamp>.json` so the run's history stays
        readable. Values that JSON cannot hold (e.g. tuples) are stored in their JSON form.
        """
        import jax  # Not at the top: the run's readers (sweep reports) need no jax.

        path = self.config_json
        if jax.process_index() != 0:
            return path
        text = config.to_json_best_effort(indent=2, sort_keys=True) + "\n"
        self.path.mkdir(parents=True, exist_ok=True)
        changes = config_changes(read_json(path), json.loads(text)) if path.exists() else []
        if changes:
            stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%d-%H%M%S")
            backup = self.path / f"config.{stamp}.json"
            suffix = 1
            while backup.exists():  # Two changes within one second.
                backup = self.path / f"config.{stamp}-{suffix}.json"
                suffix += 1
            path.rename(backup)
            logging.warning(
                "Config changed since the last run (%s); previous one kept as %s.",
                describe_changes(changes, limit=5),
                backup,
            )
        write_text(path, text)
        return path

    def read_config(self) -> ml_collections.ConfigDict:
        """config.json as written by `write_config`, read through the command line's typed
        validation (`config_checks.read_run_config`: each value against configs/base.py's field
        type, tuples back as tuples, then the checks eval, predict and export need); a bad
        value raises a ValueError naming its `config.<key>` and this file."""
        if not self.config_json.exists():
            raise FileNotFoundError(f"No {CONFIG_FILENAME} in {self.path}: is it a jaxseg workdir?")
        from jaxseg import config_checks  # Not at the top: it imports jax (see write_config).

        return config_checks.read_run_config(read_json(self.config_json), str(self.config_json))

    def read_metrics(self, *, missing_ok: bool = False) -> list[dict]:
        """metrics.jsonl's records in file order, one dict per line.

        A torn last line (a run killed mid-write) is skipped; any other line that is not JSON
        raises an error naming the file and line. A missing file raises FileNotFoundError, or
        gives [] with `missing_ok`.
        """
        path = self.metrics_jsonl
        if not path.exists():
            if missing_ok:
                return []
            raise FileNotFoundError(f"no metrics file {path}: train first (train.py)")
        lines = path.read_text().splitlines()
        records = []
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                if number == len(lines):
                    logging.warning("%s:%d is torn (a killed write); skipped.", path, number)
                    continue
                raise ValueError(f"{path}:{number} is not valid JSON: {e}") from e
        return records

    def latest_logged_step(self) -> int:
        """The step of metrics.jsonl's last complete record (0 if none); reads its tail only."""
        try:
            with self.metrics_jsonl.open("rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 4096))
                lines = f.read().decode(errors="replace").splitlines()
        except FileNotFoundError:
            return 0
        for line in reversed(lines):
            try:
                return int(json.loads(line)["step"])
            except (ValueError, KeyError, TypeError):
                continue  # A torn last line, or the cut-off first one of the tail.
        return 0

    def read_report(self) -> dict | None:
        """eval/report.json (written by the final eval and by eval.py), None if absent."""
        return read_json(self.report_json) if self.report_json.exists() else None

    def read_run_info(self) -> dict | None:
        """run_info.json (jaxseg.run_info), None if absent."""
        return read_json(self.run_info_json) if self.run_info_json.exists() else None


def write_text(path: epath.Path, text: str) -> None:
    """Writes `text` to `path` so that no reader ever sees a half-written file.

    Locally: write a sibling .tmp, then rename over `path`. On an object store a plain write
    is already atomic per object (and a rename is a copy and a delete), so it is written in place.
    """
    path = epath.Path(path)
    if is_remote(path):
        path.write_text(text)
        return
    tmp = path.parent / (path.name + ".tmp")
    try:
        tmp.write_text(text)
        tmp.replace(path)
    finally:  # A failed write (a full disk) leaves no temporary file behind.
        if tmp.exists():
            tmp.unlink()


def write_json(path: epath.Path, obj: Any, **dump_kwargs) -> None:
    """`obj` as JSON at `path`, atomically (`write_text`)."""
    write_text(path, json.dumps(obj, **dump_kwargs))


def read_json(path: epath.Path) -> Any:
    """The JSON at `path`; an invalid file raises an error naming it."""
    try:
        return json.loads(epath.Path(path).read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from e


class _Absent:
    """A key one of two configs does not have (`config_changes`)."""

    def __repr__(self) -> str:
        return "(absent)"


ABSENT = _Absent()


@dataclasses.dataclass(frozen=True)
class ConfigChange:
    """One field that differs between two configs, values in their JSON form (config.json's).

    Attributes:
      key: dotted, without "config." ("model.base_width").
      old, new: the two values (tuples as lists), or ABSENT where a config lacks the key.
    """

    key: str
    old: Any
    new: Any

    def __str__(self) -> str:
        show = lambda v: repr(v) if v is ABSENT else json.dumps(v)
        return f"config.{self.key}: {show(self.old)} -> {show(self.new)}"


def config_changes(old: Any, new: Any) -> list[ConfigChange]:
    """The fields that differ between two configs, by dotted key, sorted: changed, added
    (old ABSENT) and removed (new ABSENT). Each config is a ConfigDict or a dict as config.json
    holds it; both are compared in config.json's form, so a tuple equals its list."""
    flat_old, flat_new = _flat_json(old), _flat_json(new)
    keys = sorted(flat_old.keys() | flat_new.keys())
    pairs = [(k, flat_old.get(k, ABSENT), flat_new.get(k, ABSENT)) for k in keys]
    return [ConfigChange(k, a, b) for k, a, b in pairs if a is ABSENT or b is ABSENT or a != b]


def describe_changes(changes: list[ConfigChange], limit: int | None = None) -> str:
    """`changes` on one line, "config.a: 1 -> 2, ..." (the first `limit`, then a count)."""
    shown = ", ".join(str(c) for c in changes[:limit])
    if limit is not None and len(changes) > limit:
        shown += f", ... and {len(changes) - limit} more"
    return shown


def _flat_json(config: Any) -> dict[str, Any]:
    if isinstance(config, ml_collections.ConfigDict):
        config = json.loads(config.to_json_best_effort())
    flat = {}

    def walk(node, prefix):
        for key, value in node.items():
            if isinstance(value, dict) and value:  # an empty dict is a value of its own
                walk(value, f"{prefix}{key}.")
            else:
                flat[f"{prefix}{key}"] = value

    walk(config, "")
    return flat
