"""Evaluation over a whole split: one global confusion matrix, the FCN paper's metrics from it.

The same `Evaluator.evaluate` serves the train loop's periodic evaluation and `eval.py`. The
jitted eval step returns the batch's [C, C] int32 matrix, already summed over every device and
host; the host adds it into an int64 matrix, so memory stays flat however long the split is and
nothing overflows on Cityscapes- or ADE20K-size evaluations.

With `config.eval.isbi_metrics` (binary membrane data), the same pass also returns each batch's
predictions; the host scores this process's examples with `metrics.rand_statistics` (connected
components per image) and the sums are added over hosts, giving the ISBI 2012 pixel error and
foreground-restricted Rand error of the whole split.
"""

from __future__ import annotations

import functools
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import tqdm
from jax.experimental import multihost_utils

from jaxseg import inference, metrics, sharding, train_state
from jaxseg import workdir as workdir_lib
from jaxseg.data import datasets, loading
from jaxseg.train_state import variables_of


def eval_step(
    variables, batch, *, predict, num_classes: int, with_predictions: bool = False
) -> tuple[jax.Array, ...]:
    """Confusion matrix of one global batch; pure.

    Args:
      variables: {"params": ..., optionally "batch_stats": ...}.
      batch: {"image": [B, H, W, C], "label": [B, H, W] int32 (255 = ignore),
        "valid": [B] bool (False = padding example)}.

    Returns:
      ([C, C] int32 matrix, rows = truth, columns = prediction; int32 count of real examples),
      plus the predictions uint8 [B, H, W] with `with_predictions` (num_classes <= 256).
    """
    logits = predict(variables, batch["image"])
    preds = jnp.argmax(logits, axis=-1)
    cm = metrics.confusion_matrix(batch["label"], preds, num_classes, batch["valid"])
    count = jnp.sum(batch["valid"].astype(jnp.int32))
    if with_predictions:
        return cm, count, preds.astype(jnp.uint8)
    return cm, count


def _process_rows(x: jax.Array) -> np.ndarray:
    """This process's rows of a batch-sharded global array, in order (its local batch)."""
    if jax.process_count() == 1:
        return np.asarray(jax.device_get(x))
    # Keyed by the first row: replicas of a shard (e.g. over an fsdp axis) collapse into one.
    shards = {s.index[0].start or 0: s.data for s in x.addressable_shards}
    return np.concatenate([np.asarray(shards[k]) for k in sorted(shards)])


