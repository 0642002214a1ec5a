"""U-Net (Ronneberger, Fischer & Brox, MICCAI 2015).

The paper's network uses unpadded ("valid") 3x3 convolutions, so its output is smaller than its
input (572 -> 388, Fig. 1) and skips are centre-cropped before concatenation; large images are
segmented tile by tile with mirrored borders (overlap-tile, `jaxseg/inference.py`). The padded
variant ("SAME" convs) keeps the input size for any input whose sides are multiples of
2**depth, and adds the usual modern options (BatchNorm, bilinear upsampling, any width/depth).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxseg.models.layers import UpConv2x2, bilinear_resize_2x, center_crop, conv, max_pool_2x2

PADDINGS = ("VALID", "SAME")
UPSAMPLINGS = ("transpose", "bilinear")

# The paper's init (section 3): Gaussian with std sqrt(2 / N), N = incoming nodes of one neuron;
# untruncated (flax's he_normal truncates at 2 std). For k x k convs flax's fan_in = k*k*C_in is N.
he_normal = nn.initializers.variance_scaling(2.0, "fan_in", "normal")
# A 2x2 stride-2 up-conv's output pixel sees one input pixel per channel (the blocks do not
# overlap), so N = C_in, while flax's fan_in counts the kernel's 2*2*C_in: scale by 4.
he_normal_upconv = nn.initializers.variance_scaling(2.0 * 4, "fan_in", "normal")


def unet_sizes(input_size: int, depth: int = 4) -> dict[str, list[int]]:
    """Spatial sizes through a valid-convolution U-Net (one side; the paper's Fig. 1).

    Returns {"down": [size after each conv of each contracting level, incl. the bottom],
    "up": [size after each up-conv and each conv of each expanding level], "output": [..]}.
    For 572: down 570, 568 | 284, 282, 280 | 140, 138, 136 | 68, 66, 64 | 32, 30, 28;
    up 56, 54, 52 | 104, 102, 100 | 200, 198, 196 | 392, 390, 388; output 388.

    Raises:
      ValueError: if a max-pool would see an odd size or a size drops to <= 0.
    """
    try:
        return _sizes(input_size, depth)
    except ValueError as e:
        raise ValueError(f"{e}; nearest valid sizes: {_nearest_valid(input_size, depth)}") from None


def _sizes(input_size: int, depth: int) -> dict[str, list[int]]:
    n, down, up = input_size, [], []
    for level in range(depth + 1):
        if level > 0:
            if n % 2:
                raise ValueError(
                    f"input size {input_size} is invalid for a depth-{depth} valid U-Net: "
                    f"a 2x2 max-pool at level {level} sees odd size {n}"
                )
            n //= 2
            down.append(n)
        n -= 2
        down.append(n)
        n -= 2
        down.append(n)
        if n <= 0:
            raise ValueError(f"input size {input_size} is too small for a depth-{depth} U-Net")
    for _ in range(depth):
        n *= 2
        up += [n, n - 2, n - 4]
        n -= 4
    if n <= 0:
        raise ValueError(f"input size {input_size} is too small for a depth-{depth} U-Net")
    return {"down": down, "up": up, "output": [n]}


def unet_output_size(input_size: int, depth: int = 4) -> int:
    """Output side of a valid-convolution U-Net for a square input side (572 -> 388)."""
    return unet_sizes(input_size, depth)["output"][0]


def _is_valid(n: int, depth: int) -> bool:
    try:
        _sizes(n, depth)
    except ValueError:
        return False
    return True


def _nearest_valid(n: int, depth: int) -> list[int]:
    below = next((m for m in range(n, 0, -1) if _is_valid(m, depth)), None)
    above = next(m for m in range(n, n + 10 * 2**depth + 200) if _is_valid(m, depth))
    return [m for m in (below, above) if m is not None]


def unet_valid_input_sizes(max_size: int, depth: int = 4, min_size: int = 1) -> list[int]:
    """All input sides in [min_size, max_size] a valid U-Net accepts (they step by 2**depth)."""
    return [n for n in range(min_size, max_size + 1) if _is_valid(n, depth)]


class ConvBlock(nn.Module):
    """Two 3x3 convs, each followed by (optional BatchNorm and) ReLU."""

    features: int
    padding: str
    use_batchnorm: bool
    dtype: Any

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        for i in (1, 2):
            x = conv(
                self.features,
                (3, 3),
                padding=self.padding,
                use_bias=not self.use_batchnorm,
                kernel_init=he_normal,
                dtype=self.dtype,
                name=f"conv{i}",
            )(x)
            if self.use_batchnorm:
                x = nn.BatchNorm(use_running_average=not train, dtype=self.dtype, name=f"bn{i}")(x)
            x = nn.relu(x)
        return x


class UNet(nn.Module):
    """U-Net.

    Attributes:
      num_classes: output classes (2 in the paper).
      base_width: channels at the first level (64 in the paper); level i has base_width * 2**i.
      depth: number of 2x2 max-pools (4 in the paper).
      padding: "VALID" (the paper: output smaller than input) or "SAME" (output = input size;
        sides must be multiples of 2**depth).
      use_batchnorm: BatchNorm after every conv (not in the paper).
      upsampling: "transpose" (the paper's 2x2 up-convolution halving the channels) or "bilinear"
        (a 1x1 conv halving the channels and a bilinear 2x resize).
      dropout_rate: dropout at the end of the contracting path (the paper's section 3.1), placed
        as in the authors' release: on the last contracting level's output (which feeds both its
        skip and the bottom block) and on the bottom block's output.
      dtype: computation dtype (params stay float32; logits are returned in float32).
    """

    num_classes: int = 2
    base_width: int = 64
    depth: int = 4
    padding: str = "VALID"
    use_batchnorm: bool = False
    upsampling: str = "transpose"
    dropout_rate: float = 0.5
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        """x: [N, H, W, C_in] -> logits [N, H', W', num_classes] float32.

        H' = H for "SAME"; H' = unet_output_size(H) for "VALID" (centre of the input).
        """
        if self.padding not in PADDINGS:
            raise ValueError(f"padding must be one of {PADDINGS}, got {self.padding!r}")
        if self.upsampling not in UPSAMPLINGS:
            raise ValueError(f"upsampling must be one of {UPSAMPLINGS}, got {self.upsampling!r}")
        h, w = x.shape[1:3]
        if self.padding == "SAME" and (h % 2**self.depth or w % 2**self.depth):
            raise ValueError(
                f"a padded U-Net of depth {self.depth} needs sides that are multiples of "
                f"{2**self.depth}, got {h}x{w}"
            )
        if self.padding == "VALID":
            unet_sizes(h, self.depth), unet_sizes(w, self.depth)  # raise early, naming sizes

        block = lambda i, name: ConvBlock(
            self.base_width * 2**i, self.padding, self.use_batchnorm, self.dtype, name=name
        )
        skips = []
        for i in range(self.depth):
            x = block(i, f"down{i + 1}")(x, train=train)
            if i == self.depth - 1:  # the end of the contracting path: before skip and pool
                drop = nn.Dropout(self.dropout_rate, name=f"dropout{i + 1}")
                x = drop(x, deterministic=not train)
            skips.append(x)
            x = max_pool_2x2(x)
        x = block(self.depth, "bottom")(x, train=train)
        x = nn.Dropout(self.dropout_rate, deterministic=not train, name="dropout_bottom")(x)
        for i in reversed(range(self.depth)):
            features = self.base_width * 2**i
            if self.upsampling == "transpose":
                x = UpConv2x2(
                    features, kernel_init=he_normal_upconv, dtype=self.dtype, name=f"upconv{i + 1}"
                )(x)
            else:
                # The 1x1 conv and the resize are both linear and the resize weights sum to 1,
                # so they commute: convolving first is the same map at a quarter of the FLOPs.
                x = nn.Conv(
                    features, (1, 1), kernel_init=he_normal, dtype=self.dtype, name=f"upconv{i + 1}"
                )(x)
                x = bilinear_resize_2x(x)
            skip = center_crop(skips[i], x.shape[1], x.shape[2])
            x = jnp.concatenate([skip, x], axis=-1)
            x = block(i, f"up{i + 1}")(x, train=train)
        logits = nn.Conv(
            self.num_classes, (1, 1), kernel_init=he_normal, dtype=self.dtype, name="output"
        )(x)
        return logits.astype(jnp.float32)
