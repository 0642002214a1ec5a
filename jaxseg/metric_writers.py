"""Scalars to `metrics.jsonl` and TensorBoard event files, written by the primary process only.

Event files are written without TensorFlow, with the `tensorboard` package's own record writer
and event protos (a dependency already, for the viewer; tensorboardX would add one for the same
bytes). Not its `EventFileWriter`: that opens files through `tensorboard.compat.tf`, which imports
all of TensorFlow wherever it is installed. The summaries are those `tf.summary` v2 writes:
scalars as float32 scalar tensors (plugin "scalars"), images as the string tensor [width,
height, PNG] (plugin "images"), so TensorBoard and `EventAccumulator.Tensors` read them as before.
"""

from __future__ import annotations

import io
import itertools
import json
import logging
import os
import socket
import time
from collections.abc import Mapping

import jax
import numpy as np
from etils import epath
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.plugins.image import metadata as image_metadata
from tensorboard.plugins.scalar import metadata as scalar_metadata
from tensorboard.summary.writer.record_writer import RecordWriter
from tensorboard.util import tensor_util

from jaxseg import workdir as workdir_lib


class MetricWriter:
    """Appends one JSON line per `write` to `<workdir>/metrics.jsonl` and mirrors it to TensorBoard.

    Lines look like {"step": 100, "split": "train", "time": 1.7e9, "loss": 0.41, ...}. Appending
    keeps a resumed run's history. A run resumed from a checkpoint at step s repeats the steps
    after s that a killed run had already logged, so `resume_step=s` first drops the records
    with step > s (rewriting the file atomically): every (step, split) then appears once.

    TensorBoard event files are append-only; for them a SessionLog START event at step s + 1 is
    written into each split's folder, which TensorBoard's default `purge_orphaned_data` reads as
    "discard the events of this split at steps >= s + 1 written before me", so its curves show
    each step once too (TensorBoard's server and `plugin_event_accumulator`; other readers of
    raw event files see both values of a repeated step). Non-primary processes write nothing.

    Object stores (a gs:// workdir) have no append: there each `write` rewrites metrics.jsonl
    whole (one object write, atomic; the file is small, written at log steps only), and event
    files become visible when closed or when the file system flushes them.
    """

    def __init__(self, workdir: str | os.PathLike, resume_step: int | None = None):
        self._primary = jax.process_index() == 0
        self._jsonl = None
        self._text = None  # metrics.jsonl's content, where it is rewritten whole (remote).
        self._tb = {}
        self._run = workdir_lib.RunDir(workdir)
        if self._primary:
            self._run.path.mkdir(parents=True, exist_ok=True)
            if resume_step is not None:
                _drop_records_after(self._run, resume_step)
                _mark_tensorboard_restart(self._run.tensorboard, resume_step)
            path = self._run.metrics_jsonl
            if self._run.is_remote:
                self._text = path.read_text() if path.exists() else ""
            else:
                self._jsonl = path.open("a")

    def _tb_writer(self, split: str) -> _EventFile:
        if split not in self._tb:
            self._tb[split] = _EventFile(self._run.tensorboard / split)
        return self._tb[split]

    def write(self, step: int, scalars: Mapping[str, float], split: str = "train") -> None:
        """Writes float scalars for `step` under `split` ("train", "eval", ...)."""
        if not self._primary:
            return
        record = {"step": int(step), "split": split, "time": time.time()}
        record.update({k: float(v) for k, v in scalars.items()})
        line = json.dumps(record) + "\n"
        if self._jsonl is not None:
            self._jsonl.write(line)
            self._jsonl.flush()
        else:
            self._text += line
            self._run.metrics_jsonl.write_text(self._text)
        values = {k: tensor_util.make_tensor_proto(np.float32(v)) for k, v in scalars.items()}
        self._tb_writer(split).write(int(step), values, "scalars")

    def write_image(self, step: int, name: str, image, split: str = "eval") -> None:
        """Writes uint8 [H, W, 3] `image` as a TensorBoard image summary `name` (not to jsonl)."""
        if not self._primary:
            return
        from PIL import Image

        image = np.asarray(image, np.uint8)
        png = io.BytesIO()
        Image.fromarray(image).save(png, format="PNG")
        height, width = image.shape[:2]
        # tf.summary.image's layout: [width, height, one PNG per image], as strings.
        tensor = np.array([str(width).encode(), str(height).encode(), png.getvalue()], object)
        self._tb_writer(split).write(
            int(step), {name: tensor_util.make_tensor_proto(tensor)}, "images"
        )

    def close(self) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None
        for w in self._tb.values():
            w.close()
        self._tb = {}