class Evaluator:
    """Evaluates a TrainState on `config.data`'s evaluation split; compiles its step once."""

    def __init__(self, config, model: nn.Module, mesh: jax.sharding.Mesh, spec):
        self._config = config
        self.spec = spec
        self._mesh = mesh
        self._batch_sharding = sharding.batch_sharding(mesh)
        # The inference mode, its TTA and isbi_metrics: config.eval, read and checked once.
        self.settings = inference.InferenceSettings.from_eval_config(config.eval)
        self._isbi = self.settings.isbi_metrics
        if self._isbi and spec.num_classes != 2:
            raise ValueError(
                f"config.eval.isbi_metrics needs binary membrane data (0 = membrane, 1 = cell); "
                f"{spec.name} has {spec.num_classes} classes"
            )
        predict = functools.partial(inference.predict_logits, model, settings=self.settings)
        replicated = sharding.replicated_sharding(mesh)
        self._step = jax.jit(
            functools.partial(
                eval_step,
                predict=predict,
                num_classes=spec.num_classes,
                with_predictions=self._isbi,
            ),
            out_shardings=(replicated, replicated)
            + ((self._batch_sharding,) if self._isbi else ()),
        )
        self._predict = jax.jit(lambda v, x: jnp.argmax(predict(v, x), axis=-1))
        # Re-iterable: the split is opened once, then read again at every evaluation.
        self._batches = loading.make_eval_iterator(
            config.data, global_batch_size=config.eval_batch_size, spec=spec
        )

    def confusion_matrix(self, state) -> tuple[np.ndarray, int]:
        """(int64 [C, C] matrix over the whole split, number of real examples)."""
        cm, num_examples, _ = self._accumulate(state)
        return cm, num_examples

    def _accumulate(self, state) -> tuple[np.ndarray, int, np.ndarray | None]:
        """One pass over the split: (confusion matrix, example count, summed
        `metrics.rand_statistics` over every host, or None without isbi_metrics)."""
        variables = variables_of(state)
        total, num_examples, pending = None, 0, None
        rand = np.zeros(3, np.int64) if self._isbi else None
        # The bar counts real examples over all hosts as their results arrive (images/s, ETA);
        # only the primary process draws it.
        bar = tqdm.tqdm(
            total=self._batches.num_examples,
            desc="eval",
            unit="img",
            leave=False,
            dynamic_ncols=True,
            disable=jax.process_index() != 0,
        )

        def consume(out, local):
            nonlocal total, num_examples
            cm, n = jax.device_get(out[:2])
            total, num_examples = metrics.accumulate(total, cm), num_examples + int(n)
            bar.update(int(n))
            if rand is not None:
                preds = _process_rows(out[2])
                rand[:] += metrics.rand_statistics(local["label"], preds, local["valid"])

        with bar:
            for local in self._batches:
                out = self._step(variables, loading.to_global(local, self._batch_sharding))
                # Fetch the previous batch's results while this one computes.
                if pending is not None:
                    consume(*pending)
                pending = (out, local)
            if pending is not None:
                consume(*pending)
        if total is None:
            raise ValueError(
                f"evaluation split {self._config.data.eval_split!r} of "
                f"{self._config.data.name!r} yielded no batches"
            )
        if rand is not None and jax.process_count() > 1:
            rand = np.asarray(multihost_utils.process_allgather(rand)).sum(axis=0)
        return total, num_examples, rand

    def evaluate(self, state) -> dict:
        """The FCN paper's four metrics, per-class scores and `num_examples`; with
        `config.eval.isbi_metrics` also "pixel_error" and the Rand scores (`metrics.rand_error`)."""
        cm, num_examples, rand = self._accumulate(state)
        result = metrics.compute_metrics(cm, list(self.spec.class_names))
        if rand is not None:
            # ISBI 2012's pixel error: the fraction of scored pixels whose class is wrong.
            result["pixel_error"] = 1.0 - result["pixel_accuracy"]
            result.update(metrics.rand_error(rand))
        result["num_examples"] = num_examples
        result["confusion_matrix"] = cm.tolist()  # rows = truth, columns = prediction
        return result

    def sample_predictions(self, state, num_examples: int = 8):
        """(images uint8, truths, predictions) of the split's first `num_examples` examples.

        Multi-process: every process must call it (the prediction is one jitted program over
        the mesh); each gets its own first examples.
        """
        variables = variables_of(state)
        batch = next(iter(self._batches))
        preds = np.asarray(jax.device_get(self._predict(variables, batch["image"])))
        keep = np.flatnonzero(batch["valid"])[:num_examples]
        mean, std = np.asarray(self._config.data.mean), np.asarray(self._config.data.std)
        images = np.clip((batch["image"][keep] * std + mean) * 255, 0, 255).astype(np.uint8)
        return list(images), list(batch["label"][keep]), list(preds[keep])

    def prediction_grid(self, state, num_examples: int = 8):
        """The report's prediction grid of the first `num_examples` examples, as uint8 [H, W, 3]
        (a TensorBoard image summary at every evaluation)."""
        from jaxseg import visualize  # matplotlib: only for reports

        images, truths, preds = self.sample_predictions(state, num_examples)
        fig = visualize.prediction_grid_figure(
            images, truths, preds, self.spec.palette, self.spec.class_names
        )
        return visualize.figure_to_array(fig)


