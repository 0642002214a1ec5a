"""U-Net (Ronneberger, Fischer & Brox, MICCAI 2015).

The paper's network uses unpadded ("valid") 3x3 convolutions, so its output is smaller than its
input (572 -> 388, Fig. 1) and skips are centre-cropped before concatenation; large images are
segmented tile by tile with mirrored borders (overlap-tile, `jaxseg/inference.py`). The padded
variant ("SAME" convs) keeps the input size for any input whose sides are multiples of
2**depth, and adds the usual modern options (BatchNorm, bilinear upsampling, any width/depth).
"""

from __future__ import annotations

import itertools
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

    Size rule (the members every model states; `jaxseg.inference`, prediction, export and the
    loss's label crop use them instead of asking which model they have):
      valid convolutions: each 3x3 conv takes 2 px and each level's max-pool must see an even
        side, so the legal input sides step by 2**depth (572, 588, ... at depth 4; the smallest
        is 188 -> 4), and output = input - 2 * input_context with input_context = 6 * 2**depth
        - 4 px (92 at depth 4: 572 -> 388), the same for every legal side;
      "SAME": output = input for sides that are multiples of 2**depth.
    `valid_input_size` rounds a side up to the next legal one; illegal sides raise ValueError.
    """

    num_classes: int = 2
    base_width: int = 64
    depth: int = 4
    padding: str = "VALID"
    use_batchnorm: bool = False
    upsampling: str = "transpose"
    dropout_rate: float = 0.5
    dtype: Any = jnp.float32

    @property
    def input_context(self) -> int:
        """Input px on each side that the output does not cover (0 for "SAME")."""
        return 6 * 2**self.depth - 4 if self.padding == "VALID" else 0

    @property
    def size_step(self) -> int:
        """Legal input sides step by this many px: the pooling period 2**depth, by whose
        multiples the network is also shift-equivariant (what overlap-tile relies on)."""
        return 2**self.depth

    @property
    def symbolic_multiple(self) -> int | None:
        """Sides may be symbolic (jax.export) as multiples of this; None: static sizes only
        (bilinear upsampling builds its matrices from them, and inference mirror-pads a valid
        U-Net by amounts computed from them)."""
        return 2**self.depth if (self.padding, self.upsampling) == ("SAME", "transpose") else None

    def output_size(self, input_size: int) -> int:
        """Output side for a legal input side; ValueError naming the nearest legal ones."""
        if self.padding == "VALID":
            return unet_output_size(input_size, self.depth)
        if input_size <= 0 or input_size % self.size_step:
            raise ValueError(
                f"a padded U-Net of depth {self.depth} needs sides that are multiples of "
                f"{self.size_step}, got {input_size}"
            )
        return input_size

    def valid_input_size(self, size: int) -> int:
        """The smallest legal input side >= size."""
        if self.padding == "VALID":
            return next(n for n in itertools.count(max(size, 1)) if _is_valid(n, self.depth))
        return max(1, -(-size // self.size_step)) * self.size_step

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        """x: [N, H, W, C_in] -> logits [N, H', W', num_classes] float32.

        H' = output_size(H): H for "SAME"; H - 2 * input_context for "VALID" (centre of the
        input). Illegal sides raise ValueError, naming them.
        """
        if self.padding not in PADDINGS:
            raise ValueError(f"padding must be one of {PADDINGS}, got {self.padding!r}")
        if self.upsampling not in UPSAMPLINGS:
            raise ValueError(f"upsampling must be one of {UPSAMPLINGS}, got {self.upsampling!r}")
        h, w = x.shape[1:3]
        self.output_size(h), self.output_size(w)  # raise early, naming sizes

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
