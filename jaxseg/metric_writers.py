"""Scalars to `metrics.jsonl` and TensorBoard event files, written by the primary process only."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping

import jax


class MetricWriter:
    """Appends one JSON line per `write` to `<workdir>/metrics.jsonl` and mirrors it to TensorBoard.

    Lines look like {"step": 100, "split": "train", "time": 1.7e9, "loss": 0.41, ...}. Appending
    (never rewriting) keeps a resumed run's history; the step field says where each line belongs.
    Non-primary processes write nothing.
    """

    def __init__(self, workdir: str):
        self._primary = jax.process_index() == 0
        self._jsonl = None
        self._tb = {}
        self._workdir = workdir
        if self._primary:
            os.makedirs(workdir, exist_ok=True)
            self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")  # noqa: SIM115

    def _tb_writer(self, split: str):
        if split not in self._tb:
            import tensorflow as tf  # The input pipeline already imports it; events need no more.

            self._tb[split] = tf.summary.create_file_writer(
                os.path.join(self._workdir, "tensorboard", split)
            )
        return self._tb[split]

    def write(self, step: int, scalars: Mapping[str, float], split: str = "train") -> None:
        """Writes float scalars for `step` under `split` ("train", "eval", ...)."""
        if not self._primary:
            return
        record = {"step": int(step), "split": split, "time": time.time()}
        record.update({k: float(v) for k, v in scalars.items()})
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        import tensorflow as tf

        with self._tb_writer(split).as_default():
            for k, v in scalars.items():
                tf.summary.scalar(k, float(v), step=int(step))

    def write_image(self, step: int, name: str, image, split: str = "eval") -> None:
        """Writes uint8 [H, W, 3] `image` as a TensorBoard image summary `name` (not to jsonl)."""
        if not self._primary:
            return
        import numpy as np
        import tensorflow as tf

        with self._tb_writer(split).as_default():
            tf.summary.image(name, np.asarray(image, np.uint8)[None], step=int(step))

    def close(self) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None
        for w in self._tb.values():
            w.flush()
            w.close()
        self._tb = {}
