"""The segmentation objective: what a train step minimises and reports, in one place.

Given the model's logits on a (micro-)batch:

1. The labels (and the eq. 2 weight map, if the batch has one) are cropped to the model's output:
   a valid-convolution U-Net predicts the centre of its input (`model.output_size`).
2. The loss is cross-entropy (`config.loss.class_weights`, the pixel weight map,
   `config.loss.normalize`) plus `config.loss.dice_weight` x soft Dice, over the scored pixels:
   `jaxseg.metrics.pixel_mask` (label in [0, num_classes), i.e. not 255), the rule the confusion
   matrix uses.
3. It is returned as a sum with its normaliser, so that micro-batches of gradient accumulation
   add up to the whole batch's loss exactly (`train_lib.train_step` divides once), and with the
   counts behind the train metrics.

A new loss term goes here; the step (`jaxseg.train_lib`) only differentiates it.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from jaxseg import losses, metrics
from jaxseg.models.layers import center_crop


def segmentation_loss(
    logits: jax.Array,
    batch: dict[str, jax.Array],
    *,
    model: nn.Module,
    loss_cfg: ml_collections.ConfigDict,
    num_classes: int,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The objective of one (micro-)batch.

    Args:
      logits: [N, h, w, K], the model's output on `batch["image"]`.
      batch: {"label": int32 [N, H, W] (255 = ignore), optional "weight": f32 [N, H, W]}.
      model: the module (its `output_size` maps the input side to the output side).
      loss_cfg: `config.loss`.
      num_classes: K.

    Returns:
      (loss sum, counts): the loss is `sum / counts["norm"]`; counts also hold "correct" and
      "scored" pixels for the pixel accuracy (`train_metrics`).
    """
    out_hw = [model.output_size(s) for s in batch["label"].shape[1:3]]
    labels = center_crop(batch["label"][..., None], *out_hw)[..., 0]
    weights = batch.get("weight")
    if weights is not None:
        weights = center_crop(weights[..., None], *out_hw)[..., 0]
    class_weights = jnp.asarray(loss_cfg.class_weights) if loss_cfg.class_weights else None
    ce, norm = losses.cross_entropy(
        logits,
        labels,
        class_weights=class_weights,
        pixel_weights=weights,
        normalize=loss_cfg.normalize,
    )
    total = ce * norm
    if loss_cfg.dice_weight:
        total = total + loss_cfg.dice_weight * losses.dice_loss(logits, labels) * norm
    scored = metrics.pixel_mask(labels, num_classes)
    correct = jnp.sum((jnp.argmax(logits, -1) == labels) & scored)
    return total, {"norm": norm, "correct": correct, "scored": jnp.sum(scored)}


def train_metrics(total: jax.Array, counts: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """The batch's loss and pixel accuracy from the summed `segmentation_loss` outputs."""
    return {
        "loss": total / counts["norm"],
        "pixel_accuracy": counts["correct"] / jnp.maximum(counts["scored"], 1),
    }
