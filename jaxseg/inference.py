"""Inference: logits at an image's own resolution, whatever the model's size constraints.

- FCN: any input size, logits at the input size.
- Padded U-Net: sides must be multiples of 2**depth: the input is mirror-padded up to the next
  multiple and the logits cropped back.
- Valid U-Net: the network sees a mirror-padded input (the paper's overlap-tile border
  extrapolation) large enough that its output covers the image, then the logits are cropped.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxseg.models.unet import UNet, unet_output_size, unet_valid_input_sizes


def _valid_unet_input(size: int, depth: int) -> tuple[int, int]:
    """Smallest valid input side whose output covers `size`, and that output side."""
    for n in unet_valid_input_sizes(size + 2**depth * 4 + 200, depth, min_size=size):
        out = unet_output_size(n, depth)
        if out >= size:
            return n, out
    raise ValueError(f"no valid U-Net input covers an output of {size} px")


def whole_image_logits(model: nn.Module, variables, images: jax.Array) -> jax.Array:
    """images: [N, H, W, C] -> logits [N, H, W, num_classes] float32 (jit-able, static shapes)."""
    n, h, w, _ = images.shape
    if isinstance(model, UNet):
        if model.padding == "SAME":
            m = 2**model.depth
            pads = ((0, 0), (0, -h % m), (0, -w % m), (0, 0))
            top = left = 0
        else:
            (in_h, out_h), (in_w, out_w) = (
                _valid_unet_input(h, model.depth),
                _valid_unet_input(w, model.depth),
            )
            top, left = (in_h - out_h) // 2, (in_w - out_w) // 2
            pads = ((0, 0), (top, in_h - h - top), (left, in_w - w - left), (0, 0))
            top = left = 0  # The output starts at the image's first pixel.
        # Mirroring (not zeros) keeps the statistics the network saw in training at the border.
        x = jnp.pad(images, pads, mode="reflect" if max(h, w) > 1 else "edge")
        logits = model.apply(variables, x, train=False)
        return logits[:, top : top + h, left : left + w]
    return model.apply(variables, images, train=False)