class _EventFile:
    """One new event file in `folder`: Event protos as TFRecords, flushed after every write.

    Metrics are written at log steps only, so writes are synchronous (no queue or thread, and
    nothing lost to a kill between log steps). Each tag's summary metadata (which plugin reads
    it) goes with its first value only, as tf.summary does.
    """

    def __init__(self, folder: epath.Path):
        folder.mkdir(parents=True, exist_ok=True)
        now = time.time()
        # TensorBoard reads a folder's files in name order: time first, then a per-process count
        # (two writers of one folder in one second must neither collide nor swap order).
        name = f"events.out.tfevents.{int(now):010d}.{socket.gethostname()}.{os.getpid()}"
        name += f".{next(_FILE_COUNT):06d}.v2"
        self._records = RecordWriter((folder / name).open("wb"))
        self._tagged: set[str] = set()
        self._add(event_pb2.Event(wall_time=now, file_version="brain.Event:2"))

    def write(self, step: int, tensors: Mapping[str, object], plugin: str) -> None:
        """`tensors`: {tag: TensorProto}; `plugin`: "scalars" or "images"."""
        summary = summary_pb2.Summary()
        for tag, tensor in tensors.items():
            value = summary.value.add(tag=tag, tensor=tensor)
            if tag not in self._tagged:
                self._tagged.add(tag)
                value.metadata.CopyFrom(_METADATA[plugin]())
        self._add(event_pb2.Event(wall_time=time.time(), step=step, summary=summary))

    def _add(self, event: event_pb2.Event) -> None:
        self._records.write(event.SerializeToString())
        self._records.flush()

    def close(self) -> None:
        self._records.close()


_FILE_COUNT = itertools.count()
_METADATA = {
    "scalars": lambda: scalar_metadata.create_summary_metadata(display_name="", description=""),
    "images": lambda: image_metadata.create_summary_metadata(display_name="", description=""),
}


def _drop_records_after(run: workdir_lib.RunDir, step: int) -> int:
    """Rewrites metrics.jsonl without records whose step is > `step`; returns how many went.

    A torn last line (a kill mid-write) is dropped too.
    """
    path = run.metrics_jsonl
    if not path.exists():
        return 0
    lines = path.read_text().splitlines()
    kept = [json.dumps(r) + "\n" for r in run.read_metrics() if int(r.get("step", 0)) <= step]
    dropped = len([line for line in lines if line.strip()]) - len(kept)
    if dropped:
        workdir_lib.write_text(path, "".join(kept))
        logging.info("metrics.jsonl: dropped %d record(s) after the resumed step %d", dropped, step)
    return dropped


def _mark_tensorboard_restart(tb_dir: epath.Path, step: int) -> None:
    """Writes a SessionLog START at `step` + 1 into each existing split folder (see above)."""
    if not tb_dir.is_dir():
        return
    splits = sorted(d for d in tb_dir.iterdir() if d.is_dir())
    if not splits:
        return
    now = time.time()
    for split in splits:
        # Event files are TFRecords of Event protos, read in file-name (= creation time) order.
        name = f"events.out.tfevents.{int(now)}.{socket.gethostname()}.restart-{step}"
        with (split / name).open("wb") as f:
            records = RecordWriter(f)
            start = event_pb2.Event(
                wall_time=now,
                step=step + 1,
                session_log=event_pb2.SessionLog(status=event_pb2.SessionLog.START),
            )
            version = event_pb2.Event(wall_time=now, step=step + 1, file_version="brain.Event:2")
            # TensorBoard takes a run's first START as the initial one (tf.summary writes
            # none) and purges on each later one: two make the first marker count as well.
            for event in (version, start, start):
                records.write(event.SerializeToString())
    # The new writers' files must sort after the marker: their names start with the same whole
    # second, so wait for the next one.
    time.sleep(max(0.0, int(now) + 1 - time.time()))
