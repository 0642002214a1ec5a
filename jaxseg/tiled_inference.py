"""jaxseg.inference's modes on images of any size: tiles batched through the devices, the image
and its logits kept on the host.

`jaxseg.inference` runs a mode on whole arrays on the device: an aerial or whole-slide image and
its [H, W, K] logits would have to fit in device memory. Here the same modes run with the image
in host memory: windows (sliding window) or tiles (overlap-tile) are cut on the host, sent through
the devices in sharded batches of `TileRunner.batch_size`, and their logits summed into a host
float32 array in the same order `inference._tiled` sums them, so the result equals the device
version up to float rounding. Device memory is therefore bounded by one batch of tiles (its
activations) plus the parameters, whatever the image size; host memory holds the image, the
[H, W, K] logits and one batch of tiles.

Test-time augmentation (flip, scales) also runs here, one augmented image at a time, so the
per-pixel variance of the class probabilities across augmentations comes for free.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxseg import inference, sharding


@dataclasses.dataclass(frozen=True)
class InferenceSettings:
    """An inference mode and its test-time augmentation (the fields of `config.eval`).

    Attributes:
      mode: "whole_image", "sliding_window" or "overlap_tile" (`inference.MODES`).
      crop, stride: sliding_window window and step (height, width) px.
      tile_in: overlap_tile input tile (height, width) px (valid U-Nets).
      flip: also average over the left-right mirrored image.
      scales: input scales to average over ((1.0,) = none).
    """

    mode: str = "whole_image"
    crop: tuple[int, int] | None = None
    stride: tuple[int, int] | None = None
    tile_in: tuple[int, int] | None = None
    flip: bool = False
    scales: tuple[float, ...] = (1.0,)

    def __post_init__(self):
        if self.mode not in inference.MODES:
            raise ValueError(
                f"unknown inference mode {self.mode!r}; valid modes: {inference.MODES}"
            )
        if self.mode == "sliding_window" and (self.crop is None or self.stride is None):
            raise ValueError(
                f"inference mode 'sliding_window' needs crop and stride, got crop={self.crop} "
                f"stride={self.stride}"
            )
        if self.mode == "overlap_tile" and self.tile_in is None:
            raise ValueError(
                "inference mode 'overlap_tile' needs tile_in (a valid U-Net input size)"
            )
        if not self.scales or min(self.scales) <= 0:
            raise ValueError(
                f"scales must be a non-empty list of positive floats, got {self.scales}"
            )

    @classmethod
    def from_eval_config(cls, eval_cfg) -> InferenceSettings:
        """`config.eval` (zero sizes = unset)."""
        nonzero = lambda pair: tuple(int(v) for v in pair) if any(pair) else None
        return cls(
            mode=eval_cfg.mode,
            crop=nonzero(eval_cfg.crop),
            stride=nonzero(eval_cfg.stride),
            tile_in=nonzero(eval_cfg.tile_in),
            flip=bool(eval_cfg.flip),
            scales=tuple(float(s) for s in eval_cfg.scales),
        )

    def override(self, **fields) -> InferenceSettings:
        """A copy with every non-None keyword replacing its field (sizes and scales may be
        lists, as flags give them); validated again."""
        fields = {k: v for k, v in fields.items() if v is not None}
        for key in ("crop", "stride", "tile_in"):
            if key in fields:
                fields[key] = tuple(int(v) for v in fields[key])
        if "scales" in fields:
            fields["scales"] = tuple(float(v) for v in fields["scales"])
        return dataclasses.replace(self, **fields)

    @property
    def augmentations(self) -> list[tuple[bool, float]]:
        """(flipped, scale) pairs, in the order eval's `flip_tta(multiscale_tta(...))` sums."""
        return [(f, s) for f in ((False, True) if self.flip else (False,)) for s in self.scales]


class TileRunner:
    """fn(variables, x [B, h, w, C]) -> [B, h', w', K] over stacks of same-shape arrays, in
    sharded batches of `batch_size` (a multiple of the device count); jitted once per shape."""

    def __init__(self, fn: Callable, variables, mesh: jax.sharding.Mesh, batch_size: int):
        if batch_size % mesh.size:
            raise ValueError(f"batch_size {batch_size} is not a multiple of {mesh.size} devices")
        self.batch_size = batch_size
        self._mesh = mesh
        self._sharding = sharding.batch_sharding(mesh)
        self.variables = jax.device_put(variables, sharding.replicated_sharding(mesh))
        self.fn = jax.jit(fn, out_shardings=self._sharding)

    def __call__(self, arrays: np.ndarray) -> np.ndarray:
        """arrays [M, h, w, C] float32 (host) -> float32 [M, h', w', K] (host)."""
        outputs, pending = [], None
        for start in range(0, len(arrays), self.batch_size):
            chunk = arrays[start : start + self.batch_size]
            n = len(chunk)
            # Pad the last chunk to whole devices; the padding rows are dropped below.
            padded = -n % self._mesh.size
            if padded:
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], padded, axis=0)])
            out = self.fn(self.variables, jax.device_put(chunk, self._sharding))
            # Fetch the previous batch while this one computes.
            if pending is not None:
                outputs.append(np.asarray(jax.device_get(pending[0]))[: pending[1]])
            pending = (out, n)
        if pending is not None:
            outputs.append(np.asarray(jax.device_get(pending[0]))[: pending[1]])
        return np.concatenate(outputs).astype(np.float32, copy=False)


