"""Tile planning, shared by on-device inference (`jaxseg.inference`) and host inference
(`jaxseg.tiled_inference`): how one image is mirror-padded, where its windows or overlap tiles
lie, and how many tiles cover each output pixel.

A `TilePlan` is pure geometry (Python ints and numpy, no jax). The two executors only cut, run
and sum the tiles a plan names, in its corner order: the device in a `lax.fori_loop` over dynamic
slices, the host in batches of tiles sent through the devices. So both give the same logits up to
float rounding, and a new tiling is one plan function here plus a branch in each executor.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np


def mirror_mode(height: int, width: int) -> str:
    """The `np.pad` / `jnp.pad` mode of jaxseg's border extrapolation for a height x width image.

    Mirroring (not zeros) keeps the statistics the network saw in training at the border;
    a 1x1 image has nothing to reflect, so its only mirror is the pixel itself.
    """
    return "reflect" if max(height, width) > 1 else "edge"


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


def overlap_tile_axis(size: int, tile_out: int, step: int) -> tuple[int, list[int]]:
    """Padded output side and tile starts along one axis, every start a multiple of `step`.

    E.g. size 30, tile_out 12, step 4 -> (32, [0, 12, 20]): 18 = 30 - 12 would be flush but off
    the pooling grid, so the side is padded to 32.
    """
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


@dataclasses.dataclass(frozen=True)
class TilePlan:
    """The tiling of one image: pad it, run a tile at each corner, average, crop back.

    Tile t reads padded_input[y : y + tile_in] and adds its logits into out[y : y + tile_out],
    where (y, x) is the same corner for both (the padding puts output pixel (i, j) at the
    centre of its input context).

    Attributes:
      pads: mirror padding ((top, bottom), (left, right)) px of the image before tiling.
      tile_in: (h, w) px of an input tile.
      tile_out: (h, w) px of a tile's logits.
      out_hw: (H, W) px of the summed output; the image's logits are its [:height, :width].
      starts: tile corners along H and along W.
    """

    pads: tuple[tuple[int, int], tuple[int, int]]
    tile_in: tuple[int, int]
    tile_out: tuple[int, int]
    out_hw: tuple[int, int]
    starts: tuple[tuple[int, ...], tuple[int, ...]]

    @property
    def corners(self) -> list[tuple[int, int]]:
        """Every tile's (y, x), rows first: the order both executors sum in."""
        return [(y, x) for y in self.starts[0] for x in self.starts[1]]

    def coverage(self) -> np.ndarray:
        """float32 [*out_hw]: how many tiles cover each output pixel (the averaging divisor)."""
        count = np.zeros(self.out_hw, np.float32)
        th, tw = self.tile_out
        for y, x in self.corners:
            count[y : y + th, x : x + tw] += 1
        if count.min() < 1:
            raise ValueError(
                f"tiles {self.tile_out} at {self.starts} leave pixels of {self.out_hw} uncovered"
            )
        return count


def sliding_window_plan(
    height: int, width: int, crop: Sequence[int], stride: Sequence[int]
) -> TilePlan:
    """Windows of `crop` every `stride` px, the last one flush with the border; an image smaller
    than `crop` is mirror-padded at the bottom/right up to it. A window's logits are its own
    whole-image logits, so tile_out = tile_in = crop."""
    crop, stride = tuple(int(v) for v in crop), tuple(int(v) for v in stride)
    if len(crop) != 2 or len(stride) != 2 or min(*crop, *stride) <= 0:
        raise ValueError(f"crop and stride must be 2 positive sides, got {crop=} {stride=}")
    ph, pw = max(height, crop[0]), max(width, crop[1])
    starts_h, starts_w = tile_starts(ph, crop[0], stride[0]), tile_starts(pw, crop[1], stride[1])
    return TilePlan(
        pads=((0, ph - height), (0, pw - width)),
        tile_in=crop,
        tile_out=crop,
        out_hw=(ph, pw),
        starts=(tuple(starts_h), tuple(starts_w)),
    )


def overlap_tile_plan(model, height: int, width: int, tile_in: Sequence[int]) -> TilePlan:
    """The U-Net paper's overlap-tile (Fig. 2) for a model with input context (a valid U-Net).

    The image is mirror-padded by the margin m = model.input_context on each side, plus less than
    one pooling period (model.size_step) at the bottom/right, so that output tiles of
    model.output_size(tile_in) start on the pooling grid and the last is flush (see
    `overlap_tile_axis`; `inference.overlap_tile_logits` says why the grid matters).

    Raises:
      ValueError if the model has no input context, tile_in is not a valid input size, or its
      output is smaller than one pooling period.
    """
    if not model.input_context:
        raise ValueError(
            f"overlap-tile needs a valid-convolution UNet (a model with input context), got "
            f"{type(model).__name__} with none"
        )
    tile_in = tuple(int(s) for s in tile_in)
    tile_out = tuple(model.output_size(s) for s in tile_in)  # raises if invalid
    m = model.input_context
    ph, starts_h = overlap_tile_axis(height, tile_out[0], model.size_step)
    pw, starts_w = overlap_tile_axis(width, tile_out[1], model.size_step)
    return TilePlan(
        pads=((m, m + ph - height), (m, m + pw - width)),
        tile_in=tile_in,
        tile_out=tile_out,
        out_hw=(ph, pw),
        starts=(tuple(starts_h), tuple(starts_w)),
    )
