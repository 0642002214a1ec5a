"""jaxseg/metric_writers.py: what it writes TensorBoard reads back (scalars, images), without
TensorFlow; a resumed run logs each (step, split) once, jsonl and TensorBoard."""

import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from tensorboard.backend.event_processing import plugin_event_accumulator
from tensorboard.util import tensor_util

from jaxseg import metric_writers

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _log(workdir, steps, resume_step=None, value=0.0):
    writer = metric_writers.MetricWriter(str(workdir), resume_step=resume_step)
    for step in steps:
        writer.write(step, {"loss": value + step}, "train")
        if step % 4 == 0:
            writer.write(step, {"mean_iou": value + step}, "eval")
    writer.close()


def _tensorboard(folder, tag):
    """(step, value) as TensorBoard loads them (its default purge_orphaned_data=True)."""
    acc = plugin_event_accumulator.EventAccumulator(str(folder))  # What TensorBoard serves.
    acc.Reload()
    # Scalars are tensor summaries, as tf.summary v2 writes them.
    return [(e.step, float(tensor_util.make_ndarray(e.tensor_proto))) for e in acc.Tensors(tag)]


def test_resume_drops_the_records_a_killed_run_wrote_after_its_checkpoint(tmp_path):
    # A first run logged steps 1..7 and was killed; its last complete checkpoint is step 4.
    _log(tmp_path, range(1, 8))
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 8, "split": "tr')  # torn by the kill mid-write
    # The rerun resumes at 4 and logs 5..8 again (other values: it is another process).
    _log(tmp_path, range(5, 9), resume_step=4, value=100.0)
    records = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    keys = [(r["step"], r["split"]) for r in records]
    assert len(keys) == len(set(keys)), keys
    train = {r["step"]: r["loss"] for r in records if r["split"] == "train"}
    assert train == {s: float(s) for s in range(1, 5)} | {s: 100.0 + s for s in range(5, 9)}
    # TensorBoard shows each step once too, the rerun's value past the resume step.
    assert _tensorboard(tmp_path / "tensorboard" / "train", "loss") == sorted(train.items())
    evals = _tensorboard(tmp_path / "tensorboard" / "eval", "mean_iou")
    assert evals == [(4, 4.0), (8, 108.0)]
    # A second resume (from step 6) purges again.
    _log(tmp_path, range(7, 9), resume_step=6, value=200.0)
    train.update({7: 207.0, 8: 208.0})
    assert _tensorboard(tmp_path / "tensorboard" / "train", "loss") == sorted(train.items())
    records = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert {r["step"]: r["loss"] for r in records if r["split"] == "train"} == train
    assert len(records) == len({(r["step"], r["split"]) for r in records}) == 8 + 2


def test_a_fresh_start_keeps_nothing_past_step_0_and_plain_appends_keep_all(tmp_path):
    _log(tmp_path, range(1, 3))
    _log(tmp_path, range(3, 5))  # No resume_step: appended as before.
    assert [json.loads(x)["step"] for x in open(tmp_path / "metrics.jsonl")] == [1, 2, 3, 4, 4]
    _log(tmp_path, range(1, 2), resume_step=0, value=50.0)
    assert [json.loads(x)["loss"] for x in open(tmp_path / "metrics.jsonl")] == [51.0]


def test_scalars_and_an_image_read_back_by_tensorboard_at_their_steps(tmp_path):
    rng = np.random.default_rng(0)
    picture = rng.integers(0, 256, (6, 10, 3), np.uint8)
    writer = metric_writers.MetricWriter(str(tmp_path))
    writer.write(2, {"loss": 0.75, "lr": 1e-3}, "train")
    writer.write(5, {"loss": 0.5, "lr": 5e-4}, "train")
    writer.write(5, {"mean_iou": 0.25}, "eval")
    writer.write_image(5, "predictions", picture, "eval")
    writer.close()
    train = tmp_path / "tensorboard" / "train"
    assert _tensorboard(train, "loss") == [(2, 0.75), (5, 0.5)]
    assert _tensorboard(train, "lr") == [(2, pytest.approx(1e-3)), (5, pytest.approx(5e-4))]
    acc = plugin_event_accumulator.EventAccumulator(str(tmp_path / "tensorboard" / "eval"))
    acc.Reload()
    assert acc.PluginTagToContent("scalars").keys() == {"mean_iou"}
    assert acc.PluginTagToContent("images").keys() == {"predictions"}
    (event,) = acc.Tensors("predictions")
    # tf.summary.image's layout: [width, height, PNG].
    width, height, png = tensor_util.make_ndarray(event.tensor_proto)
    assert event.step == 5 and (int(width), int(height)) == (10, 6)
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(png))), picture)


def test_writing_events_does_not_import_tensorflow(tmp_path):
    """Even where TensorFlow is installed: the writer must not pull it in (it is the SavedModel
    export's alone, and costs seconds and GPU memory)."""
    script = f"""
import sys
import numpy as np
from jaxseg import metric_writers
w = metric_writers.MetricWriter({str(tmp_path)!r})
w.write(1, {{"loss": 1.0}})
w.write_image(1, "image", np.zeros((4, 4, 3), np.uint8))
w.close()
w = metric_writers.MetricWriter({str(tmp_path)!r}, resume_step=0)
w.close()
print(sorted(m for m in sys.modules if m.split(".")[0] == "tensorflow"))
"""
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "[]"


def test_tensorboard_files_are_written_without_tensorflow(tmp_path, no_tensorflow_env):
    """The resume test above, in a process where `import tensorflow` fails."""
    script = (
        "import sys, test_metric_writers as t, pathlib; "
        "t.test_resume_drops_the_records_a_killed_run_wrote_after_its_checkpoint("
        f"pathlib.Path({str(tmp_path)!r})); print('ok')"
    )
    env = dict(no_tensorflow_env)
    env["PYTHONPATH"] += os.pathsep + os.path.dirname(__file__)
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "ok"
