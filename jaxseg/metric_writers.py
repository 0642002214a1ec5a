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
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.plugins.image import metadata as image_metadata
from tensorboard.plugins.scalar import metadata as scalar_metadata
from tensorboard.summary.writer.record_writer import RecordWriter
from tensorboard.util import tensor_util


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
    """

    def __init__(self, workdir: str, resume_step: int | None = None):
        self._primary = jax.process_index() == 0
        self._jsonl = None
        self._tb = {}
        self._workdir = workdir
        if self._primary:
            os.makedirs(workdir, exist_ok=True)
            path = os.path.join(workdir, "metrics.jsonl")
            if resume_step is not None:
                _drop_records_after(path, resume_step)
                _mark_tensorboard_restart(os.path.join(workdir, "tensorboard"), resume_step)
            self._jsonl = open(path, "a")  # noqa: SIM115

    def _tb_writer(self, split: str) -> _EventFile:
        if split not in self._tb:
            self._tb[split] = _EventFile(os.path.join(self._workdir, "tensorboard", split))
        return self._tb[split]

    def write(self, step: int, scalars: Mapping[str, float], split: str = "train") -> None:
        """Writes float scalars for `step` under `split` ("train", "eval", ...)."""
        if not self._primary:
            return
        record = {"step": int(step), "split": split, "time": time.time()}
        record.update({k: float(v) for k, v in scalars.items()})
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
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

    def __init__(self, folder: str):
        os.makedirs(folder, exist_ok=True)
        now = time.time()
        # TensorBoard reads a folder's files in name order: time first, then a per-process count
        # (two writers of one folder in one second must neither collide nor swap order).
        name = f"events.out.tfevents.{int(now):010d}.{socket.gethostname()}.{os.getpid()}"
        name += f".{next(_FILE_COUNT):06d}.v2"
        self._records = RecordWriter(open(os.path.join(folder, name), "wb"))  # noqa: SIM115
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


def _drop_records_after(path: str, step: int) -> int:
    """Rewrites metrics.jsonl without records whose step is > `step`; returns how many went.

    A torn last line (a kill mid-write) is dropped too.
    """
    if not os.path.exists(path):
        return 0
    with open(path) as f:
        lines = f.readlines()
    kept = []
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if int(record.get("step", 0)) <= step:
            kept.append(json.dumps(record) + "\n")
    dropped = len(lines) - len(kept)
    if dropped:
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            f.writelines(kept)
        os.replace(tmp, path)
        logging.info("metrics.jsonl: dropped %d record(s) after the resumed step %d", dropped, step)
    return dropped


def _mark_tensorboard_restart(tb_dir: str, step: int) -> None:
    """Writes a SessionLog START at `step` + 1 into each existing split folder (see above)."""
    if not os.path.isdir(tb_dir):
        return
    splits = [d for d in sorted(os.listdir(tb_dir)) if os.path.isdir(os.path.join(tb_dir, d))]
    if not splits:
        return
    now = time.time()
    for split in splits:
        # Event files are TFRecords of Event protos, read in file-name (= creation time) order.
        name = f"events.out.tfevents.{int(now)}.{socket.gethostname()}.restart-{step}"
        with open(os.path.join(tb_dir, split, name), "wb") as f:
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
