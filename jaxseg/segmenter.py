"""The notebook API: `jaxseg.load(workdir)` -> a `Segmenter` that segments arrays or files.

  seg = jaxseg.load("runs/default")
  labels = seg.predict(image)                    # uint8 [H, W, 3] -> uint8 class ids [H, W]
  labels = seg.predict(batch, mode="sliding_window", crop=(128, 128), stride=(96, 96))
  result = seg.predict(image, flip=True, return_probs=True)   # Segmentation(labels, probs, ..)
  seg.classes, seg.palette

The same path as predict.py (`jaxseg.prediction.segment_batch`), so masks are identical.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from jaxseg import prediction


def _to_unit(image: np.ndarray, channels: int) -> np.ndarray:
    """uint8 / uint16 / float [0, 1] image [H, W] or [H, W, C] -> float32 [H, W, channels]."""
    image = np.asarray(image)
    if image.dtype == np.uint8:
        x = image.astype(np.float32) / 255
    elif image.dtype == np.uint16:
        x = image.astype(np.float32) / 65535
    elif np.issubdtype(image.dtype, np.floating):
        x = image.astype(np.float32)
        if x.size and (x.min() < 0 or x.max() > 1):
            raise ValueError(
                f"float images must be in [0, 1], got [{x.min():.3g}, {x.max():.3g}]; pass "
                "uint8 pixels or divide by 255"
            )
    else:
        raise ValueError(f"images must be uint8, uint16 or float in [0, 1], got {image.dtype}")
    if x.ndim == 2:
        x = x[..., None]
    if x.shape[-1] == channels:
        return x
    if channels == 3 and x.shape[-1] == 1:
        return np.repeat(x, 3, axis=-1)
    if channels == 1 and x.shape[-1] == 3:
        # ITU-R 601-2 luma, what PIL's convert("L") (read_image) uses.
        return (x @ np.asarray([0.299, 0.587, 0.114], np.float32))[..., None]
    raise ValueError(f"images have {x.shape[-1]} channels; this model takes {channels}")


class Segmenter:
    """A restored run, ready to segment images in memory.

    Attributes:
      classes: class names, index = class id.
      palette: RGB per class id.
      settings: the default inference mode and TTA (the run's config.eval).
      predictor: the underlying `jaxseg.prediction.Predictor`.
    """

    def __init__(self, predictor: prediction.Predictor):
        self.predictor = predictor
        self.classes = predictor.class_names
        self.palette = predictor.palette
        self.settings = predictor.settings

    @classmethod
    def load(cls, workdir: str, checkpoint: str | int = "best", **kwargs) -> Segmenter:
        """Restores `checkpoint` of `workdir` (kwargs: see `prediction.load_predictor`)."""
        return cls(prediction.load_predictor(os.fspath(workdir), checkpoint, **kwargs))

    def predict(
        self,
        images,
        mode: str | None = None,
        *,
        crop: Sequence[int] | None = None,
        stride: Sequence[int] | None = None,
        tile_in: Sequence[int] | None = None,
        flip: bool | None = None,
        scales: Sequence[float] | None = None,
        return_probs: bool = False,
    ):
        """Segments one image, a batch, a list of images of any sizes, or image file paths.

        Args:
          images: [H, W, C] or [H, W] array, [N, H, W, C] batch, a file path, or a list of
            arrays / paths; uint8 (0-255), uint16 (0-65535) or float in [0, 1].
          mode, crop, stride, tile_in, flip, scales: inference mode and TTA; None = the run's
            config.eval field.
          return_probs: return `prediction.Segmentation`s (labels, probs [H, W, K], TTA
            variance) instead of label arrays.

        Returns:
          uint8 class ids [H, W] for one image, [N, H, W] for a batch array, a list for a list;
          or the same structure of `Segmentation` with `return_probs`.
        """
        settings = self.settings.override(
            mode=mode, crop=crop, stride=stride, tile_in=tile_in, flip=flip, scales=scales
        )
        single = isinstance(images, (str, os.PathLike)) or (
            isinstance(images, np.ndarray) and images.ndim in (2, 3) and not _is_batch(images)
        )
        is_array_batch = isinstance(images, np.ndarray) and not single
        items = [images] if single else list(images)
        channels = self.predictor.channels
        units = [
            prediction.read_image(os.fspath(x), channels)
            if isinstance(x, (str, os.PathLike))
            else _to_unit(x, channels)
            for x in items
        ]
        results = [None] * len(units)
        with_variance = return_probs and len(settings.augmentations) > 1
        shapes = [x.shape[:2] for x in units]
        for chunk in prediction.batch_plan(shapes, settings, self.predictor):
            out = prediction.segment_batch(
                self.predictor,
                [units[i] for i in chunk],
                settings,
                with_probs=return_probs,
                with_variance=with_variance,
            )
            for i, r in zip(chunk, out, strict=True):
                results[i] = r if return_probs else r.labels
        if single:
            return results[0]
        return np.stack(results) if is_array_batch and not return_probs else results


def _is_batch(array: np.ndarray) -> bool:
    # [H, W, C] has C in (1, 3, 4); a 3-d array with another last axis is [N, H, W] greyscale.
    return array.ndim == 3 and array.shape[-1] not in (1, 3, 4)
