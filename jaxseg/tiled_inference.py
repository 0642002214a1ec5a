"""jaxseg.inference's modes on images of any size: tiles batched through the devices, the image
and its logits kept on the host.

`jaxseg.inference` runs a mode on whole arrays on the device: an aerial or whole-slide image and
its [H, W, K] logits would have to fit in device memory. Here the same modes run with the image
in host memory: windows (sliding window) or tiles (overlap-tile) are cut on the host, sent through
the devices in sharded batches of `TileRunner.batch_size`, and their logits summed into a host
float32 array. Where the tiles lie and in which order they are summed is `jaxseg.tiling`'s plan,
the one the device modes follow, so the result equals the device version up to float rounding.
Device memory is therefore bounded by one batch of tiles (its activations) plus the parameters,
whatever the image size; host memory holds the image, the [H, W, K] logits and one batch of
tiles. The mode and its TTA are an `inference.InferenceSettings` (default: the run's config.eval).

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

from jaxseg import inference, sharding, tiling


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


def _host_tiled(run: TileRunner, image: np.ndarray, plan: tiling.TilePlan) -> np.ndarray:
    """`inference._tiled` of one host image [H, W, C] (the plan's H, W), tiles run by `run` in
    batches -> logits [H, W, K] float32, the mean over the tiles covering each pixel, summed in
    the plan's corner order."""
    h, w, _ = image.shape
    inputs = np.pad(image, (*plan.pads, (0, 0)), mode=tiling.mirror_mode(h, w))
    (ih, iw), (oh, ow) = plan.tile_in, plan.tile_out
    corners, total = plan.corners, None
    for first in range(0, len(corners), run.batch_size):
        batch = corners[first : first + run.batch_size]
        logits = run(np.stack([inputs[y : y + ih, x : x + iw] for y, x in batch]))
        if logits.shape[1:3] != (oh, ow):
            raise ValueError(f"tiles give {logits.shape[1:3]} px of logits, the plan {(oh, ow)}")
        if total is None:
            total = np.zeros((*plan.out_hw, logits.shape[-1]), np.float32)
        for (y, x), tile_logits in zip(batch, logits, strict=True):
            total[y : y + oh, x : x + ow] += tile_logits
    return (total / plan.coverage()[:, :, None])[:h, :w]


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

    def mode_logits(self, images: np.ndarray, settings: inference.InferenceSettings) -> np.ndarray:
        """One augmentation-free mode: images [N, H, W, C] -> logits [N, H, W, K] (host)."""
        n, h, w, _ = images.shape
        if settings.mode == "whole_image":
            if not self.max_tile or max(h, w) <= self.max_tile:
                return self.whole(images)
            crop = (min(h, self.max_tile), min(w, self.max_tile))
            stride = tuple(max(1, c * 3 // 4) for c in crop)
            run, plan = self.whole, tiling.sliding_window_plan(h, w, crop, stride)
        elif settings.mode == "sliding_window":
            run, plan = self.whole, tiling.sliding_window_plan(h, w, settings.crop, settings.stride)
        else:
            run, plan = self.raw, tiling.overlap_tile_plan(self.model, h, w, settings.tile_in)
        return np.stack([_host_tiled(run, image, plan) for image in images])

    def predict(
        self,
        images: np.ndarray,
        settings: inference.InferenceSettings,
        *,
        with_variance: bool = False,
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
