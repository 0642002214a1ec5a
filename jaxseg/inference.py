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
- `predict_logits`: the above chosen by name (what a config selects).

All are pure and jit-able with the model and sizes static; tiles are visited by a
`lax.fori_loop`, so the network compiles once per tile shape, not once per tile or image.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

# fn(model, variables, images [N, H, W, C]) -> logits [N, H, W, K] float32.
LogitsFn = Callable[[nn.Module, object, jax.Array], jax.Array]

MODES = ("whole_image", "sliding_window", "overlap_tile")


def _mirror_pad(images: jax.Array, pads: tuple[tuple[int, int], ...]) -> jax.Array:
    # Mirroring (not zeros) keeps the statistics the network saw in training at the border;
    # a 1x1 image has nothing to reflect, so its only mirror is the pixel itself.
    mode = "reflect" if max(images.shape[1:3]) > 1 else "edge"
    return jnp.pad(images, pads, mode=mode)


def whole_image_logits(model: nn.Module, variables, images: jax.Array) -> jax.Array:
    """images: [N, H, W, C] -> logits [N, H, W, num_classes] float32 (jit-able, static shapes)."""
    n, h, w, _ = images.shape
    # The smallest legal input whose output (input - 2 * context) covers the image.
    c = model.input_context
    in_h, in_w = model.valid_input_size(h + 2 * c), model.valid_input_size(w + 2 * c)
    if (in_h, in_w) == (h, w):
        return model.apply(variables, images, train=False)
    # `c` mirrored px above and left of the image: the output starts at its first pixel.
    pads = ((0, 0), (c, in_h - h - c), (c, in_w - w - c), (0, 0))
    logits = model.apply(variables, _mirror_pad(images, pads), train=False)
    return logits[:, :h, :w]


def tile_starts(size: int, tile: int, stride: int) -> list[int]:
    """Start offsets of tiles of side `tile` every `stride` px over `size` px, the last flush.

    E.g. size 10, tile 4, stride 3 -> [0, 3, 6]; size 10, tile 4, stride 4 -> [0, 4, 6].
    Requires tile <= size (callers pad smaller images first).
    """
    if not 0 < tile <= size or stride <= 0:
        raise ValueError(f"need 0 < tile <= size and stride > 0, got {tile=} {size=} {stride=}")
    starts = list(range(0, size - tile + 1, stride))
    if starts[-1] != size - tile:
        starts.append(size - tile)
    return starts


def _tiled(
    apply_tile: Callable[[jax.Array], jax.Array],
    inputs: jax.Array,
    *,
    tile_in: tuple[int, int],
    out_hw: tuple[int, int],
    starts: tuple[list[int], list[int]],
) -> jax.Array:
    """Averages `apply_tile` over tiles; tile t reads inputs[y:y+in] and writes out[y:y+out].

    Args:
      apply_tile: [N, *tile_in, C] -> [N, tile_out_h, tile_out_w, K].
      inputs: [N, H_in, W_in, C], already padded so every tile lies inside.
      tile_in: (h, w) of an input tile.
      out_hw: (H, W) of the output; each start (y, x) is both the tile's input and output corner
        (the caller pads the input so that output pixel (i, j) is centred on input (i + m, j + m)).
      starts: static tile corners along H and along W.

    Returns:
      [N, H, W, K] float32: per pixel, the mean over the tiles covering it.
    """
    n, c = inputs.shape[0], inputs.shape[-1]
    grid = np.array([(y, x) for y in starts[0] for x in starts[1]], np.int32)
    out_spec = jax.eval_shape(apply_tile, jax.ShapeDtypeStruct((n, *tile_in, c), inputs.dtype))
    tile_out = out_spec.shape[1:3]
    count = np.zeros(out_hw, np.float32)
    for y, x in grid:
        count[y : y + tile_out[0], x : x + tile_out[1]] += 1
    if count.min() < 1:
        raise ValueError(f"tiles {tile_out} at {starts} leave pixels of {out_hw} uncovered")

    grid_arr = jnp.asarray(grid)

    def body(i, total):
        y, x = grid_arr[i, 0], grid_arr[i, 1]
        tile = jax.lax.dynamic_slice(inputs, (0, y, x, 0), (n, *tile_in, c))
        logits = apply_tile(tile).astype(jnp.float32)
        old = jax.lax.dynamic_slice(total, (0, y, x, 0), logits.shape)
        return jax.lax.dynamic_update_slice(total, old + logits, (0, y, x, 0))

    total = jnp.zeros((n, *out_hw, out_spec.shape[-1]), jnp.float32)
    # A loop, not one stacked batch: the network is traced once and memory holds one tile.
    total = jax.lax.fori_loop(0, len(grid), body, total)
    return total / count[None, :, :, None]


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
    n, h, w, _ = images.shape
    crop, stride = tuple(crop), tuple(stride)
    if len(crop) != 2 or len(stride) != 2 or min(*crop, *stride) <= 0:
        raise ValueError(f"crop and stride must be 2 positive sides, got {crop=} {stride=}")
    ph, pw = max(h, crop[0]), max(w, crop[1])
    x = _mirror_pad(images, ((0, 0), (0, ph - h), (0, pw - w), (0, 0)))
    logits = _tiled(
        functools.partial(whole_image_logits, model, variables),
        x,
        tile_in=crop,
        out_hw=(ph, pw),
        starts=(tile_starts(ph, crop[0], stride[0]), tile_starts(pw, crop[1], stride[1])),
    )
    return logits[:, :h, :w]


