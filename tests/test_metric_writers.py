"""jaxseg/metric_writers.py: a resumed run logs each (step, split) once, jsonl and TensorBoard."""

import json

from tensorboard.backend.event_processing import plugin_event_accumulator
from tensorboard.util import tensor_util

from jaxseg import metric_writers


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
    # tf.summary writes scalars as tensor summaries.
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
