"""Segmentation losses: pixel-wise cross-entropy, soft Dice, and the U-Net border weight map.

The losses are pure jnp and jit-able. They take logits `[N, H, W, C]` (any float dtype; the loss
is computed in float32 because a bfloat16 sum over ~10^6 pixels loses most of its digits) and
labels `[N, H, W]` int with 255 = ignore. Which pixels count is `jaxseg.metrics.pixel_mask`, the
same rule the confusion matrix uses. (The U-Net paper's eq. 2 weight map, a host-side input to
`cross_entropy(pixel_weights=...)`, is computed with the data: `jaxseg.data.weight_maps`.)
"""

import jax
import jax.numpy as jnp
import optax

from jaxseg.metrics import pixel_mask


def _check_shapes(logits: jax.Array, labels: jax.Array) -> None:
    if logits.ndim != 4 or labels.shape != logits.shape[:3]:
        raise ValueError(
            f"expected logits [N, H, W, C] and labels [N, H, W]; got logits {logits.shape} "
            f"and labels {labels.shape}"
        )


def cross_entropy(
    logits: jax.Array,
    labels: jax.Array,
    *,
    class_weights: jax.Array | None = None,
    pixel_weights: jax.Array | None = None,
    valid: jax.Array | None = None,
    normalize: bool = True,
) -> tuple[jax.Array, jax.Array]:
    """Pixel-wise softmax cross-entropy, ignoring label 255 and padding examples.

    Each scored pixel x has loss l(x) = -log softmax(logits[x])[label[x]] and weight
    w(x) = class_weights[label[x]] * pixel_weights[x] (1 when neither is given). Then

      normalize=True:  loss = sum_x w(x) l(x) / sum_x w(x)   (weighted mean over scored pixels)
      normalize=False: loss = sum_x w(x) l(x) / N            (per-image sum, averaged over images)

    normalize=False is the FCN reference release's unnormalised loss (Caffe SoftmaxWithLoss with
    `normalize: false`). Caffe maps that setting to its BATCH_SIZE normalisation, i.e. it divides
    the pixel sum by the batch size N, and so do we: the release trained with N = 1, where this
    is exactly its sum over pixels, and for N > 1 the loss scale (and so the paper's tiny
    learning rate) stays per image instead of growing with the batch. N counts valid examples
    only, so padding never dilutes the loss.

    Args:
      logits: [N, H, W, C] float (float32 or bfloat16).
      labels: [N, H, W] int32 class ids in [0, C), 255 = ignore.
      class_weights: optional [C] float, per-class loss weights (e.g. inverse frequency).
      pixel_weights: optional [N, H, W] float weight map (e.g. `unet_weight_map`).
      valid: optional [N] bool; False = padding example, contributes nothing.
      normalize: see above.

    Returns:
      (loss, normalizer): float32 scalars, where `loss` = weighted sum / `normalizer`
      (`normalizer` = sum of weights, i.e. the number of scored pixels when unweighted, or the
      number of valid examples when normalize=False). Losses of parts of a batch (micro-batches,
      hosts) combine exactly as sum(loss_i * normalizer_i) / sum(normalizer_i). The loss is 0
      when nothing is scored; its gradient at ignored pixels is exactly 0.
    """
    _check_shapes(logits, labels)
    num_classes = logits.shape[-1]
    logits = logits.astype(jnp.float32)
    mask = pixel_mask(labels, num_classes, valid)
    # 255 must never reach the gather inside optax (an out-of-range index yields NaN, and
    # 0 * NaN is still NaN), so ignored pixels are scored against class 0 and then dropped.
    safe_labels = jnp.where(mask, labels, 0).astype(jnp.int32)
    per_pixel = optax.softmax_cross_entropy_with_integer_labels(logits, safe_labels)

    weights = mask.astype(jnp.float32)
    if class_weights is not None:
        class_weights = jnp.asarray(class_weights, jnp.float32)
        if class_weights.shape != (num_classes,):
            raise ValueError(
                f"class_weights has shape {class_weights.shape}, expected [C] = ({num_classes},)"
            )
        weights = weights * class_weights[safe_labels]
    if pixel_weights is not None:
        if pixel_weights.shape != labels.shape:
            raise ValueError(
                f"pixel_weights has shape {pixel_weights.shape}, expected labels' {labels.shape}"
            )
        weights = weights * pixel_weights.astype(jnp.float32)

    # jnp.where, not only the zero weight: a padding example's logits may be garbage (inf/NaN),
    # and 0 * inf would still be NaN.
    total = jnp.sum(jnp.where(mask, weights * per_pixel, 0.0))
    if normalize:
        normalizer = jnp.sum(weights)
    elif valid is None:
        normalizer = jnp.float32(labels.shape[0])
    else:
        normalizer = jnp.sum(valid.astype(jnp.float32))
    # Divide by 1 when nothing is scored: total is 0 then, and a 0 denominator would make the
    # gradient NaN even behind a jnp.where.
    loss = total / jnp.where(normalizer > 0, normalizer, 1.0)
    return loss, normalizer


def dice_loss(
    logits: jax.Array,
    labels: jax.Array,
    *,
    valid: jax.Array | None = None,
    smooth: float = 1.0,
) -> jax.Array:
    """Multi-class soft Dice loss on softmax probabilities, ignoring label 255.

    For each class c, with p = softmax(logits)[..., c] and y = [label == c], summed over the
    scored pixels of the whole batch:

      dice_c = (2 sum p y + smooth) / (sum p + sum y + smooth),   loss = 1 - mean_c dice_c

    Sums run over the whole batch, not per image, so a class missing from one image does not give
    that image a 0/0 term (the "batch Dice" choice; it also makes the loss one number, like CE).
    `smooth` (> 0) keeps every term defined. A class absent from the batch's labels then scores
    smooth / (sum p + smooth): it pulls the class's probability towards 0.

    Args:
      logits: [N, H, W, C] float (any float dtype; computed in float32).
      labels: [N, H, W] int32, 255 = ignore.
      valid: optional [N] bool, False = padding example.
      smooth: additive smoothing, in units of pixels.

    Returns:
      float32 scalar in [0, 1]. Unlike `cross_entropy` it is not a sum over pixels, so parts of
      a batch cannot be combined exactly from their losses.
    """
    _check_shapes(logits, labels)
    num_classes = logits.shape[-1]
    mask = pixel_mask(labels, num_classes, valid)[..., None].astype(jnp.float32)
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1) * mask
    onehot = jax.nn.one_hot(jnp.where(mask[..., 0] > 0, labels, 0), num_classes) * mask
    intersection = jnp.sum(probs * onehot, axis=(0, 1, 2))
    truth = jnp.sum(onehot, axis=(0, 1, 2))
    dice = (2.0 * intersection + smooth) / (jnp.sum(probs, axis=(0, 1, 2)) + truth + smooth)
    return 1.0 - jnp.mean(dice)
