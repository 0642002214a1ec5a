"""Evaluation over a whole split: one global confusion matrix, the FCN paper's metrics from it.

The same `Evaluator.evaluate` serves the train loop's periodic evaluation and `eval.py`. The
jitted eval step returns the batch's [C, C] int32 matrix, already summed over every device and
host; the host adds it into an int64 matrix, so memory stays flat however long the split is and
nothing overflows on Cityscapes- or ADE20K-size evaluations.
"""

from __future__ import annotations

import functools
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from jaxseg import inference, metrics, sharding
from jaxseg.data import datasets, pipeline


def inference_fn(model: nn.Module, eval_cfg):
    """`config.eval` -> fn(variables, images) -> logits at the images' size (not jitted)."""
    nonzero = lambda pair: tuple(pair) if any(pair) else None
    return functools.partial(
        inference.predict_logits,
        model,
        mode=eval_cfg.mode,
        crop=nonzero(eval_cfg.crop),
        stride=nonzero(eval_cfg.stride),
        tile_in=nonzero(eval_cfg.tile_in),
        flip=eval_cfg.flip,
        scales=tuple(eval_cfg.scales),
    )


def eval_step(variables, batch, *, predict, num_classes: int) -> jax.Array:
    """Confusion matrix of one global batch; pure.

    Args:
      variables: {"params": ..., optionally "batch_stats": ...}.
      batch: {"image": [B, H, W, C], "label": [B, H, W] int32 (255 = ignore),
        "valid": [B] bool (False = padding example)}.

    Returns:
      ([C, C] int32 matrix, rows = truth, columns = prediction; int32 count of real examples).
    """
    logits = predict(variables, batch["image"])
    preds = jnp.argmax(logits, axis=-1)
    cm = metrics.confusion_matrix(batch["label"], preds, num_classes, batch["valid"])
    return cm, jnp.sum(batch["valid"].astype(jnp.int32))


def variables_of(state) -> dict:
    """Model variables of a TrainState (BatchNorm statistics only when the model has them)."""
    variables = {"params": state.params}
    if state.batch_stats:
        variables["batch_stats"] = state.batch_stats
    return variables


class Evaluator:
    """Evaluates a TrainState on `config.data`'s evaluation split; compiles its step once."""

    def __init__(self, config, model: nn.Module, mesh: jax.sharding.Mesh, spec):
        self._config = config
        self.spec = spec
        self._mesh = mesh
        self._batch_sharding = sharding.batch_sharding(mesh)
        predict = inference_fn(model, config.eval)
        self._step = jax.jit(
            functools.partial(eval_step, predict=predict, num_classes=spec.num_classes),
            out_shardings=sharding.replicated_sharding(mesh),
        )
        self._predict = jax.jit(lambda v, x: jnp.argmax(predict(v, x), axis=-1))
        # Re-iterable: the split is opened once, then read again at every evaluation.
        self._batches = pipeline.make_eval_iterator(
            config.data, global_batch_size=config.eval_batch_size
        )

    def confusion_matrix(self, state) -> tuple[np.ndarray, int]:
        """(int64 [C, C] matrix over the whole split, number of real examples)."""
        variables = variables_of(state)
        total, num_examples, pending = None, 0, None
        # The bar counts real examples over all hosts as their matrices arrive (images/s, ETA);
        # only the primary process draws it.
        bar = tqdm.tqdm(
            total=self._batches.num_examples,
            desc="eval",
            unit="img",
            leave=False,
            dynamic_ncols=True,
            disable=jax.process_index() != 0,
        )
        with bar:
            for local in self._batches:
                out = self._step(variables, pipeline.to_global(local, self._batch_sharding))
                # Fetch the previous batch's matrix while this one computes.
                if pending is not None:
                    cm, n = jax.device_get(pending)
                    total, num_examples = metrics.accumulate(total, cm), num_examples + int(n)
                    bar.update(int(n))
                pending = out
            if pending is not None:
                cm, n = jax.device_get(pending)
                total, num_examples = metrics.accumulate(total, cm), num_examples + int(n)
                bar.update(int(n))
        if total is None:
            raise ValueError(
                f"evaluation split {self._config.data.eval_split!r} of "
                f"{self._config.data.name!r} yielded no batches"
            )
        return total, num_examples

    def evaluate(self, state) -> dict:
        """The FCN paper's four metrics, per-class scores and `num_examples`."""
        cm, num_examples = self.confusion_matrix(state)
        result = metrics.compute_metrics(cm, list(self.spec.class_names))
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

    def prediction_grid(self, state, num_examples: int = 4):
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
    out = os.path.join(workdir, "eval")
    paths = {
        "confusion_matrix": visualize.save_confusion_matrix_png(
            np.asarray(result["confusion_matrix"]),
            list(spec.class_names),
            os.path.join(out, "confusion_matrix.png"),
        ),
        "predictions": visualize.save_prediction_grid(
            images,
            truths,
            preds,
            spec.palette,
            spec.class_names,
            os.path.join(out, "predictions.png"),
        ),
    }
    curves = os.path.join(workdir, "metrics.jsonl")
    if os.path.exists(curves):
        paths["curves"] = visualize.save_training_curves(curves, os.path.join(out, "curves.png"))
    return paths


def write_report(workdir: str, result: dict, **meta) -> str:
    """Writes `<workdir>/eval/report.json` (metrics + meta such as step, split) and a per-class
    Markdown table `<workdir>/eval/per_class.md`; primary process only. Returns the JSON path."""
    out_dir = os.path.join(workdir, "eval")
    path = os.path.join(out_dir, "report.json")
    if jax.process_index() != 0:
        return path
    os.makedirs(out_dir, exist_ok=True)
    report = {**meta, **result}
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(report, f, indent=2)
    os.replace(tmp, path)  # Never leave a half-written report behind.
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
    with open(os.path.join(out_dir, "per_class.md"), "w") as f:
        f.write(f"{summary}\n\n" + "\n".join(rows) + "\n")
    return path


def evaluate_checkpoint(config, workdir: str, checkpoint: str = "best") -> dict:
    """Restores `checkpoint` ("best", "latest" or a step) of the run in `workdir`, evaluates it
    on `config.data.eval_split` and writes `<workdir>/eval/report.json`. Used by eval.py."""
    from jaxseg import train_lib  # train_lib imports this module

    mesh = sharding.make_mesh(num_fsdp=config.mesh.fsdp)
    spec = datasets.dataset_spec(config.data)
    model, state = train_lib.restore_checkpoint(config, workdir, checkpoint, mesh)
    evaluator = Evaluator(config, model, mesh, spec)
    result = evaluator.evaluate(state)
    write_report(
        workdir,
        result,
        step=int(jax.device_get(state.step)),
        dataset=spec.name,
        split=config.data.eval_split,
        inference=config.eval.mode,
        flip=config.eval.flip,
        scales=list(config.eval.scales),
        checkpoint=str(checkpoint),
    )
    write_figures(workdir, evaluator, state, result)
    return result
