"""Inference: logits at an image's own resolution, whatever the model's size constraints.

Modes (each `fn(model, variables, images) -> logits [N, H, W, K]` once its keywords are bound,
so the test-time augmentations below wrap any of them):

- `whole_image_logits`: one forward pass over the whole image, sized by the model's own size
  rule (`input_context`, `valid_input_size`; see `jaxseg.models.UNet`):
  - FCN: any input size, logits at the input size.
  - Padded U-Net: sides must be multiples of 2**depth: the input is mirror-padded up to the next
    multiple and the logits cropped back.
  - Valid U-Net: the network sees a mirror-padded input (the paper's overlap-tile border
    extrapolation) large enough that its output covers the image, then the logits are cropped.
- `sliding_window_logits`: fixed-size crops at a stride, overlapping logits averaged (for images
  larger than memory allows, or models trained on crops).
- `overlap_tile_logits`: the U-Net paper's Fig. 2 tiling for valid-convolution U-Nets.
- `flip_tta`, `multiscale_tta`: horizontal-flip and multi-scale averaging of any mode.
- `predict_logits`: the above as an `InferenceSettings` names them.

`InferenceSettings` is the one reader and validator of `config.eval`: evaluation runs it here on
the device, predict.py and `jaxseg.load` run it on host images (`jaxseg.tiled_inference`). Where
the tiles lie is planned once for both, by `jaxseg.tiling`.

All are pure and jit-able with the model and sizes static; tiles are visited by a
`lax.fori_loop`, so the network compiles once per tile shape, not once per tile or image.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxseg import tiling

# fn(model, variables, images [N, H, W, C]) -> logits [N, H, W, K] float32.
LogitsFn = Callable[[nn.Module, object, jax.Array], jax.Array]

MODES = ("whole_image", "sliding_window", "overlap_tile")


class _FieldError(ValueError):
    """A bad setting; `keys` are the fields it is about (`from_eval_config` names them)."""

    def __init__(self, keys: tuple[str, ...], message: str):
        super().__init__(message)
        self.keys = keys


def _size(key: str, value) -> tuple[int, int] | None:
    """A (height, width) setting as a tuple of two positive ints; None stays None (unset)."""
    if value is None:
        return None
    try:
        size = tuple(int(v) for v in value)
    except (TypeError, ValueError):
        size = ()
    if len(size) != 2 or min(size) <= 0:
        raise _FieldError((key,), f"{key} must be 2 positive sides (height, width), got {value}")
    return size


@dataclasses.dataclass(frozen=True)
class InferenceSettings:
    """An inference mode, its test-time augmentation and eval's scoring option: `config.eval`.

    Sizes and scales may be given as lists (flags, config.json): they are stored as tuples, so
    settings compare and hash by value. Validated on construction.

    Attributes:
      mode: "whole_image", "sliding_window" or "overlap_tile" (`MODES`).
      crop, stride: sliding_window window and step (height, width) px.
      tile_in: overlap_tile input tile (height, width) px (valid U-Nets).
      flip: also average over the left-right mirrored image.
      scales: input scales to average over ((1.0,) = none).
      isbi_metrics: evaluation also scores the ISBI 2012 pixel and Rand errors (binary membrane
        data); no effect on the logits.
    """

    mode: str = "whole_image"
    crop: tuple[int, int] | None = None
    stride: tuple[int, int] | None = None
    tile_in: tuple[int, int] | None = None
    flip: bool = False
    scales: tuple[float, ...] = (1.0,)
    isbi_metrics: bool = False

    def __post_init__(self):
        if self.mode not in MODES:
            raise _FieldError(
                ("mode",), f"unknown inference mode {self.mode!r}; valid modes: {MODES}"
            )
        for key in ("crop", "stride", "tile_in"):
            object.__setattr__(self, key, _size(key, getattr(self, key)))
        try:
            object.__setattr__(self, "scales", tuple(float(s) for s in self.scales))
        except (TypeError, ValueError):
            raise _FieldError(
                ("scales",), f"scales must be a list of positive floats, got {self.scales!r}"
            ) from None
        object.__setattr__(self, "flip", bool(self.flip))
        object.__setattr__(self, "isbi_metrics", bool(self.isbi_metrics))
        if self.mode == "sliding_window":
            if self.crop is None or self.stride is None:
                raise _FieldError(
                    ("crop", "stride"),
                    f"inference mode 'sliding_window' needs crop and stride, got crop={self.crop} "
                    f"stride={self.stride}",
                )
        if self.mode == "overlap_tile" and self.tile_in is None:
            raise _FieldError(
                ("tile_in",),
                "inference mode 'overlap_tile' needs tile_in (a valid U-Net input size)",
            )
        if not self.scales or not all(0 < s < math.inf for s in self.scales):
            raise _FieldError(
                ("scales",),
                f"scales must be a non-empty list of positive floats, got {self.scales}",
            )

    @classmethod
    def from_eval_config(cls, eval_cfg) -> InferenceSettings:
        """`config.eval` (zero sizes = unset); errors name the `config.eval.<key>`."""
        unset_zero = lambda pair: pair if any(pair) else None
        # config.json files from before isbi_metrics existed lack the key: those runs had none.
        isbi = eval_cfg.isbi_metrics if "isbi_metrics" in eval_cfg else False
        try:
            return cls(
                mode=eval_cfg.mode,
                crop=unset_zero(eval_cfg.crop),
                stride=unset_zero(eval_cfg.stride),
                tile_in=unset_zero(eval_cfg.tile_in),
                flip=eval_cfg.flip,
                scales=eval_cfg.scales,
                isbi_metrics=isbi,
            )
        except _FieldError as e:
            keys = ", ".join(f"config.eval.{k}" for k in e.keys)
            raise ValueError(f"{keys}: {e}") from None

    def override(self, **fields) -> InferenceSettings:
        """A copy with every non-None keyword replacing its field; validated again."""
        return dataclasses.replace(self, **{k: v for k, v in fields.items() if v is not None})

    @property
    def augmentations(self) -> list[tuple[bool, float]]:
        """(flipped, scale) pairs, in the order `predict_logits`' `flip_tta(multiscale_tta(...))`
        sums them."""
        return [(f, s) for f in ((False, True) if self.flip else (False,)) for s in self.scales]


def _mirror_pad(images: jax.Array, pads: tuple[tuple[int, int], ...]) -> jax.Array:
    """images [N, H, W, C] mirror-padded by pads ((top, bottom), (left, right)) px."""
    mode = tiling.mirror_mode(*images.shape[1:3])
    return jnp.pad(images, ((0, 0), *pads, (0, 0)), mode=mode)


def whole_image_logits(model: nn.Module, variables, images: jax.Array) -> jax.Array:
    """images: [N, H, W, C] -> logits [N, H, W, num_classes] float32 (jit-able, static shapes)."""
    n, h, w, _ = images.shape
    # The smallest legal input whose output (input - 2 * context) covers the image.
    c = model.input_context
    in_h, in_w = model.valid_input_size(h + 2 * c), model.valid_input_size(w + 2 * c)
    if (in_h, in_w) == (h, w):
        return model.apply(variables, images, train=False)
    # `c` mirrored px above and left of the image: the output starts at its first pixel.
    pads = ((c, in_h - h - c), (c, in_w - w - c))
    logits = model.apply(variables, _mirror_pad(images, pads), train=False)
    return logits[:, :h, :w]


def _tiled(
    apply_tile: Callable[[jax.Array], jax.Array], images: jax.Array, plan: tiling.TilePlan
) -> jax.Array:
    """Runs `apply_tile` over `plan`'s tiles of the mirror-padded images and averages them.

    Args:
      apply_tile: [N, *plan.tile_in, C] -> [N, *plan.tile_out, K].
      images: [N, H, W, C], the plan's (H, W).

    Returns:
      [N, H, W, K] float32: per pixel, the mean over the tiles covering it.
    """
    n, h, w, c = images.shape
    inputs = _mirror_pad(images, plan.pads)
    out_spec = jax.eval_shape(apply_tile, jax.ShapeDtypeStruct((n, *plan.tile_in, c), inputs.dtype))
    if tuple(out_spec.shape[1:3]) != plan.tile_out:
        raise ValueError(f"tiles give {out_spec.shape[1:3]} px of logits, the plan {plan.tile_out}")
    count = plan.coverage()
    grid = jnp.asarray(np.array(plan.corners, np.int32))

    def body(i, total):
        y, x = grid[i, 0], grid[i, 1]
        tile = jax.lax.dynamic_slice(inputs, (0, y, x, 0), (n, *plan.tile_in, c))
        logits = apply_tile(tile).astype(jnp.float32)
        old = jax.lax.dynamic_slice(total, (0, y, x, 0), logits.shape)
        return jax.lax.dynamic_update_slice(total, old + logits, (0, y, x, 0))

    total = jnp.zeros((n, *plan.out_hw, out_spec.shape[-1]), jnp.float32)
    # A loop, not one stacked batch: the network is traced once and memory holds one tile.
    total = jax.lax.fori_loop(0, len(grid), body, total)
    return (total / count[None, :, :, None])[:, :h, :w]


def sliding_window_logits(
    model: nn.Module,
    variables,
    images: jax.Array,
    *,
    crop: tuple[int, int],
    stride: tuple[int, int],
) -> jax.Array:
    """Sliding-window inference: crops of `crop` every `stride` px, overlaps averaged.

    Each crop goes through `whole_image_logits` (so any model works, valid U-Nets included);
    the last crop along each axis is flush with the border. Images smaller than `crop` are
    mirror-padded at the bottom/right to `crop` and the logits cropped back.

    Args:
      images: [N, H, W, C] float32.
      crop: (h, w) px of one window.
      stride: (h, w) px between window starts; stride == crop tiles without overlap.

    Returns:
      logits [N, H, W, K] float32 (sum of the window logits covering a pixel / their count).
    """
    _, h, w, _ = images.shape
    plan = tiling.sliding_window_plan(h, w, crop, stride)
    return _tiled(functools.partial(whole_image_logits, model, variables), images, plan)


def overlap_tile_logits(
    model: nn.Module, variables, images: jax.Array, *, tile_in: tuple[int, int]
) -> jax.Array:
    """Overlap-tile inference of a valid-convolution U-Net (Ronneberger et al. 2015, Fig. 2).

    The image is mirror-padded by the margin m = (tile_in - tile_out) / 2 on each side; output
    tiles of tile_out = model.output_size(tile_in) then cover it, each predicted from its tile_in
    context, and equal one pass of the net over the whole mirror-padded image
    (`whole_image_logits`). That holds only if every tile starts at a multiple of 2**depth: the
    net's max-pools make it shift-equivariant by multiples of the pooling period only (the
    paper's 388 px tiles at depth 4 would shift the pooling grid by 4 px). So tiles step by
    tile_out rounded down to a multiple of 2**depth, and the bottom/right are mirror-padded by
    less than 2**depth px so that the last tile is flush with the padded border; overlapping
    outputs are then identical and their average is exact.

    Args:
      model: a model with input context (a UNet with padding="VALID").
      images: [N, H, W, C] float32.
      tile_in: (h, w) px of an input tile; each must be a valid U-Net input size whose output
        is at least 2**depth px.

    Returns:
      logits [N, H, W, K] float32.
    """
    _, h, w, _ = images.shape
    plan = tiling.overlap_tile_plan(model, h, w, tile_in)
    return _tiled(lambda tile: model.apply(variables, tile, train=False), images, plan)


def flip_tta(fn: LogitsFn) -> LogitsFn:
    """Wraps `fn` to average its logits on the image and on its left-right mirror.

    Both go through `fn` as one batch of 2N, so the network still compiles once.
    """

    def flipped(model: nn.Module, variables, images: jax.Array) -> jax.Array:
        n = images.shape[0]
        logits = fn(model, variables, jnp.concatenate([images, images[:, :, ::-1]], axis=0))
        return (logits[:n] + logits[n:, :, ::-1]) / 2

    return flipped


def multiscale_tta(fn: LogitsFn, scales: Sequence[float]) -> LogitsFn:
    """Wraps `fn` to average its logits over input scales.

    For each scale s the image is resized (bilinear) to round(s * H) x round(s * W), `fn` runs at
    that size, and its logits are resized back to H x W; scale 1.0 runs on the image untouched.
    Each scale is its own compiled shape.
    """
    scales = tuple(float(s) for s in scales)
    if not scales or min(scales) <= 0:
        raise ValueError(f"scales must be a non-empty list of positive floats, got {scales}")

    def scaled(model: nn.Module, variables, images: jax.Array) -> jax.Array:
        n, h, w, c = images.shape
        total = 0.0
        for s in scales:
            size = (max(1, round(s * h)), max(1, round(s * w)))
            if size == (h, w):
                total = total + fn(model, variables, images)
                continue
            x = jax.image.resize(images, (n, *size, c), method="bilinear")
            logits = fn(model, variables, x)
            total = total + jax.image.resize(logits, (n, h, w, logits.shape[-1]), "bilinear")
        return total / len(scales)

    return scaled


def predict_logits(
    model: nn.Module,
    variables,
    images: jax.Array,
    settings: InferenceSettings = InferenceSettings(),
) -> jax.Array:
    """Logits [N, H, W, K] float32 for images [N, H, W, C] by `settings`' mode and TTA.

    Bind `model` and `settings` with functools.partial before jax.jit.
    """
    if settings.mode == "whole_image":
        fn = whole_image_logits
    elif settings.mode == "sliding_window":
        fn = functools.partial(sliding_window_logits, crop=settings.crop, stride=settings.stride)
    else:
        fn = functools.partial(overlap_tile_logits, tile_in=settings.tile_in)
    if settings.scales != (1.0,):
        fn = multiscale_tta(fn, settings.scales)
    if settings.flip:
        fn = flip_tta(fn)
    return fn(model, variables, images)
