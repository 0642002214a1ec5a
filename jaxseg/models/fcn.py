"""FCN-32s, FCN-16s and FCN-8s (Long, Shelhamer & Darrell, CVPR 2015) on a VGG16 trunk.

Two alignment modes:
- "reference": the authors' Caffe release. conv1_1 is padded by 100, pools round up, fc6 is a
  valid 7x7 conv, the transposed convs have no padding, and Crop layers take the published
  offsets (FCN-32s: 19; FCN-16s: 5 for pool4, 27 final; FCN-8s: 5, 9, 31). Any input size works.
- "padded": the input is zero-padded (bottom/right) to a multiple of 32, every conv keeps its
  size (fc6 "SAME"), each k = 2s transposed conv is cropped by s/2 so its bilinear kernel is
  centred on the coarse pixels, and the logits are cropped back to the input size.
Either way the logits come out at the input's resolution.

The scoring layers are zero-initialised as in the reference release; the upsampling layers are
initialised to bilinear interpolation and are frozen (no parameters) unless `learnable_upsampling`.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxseg.models.layers import BilinearUpsample, crop
from jaxseg.models.vgg import VGG16

ALIGNMENTS = ("reference", "padded")
# Crop offsets of the reference release (voc-fcn{32,16,8}s/net.py), by the layer they crop.
_REFERENCE_OFFSETS = {"score_pool4c": 5, "score_pool3c": 9, 32: 19, 16: 27, 8: 31}


class FCN(nn.Module):
    """Fully convolutional network on VGG16.

    Attributes:
      num_classes: number of output classes (21 for PASCAL VOC).
      output_stride: 32, 16 or 8 (FCN-32s, FCN-16s, FCN-8s).
      alignment: "reference" or "padded" (see the module docstring).
      learnable_upsampling: learn the bilinear-initialised transposed convs. False (the reference
        release: every deconvolution at lr_mult 0) makes them fixed, parameter-free bilinear maps.
      at_once: the "at-once" FCN-8s recipe: scale pool4 by 0.01 and pool3 by 1e-4 before scoring.
      dropout_rate: dropout after fc6 and fc7.
      dtype: computation dtype (params stay float32; logits are returned in float32).

    Size rule (the members every model states, see `UNet`): any input side, logits at the input
    size, no context; "padded" zero-pads to a multiple of 32 inside and crops back, "reference"
    pads by 100 and crops by the release's offsets.
    """

    num_classes: int = 21
    output_stride: int = 8
    alignment: str = "reference"
    learnable_upsampling: bool = False
    at_once: bool = False
    dropout_rate: float = 0.5
    dtype: Any = jnp.float32

    @property
    def input_context(self) -> int:
        """Input px on each side that the output does not cover: none."""
        return 0

    @property
    def size_step(self) -> int:
        """Legal input sides step by this many px: every side is legal."""
        return 1

    @property
    def symbolic_multiple(self) -> int | None:
        """Sides may be symbolic (jax.export) as multiples of this; None: static sizes only
        (frozen upsampling builds its matrices in numpy, reference crops from static sizes)."""
        return 32 if self.alignment == "padded" and self.learnable_upsampling else None

    def output_size(self, input_size: int) -> int:
        """Output side for an input side: the same."""
        if input_size <= 0:
            raise ValueError(f"an FCN needs sides of at least 1 px, got {input_size}")
        return input_size

    def valid_input_size(self, size: int) -> int:
        """The smallest legal input side >= size: size itself."""
        return max(size, 1)

    def _score(self, x: jax.Array, name: str, scale: float = 1.0) -> jax.Array:
        if scale != 1.0:
            x = x * scale
        return nn.Conv(
            self.num_classes,
            (1, 1),
            kernel_init=nn.initializers.zeros,
            dtype=self.dtype,
            name=name,
        )(x)

    def _upsample(self, x: jax.Array, factor: int, name: str) -> jax.Array:
        return BilinearUpsample(
            factor, learnable=self.learnable_upsampling, dtype=self.dtype, name=name
        )(x)

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        """x: [N, H, W, 3] normalised images -> logits [N, H, W, num_classes] float32."""
        if self.output_stride not in (8, 16, 32):
            raise ValueError(f"output_stride must be 8, 16 or 32, got {self.output_stride}")
        if self.alignment not in ALIGNMENTS:
            raise ValueError(f"alignment must be one of {ALIGNMENTS}, got {self.alignment!r}")
        reference = self.alignment == "reference"
        n, height, width, _ = x.shape
        if not reference:
            x = jnp.pad(x, ((0, 0), (0, -height % 32), (0, -width % 32), (0, 0)))
        feats = VGG16(
            first_conv_padding=100 if reference else 1,
            ceil_mode=reference,
            fc6_padding="VALID" if reference else "SAME",
            dropout_rate=self.dropout_rate,
            dtype=self.dtype,
            name="backbone",
        )(x, train=train)

        def align(score: jax.Array, like: jax.Array, reference_offset: int) -> jax.Array:
            # Crops a finer score map to the upsampled coarse one (Caffe's Crop layer).
            offset = reference_offset if reference else 0
            return crop(score, offset, offset, like.shape[1], like.shape[2])

        def trim(up: jax.Array, factor: int, size: tuple[int, int]) -> jax.Array:
            # Padded mode: a k = 2f transposed conv is centred by dropping f/2 at the top/left.
            return crop(up, factor // 2, factor // 2, *size)

        score = self._score(feats["fc7"], "score_fr")
        if self.output_stride == 32:
            up, factor = self._upsample(score, 32, "upscore"), 32
        else:
            up = self._upsample(score, 2, "upscore2")
            pool4 = self._score(feats["pool4"], "score_pool4", 0.01 if self.at_once else 1.0)
            if not reference:
                up = trim(up, 2, pool4.shape[1:3])
            score = up + align(pool4, up, _REFERENCE_OFFSETS["score_pool4c"])
            if self.output_stride == 16:
                up, factor = self._upsample(score, 16, "upscore16"), 16
            else:
                up = self._upsample(score, 2, "upscore_pool4")
                pool3 = self._score(feats["pool3"], "score_pool3", 1e-4 if self.at_once else 1.0)
                if not reference:
                    up = trim(up, 2, pool3.shape[1:3])
                score = up + align(pool3, up, _REFERENCE_OFFSETS["score_pool3c"])
                up, factor = self._upsample(score, 8, "upscore8"), 8
        if reference:
            offset = _REFERENCE_OFFSETS[self.output_stride]
            logits = crop(up, offset, offset, height, width)
        else:
            logits = trim(up, factor, (height, width))
        return logits.astype(jnp.float32)
