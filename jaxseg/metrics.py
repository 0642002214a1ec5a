"""Segmentation metrics: a confusion matrix on device, the scores from it on the host.

Evaluation sums one integer confusion matrix over batches, devices and hosts, then computes every
score from the summed matrix once (never a mean of per-batch means). The matrix is `[C, C]` with
rows = ground truth and columns = prediction, so `cm[i, j]` counts pixels of true class `i`
predicted as class `j`.

Which pixels count is defined once, in `pixel_mask`, and `jaxseg.losses` uses the same function:
label 255 is ignored identically in every loss and metric.

The ISBI 2012 challenge's Rand error needs connected components, which a confusion matrix cannot
give: `rand_statistics` computes, per image on the host, three integer sums that add over images
(and hosts), and `rand_error` turns the total into the score once.
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from scipy import ndimage

from jaxseg.labels import IGNORE_ID


def pixel_mask(labels: jax.Array, num_classes: int, valid: jax.Array | None = None) -> jax.Array:
    """Which pixels are scored: a label in `[0, num_classes)` inside a valid example.

    Args:
      labels: [N, H, W] int, class ids in `[0, num_classes)`, `IGNORE_ID` (255) = ignore.
      num_classes: C.
      valid: optional [N] bool; False marks padding examples of an eval batch.

    Returns:
      [N, H, W] bool.

    The data layer guarantees labels lie in `[0, C) ∪ {255}`. Any other value is dropped here
    too rather than trusted: under jit we cannot raise, and an out-of-range id must not be
    counted as (or gathered from) some other class.
    """
    mask = (labels >= 0) & (labels < num_classes)
    if valid is not None:
        if valid.shape != labels.shape[:1]:
            raise ValueError(
                f"valid has shape {valid.shape}, expected [N] = {labels.shape[:1]} "
                f"for labels of shape {labels.shape}"
            )
        mask = mask & valid.astype(bool).reshape((-1,) + (1,) * (labels.ndim - 1))
    return mask


def confusion_matrix(
    labels: jax.Array,
    preds: jax.Array,
    num_classes: int,
    valid: jax.Array | None = None,
) -> jax.Array:
    """Counts (truth, prediction) pairs over the scored pixels. Jit-able, fixed output shape.

    Args:
      labels: [N, H, W] int32, 255 = ignore.
      preds: [N, H, W] int, predicted class ids (e.g. `argmax(logits, -1)`).
      num_classes: C (static under jit).
      valid: optional [N] bool, False = padding example (not counted).

    Returns:
      [C, C] int32 pixel counts, rows = truth, columns = prediction.

    Works unchanged on batches sharded over a mesh axis: the count is a global reduction, so
    under jit the result is the whole batch's matrix (replicated). int32 holds one batch
    (< 2**31 pixels); sum batches into int64 on the host with `accumulate`.
    """
    if labels.shape != preds.shape:
        raise ValueError(f"labels shape {labels.shape} != preds shape {preds.shape}")
    # int32 first: with uint8 labels, `num_classes * labels` would wrap around.
    labels = jnp.asarray(labels).astype(jnp.int32)
    preds = jnp.asarray(preds).astype(jnp.int32)
    mask = pixel_mask(labels, num_classes, valid) & (preds >= 0) & (preds < num_classes)
    # Unscored pixels go to one extra bin that is then dropped, so they cannot land in (and
    # corrupt) a real cell, whatever their label value.
    trash = num_classes * num_classes
    index = jnp.where(mask, num_classes * labels + preds, trash)
    counts = jnp.bincount(index.ravel(), length=trash + 1)
    return counts[:trash].reshape(num_classes, num_classes).astype(jnp.int32)


def accumulate(total: np.ndarray | None, cm: jax.Array | np.ndarray) -> np.ndarray:
    """Adds one batch's confusion matrix into a host int64 total.

    Args:
      total: [C, C] int64 running sum, or None to start one.
      cm: [C, C] int32 matrix from `confusion_matrix` (device or host array; fetched here).

    Returns:
      [C, C] int64, a new array (`total` is not modified).
    """
    cm = np.asarray(jax.device_get(cm)).astype(np.int64)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"confusion matrix must be square [C, C], got shape {cm.shape}")
    if total is None:
        return cm
    if total.shape != cm.shape:
        raise ValueError(f"cannot add a {cm.shape} confusion matrix to a {total.shape} total")
    return total.astype(np.int64) + cm


def compute_metrics(cm: np.ndarray, class_names: Sequence[str] | None = None) -> dict:
    """The FCN paper's four scores (Long et al. 2015, section 5) plus per-class scores.

    With `n_ij` = pixels of class i predicted as j, `t_i = sum_j n_ij` (truth pixels of class i)
    and `p_i = sum_j n_ji` (pixels predicted as i):

      pixel_accuracy         = sum_i n_ii / sum_i t_i
      mean_accuracy          = mean over classes with t_i > 0 of n_ii / t_i
      mean_iou               = mean over classes with t_i + p_i > 0 of n_ii / (t_i + p_i - n_ii)
      frequency_weighted_iou = (sum_k t_k)^-1 sum_i t_i n_ii / (t_i + p_i - n_ii)

    A class absent from both truth and prediction has no IoU or Dice and is left out of the means;
    a class predicted but absent from truth has IoU 0 (it counts against mean IoU) but no accuracy.
    This matches the FCN release's `nanmean` scoring.

    Args:
      cm: [C, C] integer confusion matrix (rows = truth, columns = prediction), summed over
        the whole evaluation set; converted to int64.
      class_names: optional C names; per-class entries are keyed by name, else by "0", "1", ...

    Returns:
      {"pixel_accuracy", "mean_accuracy", "mean_iou", "frequency_weighted_iou": float in [0, 1],
       "num_pixels": int, "per_class": {name: {"iou", "dice", "accuracy": float or None
       (None = undefined for that class), "truth_pixels", "predicted_pixels": int}}}.
      All values are plain Python types, ready for JSON.
    """
    cm = np.asarray(cm)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"confusion matrix must be square [C, C], got shape {cm.shape}")
    if not np.issubdtype(cm.dtype, np.integer):
        raise ValueError(f"confusion matrix must hold integer counts, got dtype {cm.dtype}")
    cm = cm.astype(np.int64)
    if (cm < 0).any():
        raise ValueError("confusion matrix has negative counts (int32 overflow upstream?)")
    num_classes = cm.shape[0]
    if class_names is None:
        class_names = [str(i) for i in range(num_classes)]
    if len(class_names) != num_classes:
        raise ValueError(
            f"got {len(class_names)} class names for a {num_classes}-class confusion matrix"
        )
    total = int(cm.sum())
    if total == 0:
        raise ValueError("confusion matrix is empty: no pixel was scored (all ignored/padding?)")

    hits = np.diag(cm)
    truth = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    union = truth + predicted - hits
    in_truth = truth > 0
    seen = union > 0  # present in truth or prediction
    # Divide only where defined, so NaN never appears, let alone leaks into a mean.
    accuracy = np.divide(hits, truth, out=np.zeros(num_classes), where=in_truth)
    iou = np.divide(hits, union, out=np.zeros(num_classes), where=seen)
    dice = np.divide(2 * hits, truth + predicted, out=np.zeros(num_classes), where=seen)

    per_class = {}
    for i, name in enumerate(class_names):
        per_class[name] = {
            "iou": float(iou[i]) if seen[i] else None,
            "dice": float(dice[i]) if seen[i] else None,
            "accuracy": float(accuracy[i]) if in_truth[i] else None,
            "truth_pixels": int(truth[i]),
            "predicted_pixels": int(predicted[i]),
        }
    return {
        "pixel_accuracy": float(hits.sum() / total),
        "mean_accuracy": float(accuracy[in_truth].mean()),
        "mean_iou": float(iou[seen].mean()),
        # Classes with t_i = 0 carry zero weight, so their IoU (0 or undefined) adds nothing.
        "frequency_weighted_iou": float((truth * iou).sum() / truth.sum()),
        "num_pixels": total,
        "per_class": per_class,
    }


def rand_statistics(
    labels: np.ndarray,
    preds: np.ndarray,
    valid: np.ndarray | None = None,
    *,
    cell_class: int = 1,
) -> np.ndarray:
    """Sums for the ISBI 2012 foreground-restricted Rand F-score over a batch of 2-D slices.

    As the organisers' Fiji code (Trainable_Segmentation `RandError.foregroundRestrictedStatsN2`)
    defines it, per slice: truth segments are the 4-connected components of `labels ==
    cell_class`, predicted segments those of `preds == cell_class`; only pixels inside a truth
    segment count ("foreground-restricted"); such a pixel predicted as membrane is a singleton
    segment of its own. With n_ij = pixels of truth segment i in predicted segment j (j > 0),
    a_i = pixels of truth segment i, b_j = sum_i n_ij and n_0 = pixels predicted as membrane:

      [sum_ij n_ij^2 + n_0,  sum_i a_i^2,  sum_j b_j^2 + n_0]

    (pixel counts squared; Fiji's 1/n^2 normalisation cancels in the F-score). Summing these over
    slices equals scoring the stack as one volume whose slices are labelled apart. Ignored pixels
    (255) and padding examples count for neither truth nor prediction, so padding cannot join
    two predicted segments.

    Args:
      labels: [N, H, W] int class ids, 255 = ignore.
      preds: [N, H, W] int predicted class ids.
      valid: optional [N] bool, False = padding example (skipped).
      cell_class: the class whose components are segments (ISBI: 1 = cell, 0 = membrane).

    Returns:
      int64 [3], summable over batches; see `rand_error`.
    """
    labels, preds = np.asarray(labels), np.asarray(preds)
    if labels.shape != preds.shape or labels.ndim != 3:
        raise ValueError(f"need labels and preds [N, H, W], got {labels.shape}, {preds.shape}")
    total = np.zeros(3, np.int64)
    for k in range(labels.shape[0]):
        if valid is not None and not valid[k]:
            continue
        label = labels[k]
        truth_fg = label == cell_class
        if not truth_fg.any():
            continue
        truth, _ = ndimage.label(truth_fg)
        pred, num_pred = ndimage.label((preds[k] == cell_class) & (label != IGNORE_ID))
        t, p = truth[truth_fg].astype(np.int64), pred[truth_fg].astype(np.int64)
        in_pred = p > 0
        singletons = int(np.sum(~in_pred))
        pairs = np.unique(t[in_pred] * (num_pred + 1) + p[in_pred], return_counts=True)[1]
        a = np.bincount(t)[1:]
        b = np.bincount(p[in_pred])[1:]
        total += [
            np.sum(pairs**2) + singletons,
            np.sum(a**2),
            np.sum(b**2) + singletons,
        ]
    return total


def rand_error(stats: np.ndarray) -> dict:
    """ISBI 2012 scores from summed `rand_statistics`: {"rand_f_score", "rand_error",
    "rand_split", "rand_merge"} (floats; None when no truth segment was seen).

    With s = the three sums: split = s0 / s1 (Fiji's recall), merge = s0 / s2 (precision),
    rand_f_score = 2 s0 / (s1 + s2) and rand_error = 1 - rand_f_score (the challenge's "Rand
    error" at one threshold: the prediction's argmax, not the maximum over thresholds).
    """
    s = np.asarray(stats, np.float64)
    if s[1] == 0:
        return dict.fromkeys(("rand_f_score", "rand_error", "rand_split", "rand_merge"))
    f = 2 * s[0] / (s[1] + s[2])
    return {
        "rand_f_score": float(f),
        "rand_error": float(1 - f),
        "rand_split": float(s[0] / s[1]),
        "rand_merge": float(s[0] / s[2]) if s[2] else None,
    }