def _overlap_tile_axis(size: int, tile_out: int, step: int) -> tuple[int, list[int]]:
    """Padded output side and tile starts along one axis, every start a multiple of `step`."""
    stride = tile_out // step * step
    if stride == 0:
        raise ValueError(
            f"overlap-tile output tiles of {tile_out} px are smaller than the pooling period "
            f"{step} px: use a larger tile_in"
        )
    # The smallest side >= size whose flush last tile still starts on the pooling grid.
    padded = max(size, tile_out)
    padded += (tile_out - padded) % step
    return padded, tile_starts(padded, tile_out, stride)


def check_overlap_tile_model(model: nn.Module) -> None:
    """Raises ValueError unless the model has input context (overlap-tile's margin)."""
    if not model.input_context:
        raise ValueError(
            f"overlap-tile needs a valid-convolution UNet (a model with input context), got "
            f"{type(model).__name__} with none"
        )


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
    check_overlap_tile_model(model)
    n, h, w, _ = images.shape
    tile_in = tuple(tile_in)
    tile_out = tuple(model.output_size(s) for s in tile_in)  # raises if invalid
    m = model.input_context
    # Tiles start on the grid of the pooling period, the model's size step.
    (ph, starts_h), (pw, starts_w) = (
        _overlap_tile_axis(h, tile_out[0], model.size_step),
        _overlap_tile_axis(w, tile_out[1], model.size_step),
    )
    pads = ((0, 0), (m, m + ph - h), (m, m + pw - w), (0, 0))
    logits = _tiled(
        lambda tile: model.apply(variables, tile, train=False),
        _mirror_pad(images, pads),
        tile_in=tile_in,
        out_hw=(ph, pw),
        starts=(starts_h, starts_w),
    )
    return logits[:, :h, :w]


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
    *,
    mode: str = "whole_image",
    crop: tuple[int, int] | None = None,
    stride: tuple[int, int] | None = None,
    tile_in: tuple[int, int] | None = None,
    flip: bool = False,
    scales: Sequence[float] = (1.0,),
) -> jax.Array:
    """Logits [N, H, W, K] float32 for images [N, H, W, C] by the named mode and TTA.

    Args:
      mode: "whole_image", "sliding_window" (needs crop and stride) or "overlap_tile" (needs
        tile_in; valid U-Nets only).
      flip: also average over the left-right mirrored image.
      scales: input scales to average over ((1.0,) = none).

    Bind everything but `variables` and `images` with functools.partial before jax.jit.
    """
    if mode == "whole_image":
        fn = whole_image_logits
    elif mode == "sliding_window":
        if crop is None or stride is None:
            raise ValueError(
                f"inference mode 'sliding_window' needs crop and stride, got {crop=} {stride=}"
            )
        fn = functools.partial(sliding_window_logits, crop=crop, stride=stride)
    elif mode == "overlap_tile":
        if tile_in is None:
            raise ValueError(
                "inference mode 'overlap_tile' needs tile_in (a valid U-Net input size)"
            )
        fn = functools.partial(overlap_tile_logits, tile_in=tile_in)
    else:
        raise ValueError(f"unknown inference mode {mode!r}; valid modes: {MODES}")
    if tuple(scales) != (1.0,):
        fn = multiscale_tta(fn, scales)
    if flip:
        fn = flip_tta(fn)
    return fn(model, variables, images)