def mirror_pad(image: np.ndarray, pads: tuple[tuple[int, int], ...]) -> np.ndarray:
    """numpy twin of `inference._mirror_pad` for [..., H, W, C] host arrays (same modes)."""
    mode = "reflect" if max(image.shape[-3:-1]) > 1 else "edge"
    return np.pad(image, pads, mode=mode)


def _host_tiled(run: TileRunner, inputs: np.ndarray, *, tile_in, out_hw, starts) -> np.ndarray:
    """Host version of `inference._tiled` for one image: inputs [H_in, W_in, C] ->
    [*out_hw, K] float32, the mean over the tiles covering each pixel (summed in grid order)."""
    grid = [(y, x) for y in starts[0] for x in starts[1]]
    total, count = None, np.zeros(out_hw, np.float32)
    for first in range(0, len(grid), run.batch_size):
        corners = grid[first : first + run.batch_size]
        tiles = np.stack([inputs[y : y + tile_in[0], x : x + tile_in[1]] for y, x in corners])
        logits = run(tiles)
        if total is None:
            total = np.zeros((*out_hw, logits.shape[-1]), np.float32)
        th, tw = logits.shape[1:3]
        for (y, x), tile_logits in zip(corners, logits, strict=True):
            total[y : y + th, x : x + tw] += tile_logits
            count[y : y + th, x : x + tw] += 1
    if count.min() < 1:
        raise ValueError(f"tiles at {starts} leave pixels of {out_hw} uncovered")
    return total / count[:, :, None]


def sliding_window(run: TileRunner, image: np.ndarray, crop, stride) -> np.ndarray:
    """`inference.sliding_window_logits` of one image [H, W, C] with the windows run by `run`
    (a whole-image logits fn) -> logits [H, W, K] float32 on the host."""
    h, w, _ = image.shape
    ph, pw = max(h, crop[0]), max(w, crop[1])
    x = mirror_pad(image, ((0, ph - h), (0, pw - w), (0, 0)))
    starts = (
        inference.tile_starts(ph, crop[0], stride[0]),
        inference.tile_starts(pw, crop[1], stride[1]),
    )
    return _host_tiled(run, x, tile_in=tuple(crop), out_hw=(ph, pw), starts=starts)[:h, :w]


def overlap_tile(run: TileRunner, model: nn.Module, image: np.ndarray, tile_in) -> np.ndarray:
    """`inference.overlap_tile_logits` of one image [H, W, C] with tiles run by `run` (the raw
    valid U-Net) -> logits [H, W, K] float32 on the host."""
    inference.check_overlap_tile_model(model)
    h, w, _ = image.shape
    tile_out = tuple(model.output_size(s) for s in tile_in)
    m = model.input_context
    (ph, starts_h), (pw, starts_w) = (
        inference._overlap_tile_axis(h, tile_out[0], model.size_step),
        inference._overlap_tile_axis(w, tile_out[1], model.size_step),
    )
    pads = ((m, m + ph - h), (m, m + pw - w), (0, 0))
    x = mirror_pad(image, pads)
    starts = (starts_h, starts_w)
    return _host_tiled(run, x, tile_in=tuple(tile_in), out_hw=(ph, pw), starts=starts)[:h, :w]


@functools.lru_cache(maxsize=32)
def _resize_fn(shape: tuple[int, ...]) -> Callable:
    return jax.jit(lambda x: jax.image.resize(x, shape, method="bilinear"))