def write_figures(workdir: str, evaluator: Evaluator, state, result: dict) -> dict[str, str]:
    """Writes `<workdir>/eval/`'s figures for `result` (Evaluator.evaluate of `state`).

    confusion_matrix.png (row-normalised), predictions.png (image | truth | prediction | errors
    of the split's first examples, with a class legend) and curves.png (from metrics.jsonl, if
    the run has one). Called by every process (the predictions are a collective); written by
    the primary one. Returns {name: path} of what was written.
    """
    images, truths, preds = evaluator.sample_predictions(state)
    if jax.process_index() != 0:
        return {}
    from jaxseg import visualize  # matplotlib: only for reports

    spec = evaluator.spec
    run = workdir_lib.RunDir(workdir)
    out = run.eval_dir
    paths = {
        "confusion_matrix": visualize.save_confusion_matrix_png(
            np.asarray(result["confusion_matrix"]),
            list(spec.class_names),
            out / "confusion_matrix.png",
        ),
        "predictions": visualize.save_prediction_grid(
            images,
            truths,
            preds,
            spec.palette,
            spec.class_names,
            out / "predictions.png",
        ),
    }
    records = run.read_metrics(missing_ok=True)
    if records:
        paths["curves"] = visualize.save_training_curves(records, out / "curves.png")
    return paths


def write_report(workdir: str, result: dict, **meta) -> str:
    """Writes `<workdir>/eval/report.json` (metrics + meta such as step, split) and a per-class
    Markdown table `<workdir>/eval/per_class.md`; primary process only. Returns the JSON path."""
    run = workdir_lib.RunDir(workdir)
    path = run.report_json
    if jax.process_index() != 0:
        return os.fspath(path)
    run.eval_dir.mkdir(parents=True, exist_ok=True)
    # Atomic: never leave a half-written report behind.
    workdir_lib.write_json(path, {**meta, **result}, indent=2)
    rows = ["| class | IoU | Dice | accuracy | truth pixels |", "| --- | --- | --- | --- | --- |"]
    fmt = lambda v: "-" if v is None else f"{v:.4f}"
    for name, c in result["per_class"].items():
        rows.append(
            f"| {name} | {fmt(c['iou'])} | {fmt(c['dice'])} | {fmt(c['accuracy'])} "
            f"| {c['truth_pixels']} |"
        )
    summary = ", ".join(
        f"{k} {result[k]:.4f}"
        for k in ("pixel_accuracy", "mean_accuracy", "mean_iou", "frequency_weighted_iou")
    )
    isbi = [
        f"{k} {result[k]:.4f}" for k in ("pixel_error", "rand_error") if result.get(k) is not None
    ]
    if isbi:
        summary += "; ISBI 2012: " + ", ".join(isbi)
    (run.eval_dir / "per_class.md").write_text(f"{summary}\n\n" + "\n".join(rows) + "\n")
    return os.fspath(path)


def evaluate_checkpoint(config, workdir: str, checkpoint: str = "best") -> dict:
    """Restores `checkpoint` ("best", "latest" or a step) of the run in `workdir`, evaluates it
    on `config.data.eval_split` and writes `<workdir>/eval/report.json`. Used by eval.py."""
    mesh = sharding.make_mesh(num_fsdp=config.mesh.fsdp)
    spec = datasets.dataset_spec(config.data)
    model, state = train_state.restore_checkpoint(
        config, workdir, checkpoint, mesh, spec=spec, params_only=True
    )
    evaluator = Evaluator(config, model, mesh, spec)
    result = evaluator.evaluate(state)
    write_report(
        workdir,
        result,
        step=int(jax.device_get(state.step)),
        dataset=spec.name,
        split=config.data.eval_split,
        inference=evaluator.settings.mode,
        flip=evaluator.settings.flip,
        scales=list(evaluator.settings.scales),
        checkpoint=str(checkpoint),
    )
    write_figures(workdir, evaluator, state, result)
    return result