def resize(x: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of [N, H, W, C] to hw (jax.image.resize, as `inference.multiscale_tta`).

    Runs on the host's CPU backend (the input is committed there), so a big image never needs
    to fit on the accelerator.
    """
    if tuple(x.shape[1:3]) == tuple(hw):
        return x
    shape = (x.shape[0], *hw, x.shape[-1])
    on_host = jax.device_put(x, jax.devices("cpu")[0])
    return np.asarray(_resize_fn(shape)(on_host))


@dataclasses.dataclass
class Engine:
    """A model's inference modes on host images; built once, reused for every image.

    Attributes:
      model: the Linen module.
      whole: TileRunner of `inference.whole_image_logits` (whole images and sliding windows).
      raw: TileRunner of `model.apply` (overlap-tile tiles of a valid U-Net).
      max_tile: whole_image mode on an image with a side above this (px) runs as a sliding
        window of max_tile x max_tile crops at 3/4 stride instead, so device memory stays
        bounded; 0 = never.
    """

    model: nn.Module
    whole: TileRunner
    raw: TileRunner
    max_tile: int = 1024

    @classmethod
    def create(
        cls, model: nn.Module, variables, mesh, *, batch_size: int, max_tile: int = 1024
    ) -> Engine:
        whole_fn = functools.partial(inference.whole_image_logits, model)
        whole = TileRunner(whole_fn, variables, mesh, batch_size)
        apply = lambda v, x: model.apply(v, x, train=False).astype(jnp.float32)
        raw = TileRunner(apply, variables, mesh, batch_size)
        return cls(model, whole, raw, max_tile)

    def mode_logits(self, images: np.ndarray, settings: InferenceSettings) -> np.ndarray:
        """One augmentation-free mode: images [N, H, W, C] -> logits [N, H, W, K] (host)."""
        n, h, w, _ = images.shape
        if settings.mode == "whole_image":
            if self.max_tile and max(h, w) > self.max_tile:
                crop = (min(h, self.max_tile), min(w, self.max_tile))
                stride = tuple(max(1, c * 3 // 4) for c in crop)
                return np.stack([sliding_window(self.whole, im, crop, stride) for im in images])
            return self.whole(images)
        if settings.mode == "sliding_window":
            return np.stack(
                [sliding_window(self.whole, im, settings.crop, settings.stride) for im in images]
            )
        return np.stack([overlap_tile(self.raw, self.model, im, settings.tile_in) for im in images])

    def predict(
        self, images: np.ndarray, settings: InferenceSettings, *, with_variance: bool = False
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Logits averaged over the settings' augmentations, as `inference.predict_logits`.

        Args:
          images: [N, H, W, C] float32, normalised.
          with_variance: also return the TTA variance map.

        Returns:
          (logits [N, H, W, K] float32, variance [N, H, W] float32 or None): the variance is,
          per pixel, the variance across augmentations of the softmax probabilities summed over
          classes (E_a ||p_a - mean_a p_a||^2, in [0, 1)); 0 everywhere without TTA.
        """
        n, h, w, _ = images.shape
        total = sum_p = sum_p2 = None
        augs = settings.augmentations
        for flipped, scale in augs:
            x = images[:, :, ::-1] if flipped else images
            size = (max(1, round(scale * h)), max(1, round(scale * w)))
            logits = self.mode_logits(resize(np.ascontiguousarray(x), size), settings)
            logits = resize(logits, (h, w))
            if flipped:
                logits = logits[:, :, ::-1]
            if total is None:
                total = np.array(logits, np.float32)  # a copy: `logits` may be a view
            else:
                total += logits
            if with_variance:
                p = softmax(logits)
                sum_p = p if sum_p is None else sum_p + p
                p2 = np.sum(p * p, axis=-1)
                sum_p2 = p2 if sum_p2 is None else sum_p2 + p2
        logits = total
        logits /= len(augs)
        if not with_variance:
            return logits, None
        mean_p = sum_p / len(augs)
        # E||p||^2 - ||E p||^2, clipped: rounding can make it a hair negative.
        variance = np.clip(sum_p2 / len(augs) - np.sum(mean_p * mean_p, axis=-1), 0.0, 1.0)
        return logits, variance.astype(np.float32)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over the last axis, float32, stable for large logits (one [..., K] temporary)."""
    p = np.subtract(logits, logits.max(axis=-1, keepdims=True), dtype=np.float32)
    np.exp(p, out=p)
    p /= p.sum(axis=-1, keepdims=True)
    return p


def confidence_maps(probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """probs [..., K] -> (max probability [...], entropy / log K [...]), both float32 in [0, 1].

    Entropy is in nats divided by log K, so 1 means uniform over the K classes.
    """
    k = probs.shape[-1]
    # p log p -> 0 as p -> 0: flooring p inside the log gives exactly 0 * log(1e-30) = 0 there.
    plogp = np.log(np.maximum(probs, 1e-30, dtype=np.float32))
    plogp *= probs
    entropy = -plogp.sum(axis=-1)
    normalised = entropy / np.float32(np.log(k)) if k > 1 else np.zeros_like(entropy)
    max_prob = np.clip(probs.max(axis=-1), 0.0, 1.0).astype(np.float32)
    return max_prob, np.clip(normalised, 0.0, 1.0).astype(np.float32)


def batch_size_for(mesh: jax.sharding.Mesh, per_device: int) -> int:
    """Global tile batch: `per_device` tiles on each device of `mesh`."""
    if per_device < 1:
        raise ValueError(f"batch size per device must be >= 1, got {per_device}")
    return per_device * mesh.size
