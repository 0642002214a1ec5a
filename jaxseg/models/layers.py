"""Building blocks shared by FCN and U-Net, written for fast gradients on every backend.

XLA:CPU differentiates two common ops very slowly: `reduce_window` max-pooling (its gradient is a
`select_and_scatter`) and 2x2 stride-2 transposed convolutions (a dilated convolution in the
backward pass). The functions here compute the same mathematics with reshapes, strided slices and
matmuls, whose gradients are cheap everywhere. `tests/test_layers.py` proves each one equal, in
outputs and gradients, to the straightforward flax/lax formulation.

bfloat16 on CPUs with bf16 dot instructions (AVX512_BF16 / AMX): XLA:CPU runs bf16 convolutions
and bf16 -> bf16 matmuls without them, but a bf16 x bf16 `dot_general` with
`preferred_element_type=float32` uses them (BENCHMARKS.md). `matmul` and `ShiftedMatmulConv` use
that form in the forward pass and, through a custom VJP, in both backward products; `conv` picks
them on the CPU backend only.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
Dtype = Any


def max_pool_2x2(x: Array, *, ceil_mode: bool = False) -> Array:
    """2x2 max-pooling with stride 2.

    Args:
      x: [N, H, W, C].
      ceil_mode: Caffe's rounding (as in the FCN reference release): an odd trailing row/column
        forms a window of its own. With False (floor), it is dropped, as in `nn.max_pool`.

    Returns:
      [N, H', W', C] with H' = ceil(H / 2) or floor(H / 2).
    """
    n, h, w, c = x.shape
    if ceil_mode and (h % 2 or w % 2):
        # Caffe's partial windows only see real pixels: padding with the lowest value is the same.
        low = jnp.finfo(x.dtype).min if jnp.issubdtype(x.dtype, jnp.floating) else 0
        x = jnp.pad(x, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), constant_values=low)
    else:
        x = x[:, : h - h % 2, : w - w % 2, :]
    n, h, w, c = x.shape
    # A reshape + max over the window axes: its gradient is an elementwise select, not XLA's
    # slow select-and-scatter. Ties (rare for float activations) share the gradient equally.
    return jnp.max(x.reshape(n, h // 2, 2, w // 2, 2, c), axis=(2, 4))


def _bf16_dot(a: Array, b: Array, contract: int) -> Array:
    """Contracts the last `contract` axes of a with the first of b, accumulating in float32."""
    dims = ((tuple(range(a.ndim - contract, a.ndim)), tuple(range(contract))), ((), ()))
    return jax.lax.dot_general(a, b, dims, preferred_element_type=jnp.float32)


@jax.custom_vjp
def _bf16_matmul(a: Array, b: Array) -> Array:
    return _bf16_dot(a, b, 1).astype(a.dtype)


def _bf16_matmul_fwd(a, b):
    return _bf16_matmul(a, b), (a, b)


def _bf16_matmul_bwd(res, g):
    # Autodiff would multiply the float32 product's cotangent by the bf16 operands in float32;
    # rounding the cotangent to bf16 first (as PyTorch's autocast does) keeps both backward
    # products on the bf16 dot instructions, still accumulating in float32.
    a, b = res
    g = g.astype(a.dtype)
    da = _bf16_dot(g, b.T, 1).astype(a.dtype)
    batch = tuple(range(a.ndim - 1))
    db = jax.lax.dot_general(a, g, ((batch, batch), ((), ())), preferred_element_type=jnp.float32)
    return da, db.astype(b.dtype)


_bf16_matmul.defvjp(_bf16_matmul_fwd, _bf16_matmul_bwd)


def matmul(a: Array, b: Array) -> Array:
    """a: [..., K] @ b: [K, M] -> [..., M] in a's dtype; bf16 operands accumulate in float32.

    Equals `a @ b` up to where the float32 sum is rounded (once, to bf16, at the end): XLA's bf16
    matmul rounds the same way, but without the CPU's bf16 dot instructions.
    """
    if a.dtype == jnp.bfloat16 and b.dtype == jnp.bfloat16:
        return _bf16_matmul(a, b)
    return a @ b


def depth_to_space_2x2(x: Array) -> Array:
    """[N, H, W, 2, 2, C] (a 2x2 block per pixel) -> [N, 2H, 2W, C]."""
    n, h, w, _, _, c = x.shape
    return x.transpose(0, 1, 3, 2, 4, 5).reshape(n, 2 * h, 2 * w, c)


def _conv_params(module: nn.Module, x: Array, window: tuple[int, int]):
    """Creates nn.Conv-style params (kernel [*window, C_in, features], optional zero bias) in
    `module` (which has features, use_bias, dtype, param_dtype, kernel_init) and returns
    (x, kernel, bias) promoted to its compute dtype."""
    kernel = module.param(
        "kernel", module.kernel_init, (*window, x.shape[-1], module.features), module.param_dtype
    )
    bias = (
        module.param("bias", nn.initializers.zeros, (module.features,), module.param_dtype)
        if module.use_bias
        else None
    )
    return nn.dtypes.promote_dtype(x, kernel, bias, dtype=module.dtype)


class UpConv2x2(nn.Module):
    """The U-Net paper's "2x2 up-convolution": a stride-2 transposed conv with a 2x2 kernel.

    With kernel size equal to stride the output blocks do not overlap, so the op is one matmul
    ([N*H*W, C_in] x [C_in, 4*C_out]) followed by depth-to-space. Parameters have the shapes of
    `nn.ConvTranspose(features, (2, 2), strides=(2, 2))`: kernel [2, 2, C_in, C_out], bias [C_out],
    and the same values give the same outputs.
    """

    features: int
    use_bias: bool = True
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    kernel_init: Callable = nn.initializers.lecun_normal()

    @nn.compact
    def __call__(self, x: Array) -> Array:
        """x: [N, H, W, C_in] -> [N, 2H, 2W, features]."""
        x, kernel, bias = _conv_params(self, x, (2, 2))
        # nn.ConvTranspose (transpose_kernel=False) writes x[h, w] * kernel[1 - i, 1 - j] to output
        # pixel (2h + i, 2w + j); flipping here keeps checkpoints interchangeable with it.
        c_in, c_out = kernel.shape[2:]
        w = kernel[::-1, ::-1].transpose(2, 0, 1, 3).reshape(c_in, 4 * c_out)
        y = depth_to_space_2x2(matmul(x, w).reshape(*x.shape[:3], 2, 2, c_out))
        return y if bias is None else y + bias


def im2col(x: Array, kernel_size: tuple[int, int]) -> Array:
    """[N, H, W, C] -> [N, H - kh + 1, W - kw + 1, kh * kw * C]: each valid window as one row.

    Ordered (i, j, c), like a [kh, kw, C, C_out] kernel reshaped to [kh * kw * C, C_out].
    """
    kh, kw = kernel_size
    ho, wo = x.shape[1] - kh + 1, x.shape[2] - kw + 1
    return jnp.concatenate(
        [x[:, i : i + ho, j : j + wo, :] for i in range(kh) for j in range(kw)], axis=-1
    )


class PatchMatmulConv(nn.Module):
    """A stride-1 conv as one matmul over im2col patches; for big kernels on small maps.

    FCN's fc6 (7x7, 512 -> 4096 on pool5) is the case: XLA:CPU ran its weight gradient at well
    under half the speed of the same FLOPs as a matmul, while the patches of a pool5-sized map
    are small (49 x 512 values per output pixel). Parameters have the names, shapes and
    meaning of `nn.Conv(features, kernel_size, padding=padding)`'s, so weights and checkpoints
    are interchangeable.
    """

    features: int
    kernel_size: tuple[int, int]
    padding: str = "VALID"  # "VALID" or "SAME" (stride 1: total padding k - 1, extra after)
    use_bias: bool = True
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    kernel_init: Callable = nn.initializers.lecun_normal()

    @nn.compact
    def __call__(self, x: Array) -> Array:
        kh, kw = self.kernel_size
        x, kernel, bias = _conv_params(self, x, (kh, kw))
        if self.padding == "SAME":
            pads = [((k - 1) // 2, k - 1 - (k - 1) // 2) for k in (kh, kw)]
            x = jnp.pad(x, ((0, 0), *pads, (0, 0)))
        elif self.padding != "VALID":
            raise ValueError(f"padding must be 'VALID' or 'SAME', got {self.padding!r}")
        y = matmul(im2col(x, (kh, kw)), kernel.reshape(-1, self.features))
        return y if bias is None else y + bias


class WidePaddingConv(nn.Module):
    """A stride-1 conv whose zero padding is wider than its kernel: FCN's conv1_1 (100 pixels).

    XLA computes the kernel gradient of `nn.Conv(padding=100)` as a convolution whose window is
    the whole image: on an AVX-512 CPU 13-34x slower than the same sums over the padded input, and
    on an H200 cuDNN runs it as a 512 x 512 "filter" over 8 channels, 55 of FCN-8s' 75 ms train
    step (benchmarks/bench_first_conv.py; BENCHMARKS.md). Here the zeros are padded in first and
    the conv is VALID: on the CPU as XLA's convolution; on accelerators, whose compilers fold a
    pad back into the convolution, as one matmul over im2col patches (27 values per pixel for
    an RGB 3x3 conv), whose kernel gradient is a plain matrix product. Parameters are
    `nn.Conv(features, kernel_size, padding=padding)`'s.
    """

    features: int
    kernel_size: tuple[int, int]
    padding: int
    use_bias: bool = True
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    kernel_init: Callable = nn.initializers.lecun_normal()

    @nn.compact
    def __call__(self, x: Array) -> Array:
        """x: [N, H, W, C_in] -> [N, H + 2 * padding - kh + 1, W + ..., features]."""
        kernel_size = tuple(self.kernel_size)
        x, kernel, bias = _conv_params(self, x, kernel_size)
        p = self.padding
        x = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
        if jax.default_backend() == "cpu":
            y = jax.lax.conv_general_dilated(
                x, kernel, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")
            )
        else:
            y = matmul(im2col(x, kernel_size), kernel.reshape(-1, self.features))
        return y if bias is None else y + bias


Padding = str | tuple[tuple[int, int], tuple[int, int]]


def _explicit_padding(padding, kernel_size: tuple[int, int]) -> tuple[tuple[int, int], ...]:
    """nn.Conv's stride-1 padding ("SAME": extra at the end, "VALID", or explicit) as pairs."""
    if padding == "SAME":
        return tuple(((k - 1) // 2, k - 1 - (k - 1) // 2) for k in kernel_size)
    if padding == "VALID":
        return ((0, 0), (0, 0))
    if isinstance(padding, int):
        return ((padding, padding), (padding, padding))
    return tuple((int(lo), int(hi)) for lo, hi in padding)


def _pad_hw(x: Array, pads) -> Array:
    """Pads (or, for negative widths, crops) H and W of [N, H, W, C]."""
    zero = jnp.zeros((), x.dtype)
    return jax.lax.pad(x, zero, ((0, 0, 0), *((lo, hi, 0) for lo, hi in pads), (0, 0, 0)))


def _shifted_dots(xp: Array, kernel: Array) -> Array:
    """Valid stride-1 correlation of xp [N, Hp, Wp, C] with kernel [kh, kw, C, O] as kh * kw
    matmuls of shifted views, summed in float32: [N, Hp - kh + 1, Wp - kw + 1, O] float32."""
    kh, kw = kernel.shape[:2]
    ho, wo = xp.shape[1] - kh + 1, xp.shape[2] - kw + 1
    out = None
    for i in range(kh):
        for j in range(kw):
            term = _bf16_dot(xp[:, i : i + ho, j : j + wo, :], kernel[i, j], 1)
            out = term if out is None else out + term
    return out


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _shifted_matmul_conv(x: Array, kernel: Array, pads) -> Array:
    return _shifted_dots(_pad_hw(x, pads), kernel).astype(x.dtype)


def _shifted_matmul_conv_fwd(x, kernel, pads):
    return _shifted_matmul_conv(x, kernel, pads), (x, kernel)


def _shifted_matmul_conv_bwd(pads, res, g):
    x, kernel = res
    kh, kw = kernel.shape[:2]
    g = g.astype(x.dtype)  # bf16 cotangent: both products below use the bf16 dot instructions
    # Input gradient: the full correlation of g with the flipped, transposed kernel, cropped to
    # the unpadded input (padding k - 1 - p; negative widths crop the conv's own padding).
    back = tuple((k - 1 - lo, k - 1 - hi) for k, (lo, hi) in zip((kh, kw), pads))
    flipped = kernel[::-1, ::-1].transpose(0, 1, 3, 2)
    dx = _shifted_dots(_pad_hw(g, back), flipped).astype(x.dtype)
    # Kernel gradient: one [C, N*H*W] x [N*H*W, O] product per tap.
    xp = _pad_hw(x, pads)
    ho, wo = g.shape[1:3]
    batch = (0, 1, 2)
    taps = [
        jax.lax.dot_general(
            xp[:, i : i + ho, j : j + wo, :],
            g,
            ((batch, batch), ((), ())),
            preferred_element_type=jnp.float32,
        )
        for i in range(kh)
        for j in range(kw)
    ]
    dkernel = jnp.stack(taps).reshape(kernel.shape).astype(kernel.dtype)
    return dx, dkernel


_shifted_matmul_conv.defvjp(_shifted_matmul_conv_fwd, _shifted_matmul_conv_bwd)

# Smallest input channel count for which the shifted matmuls beat XLA:CPU's bf16 convolution:
# below it copying the nine shifted views costs more than the faster bf16 products save (the
# copies grow with N*H*W*C, the products' advantage with C). Measured with
# benchmarks/bench_conv_forms.py; the figures are in BENCHMARKS.md.
SHIFTED_MATMUL_MIN_CHANNELS = 256


class ShiftedMatmulConv(nn.Module):
    """A stride-1 conv as kh * kw bf16 matmuls of shifted views, accumulated in float32.

    For bf16 on CPUs with bf16 dot instructions (see the module docstring); other dtypes, and
    inputs with fewer than SHIFTED_MATMUL_MIN_CHANNELS channels, run XLA's convolution. The
    parameters are `nn.Conv(features, kernel_size, padding=padding)`'s (kernel
    [kh, kw, C_in, features], bias [features]), so checkpoints and weight transplants do not
    depend on which op runs.
    """

    features: int
    kernel_size: tuple[int, int]
    padding: Padding = "SAME"
    use_bias: bool = True
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    kernel_init: Callable = nn.initializers.lecun_normal()

    @nn.compact
    def __call__(self, x: Array) -> Array:
        """x: [N, H, W, C_in] -> [N, H', W', features] (H' as nn.Conv's, stride 1)."""
        kernel_size = tuple(self.kernel_size)
        x, kernel, bias = _conv_params(self, x, kernel_size)
        pads = _explicit_padding(self.padding, kernel_size)
        if x.dtype == jnp.bfloat16 and x.shape[-1] >= SHIFTED_MATMUL_MIN_CHANNELS:
            y = _shifted_matmul_conv(x, kernel, pads)
        else:
            y = jax.lax.conv_general_dilated(
                x, kernel, (1, 1), pads, dimension_numbers=("NHWC", "HWIO", "NHWC")
            )
        return y if bias is None else y + bias


def _uniform_padding(padding, kernel_size: tuple[int, int]) -> int | None:
    """p for a zero padding of p on every side (an int or pairs), else None (names: none)."""
    if isinstance(padding, str):
        return None
    sides = {side for pair in _explicit_padding(padding, kernel_size) for side in pair}
    return sides.pop() if len(sides) == 1 else None


def conv(features: int, kernel_size: tuple[int, int], **kwargs) -> nn.Module:
    """The stride-1 conv layer for this backend: `nn.Conv(features, kernel_size, **kwargs)` on
    accelerators (XLA's native convolutions are their fast path) and `ShiftedMatmulConv` (same
    parameters, same outputs) on CPU, where bf16 convs are faster as bf16 matmuls. A zero padding
    at least as wide as the kernel on every side (FCN's conv1_1: 100) takes `WidePaddingConv`
    on every backend."""
    pad = _uniform_padding(kwargs.get("padding", "SAME"), tuple(kernel_size))
    if pad is not None and pad >= max(kernel_size):
        kwargs = {k: v for k, v in kwargs.items() if k != "padding"}
        return WidePaddingConv(features, tuple(kernel_size), pad, **kwargs)
    if jax.default_backend() == "cpu":
        return ShiftedMatmulConv(features, tuple(kernel_size), **kwargs)
    return nn.Conv(features, kernel_size, **kwargs)


def bilinear_kernel_1d(size: int) -> np.ndarray:
    """The 1-D bilinear interpolation filter of the FCN reference release (`upsample_filt`).

    A transposed convolution with stride s and this filter of size 2s (outer product with itself
    in 2-D) is bilinear upsampling by s.
    """
    factor = (size + 1) // 2
    center = factor - 1 if size % 2 == 1 else factor - 0.5
    return (1 - np.abs(np.arange(size) - center) / factor).astype(np.float32)


def bilinear_kernel_init(key, shape, dtype=jnp.float32):
    """Initialiser for a [k, k, C, C] transposed-conv kernel: bilinear on the diagonal, 0 off it.

    Each class channel is upsampled on its own, as in the reference release's surgery.
    """
    del key
    k, k2, c_in, c_out = shape
    if k != k2 or c_in != c_out:
        raise ValueError(f"bilinear init needs a square kernel and C_in == C_out, got {shape}")
    f = bilinear_kernel_1d(k)
    kernel = np.zeros(shape, np.float32)
    kernel[:, :, np.arange(c_in), np.arange(c_in)] = np.outer(f, f)[:, :, None]
    return jnp.asarray(kernel, dtype)


def upsampling_matrix(n_in: int, factor: int, kernel_size: int) -> np.ndarray:
    """[n_out, n_in] matrix of a 1-D stride-`factor` transposed conv with the bilinear filter.

    n_out = (n_in - 1) * factor + kernel_size: the full ("VALID") output of Caffe's Deconvolution.
    """
    f = bilinear_kernel_1d(kernel_size)
    n_out = (n_in - 1) * factor + kernel_size
    m = np.zeros((n_out, n_in), np.float32)
    for i in range(n_in):
        m[i * factor : i * factor + kernel_size, i] = f
    return m


class BilinearUpsample(nn.Module):
    """FCN's in-network upsampling: a transposed conv initialised to bilinear interpolation.

    Output is the full transposed-conv output, (H - 1) * factor + 2 * factor per side (Caffe's
    Deconvolution with kernel 2 * factor, no padding); callers crop. Frozen (the FCN paper's
    final upsampling is fixed) it has no parameters and runs as two small matmuls, since the
    bilinear kernel is separable and acts on each channel alone. Learnable, it is a bias-free
    [2f, 2f, C, C] `nn.ConvTranspose` starting from the same kernel (so both agree at init).
    """

    factor: int
    learnable: bool = False
    dtype: Dtype | None = None

    @nn.compact
    def __call__(self, x: Array) -> Array:
        """x: [N, H, W, C] -> [N, (H-1)*factor + 2*factor, (W-1)*factor + 2*factor, C]."""
        k = 2 * self.factor
        if self.learnable:
            return nn.ConvTranspose(
                x.shape[-1],
                (k, k),
                strides=(self.factor, self.factor),
                padding="VALID",
                use_bias=False,
                kernel_init=bilinear_kernel_init,
                dtype=self.dtype,
                name="deconv",
            )(x)
        uh = jnp.asarray(upsampling_matrix(x.shape[1], self.factor, k), x.dtype)
        uw = jnp.asarray(upsampling_matrix(x.shape[2], self.factor, k), x.dtype)
        return jnp.einsum("yi,xj,nijc->nyxc", uh, uw, x)


def bilinear_resize_2x(x: Array) -> Array:
    """Bilinear 2x upsampling with half-pixel centres (`jax.image.resize(..., "bilinear")`).

    Written as two [2H, H] / [2W, W] matmuls (edge-clamped), whose gradients are fast on CPU.
    """

    def matrix(n: int) -> np.ndarray:
        m = np.zeros((2 * n, n), np.float32)
        for o in range(2 * n):
            src = (o + 0.5) / 2 - 0.5
            lo = int(np.floor(src))
            t = src - lo
            m[o, min(max(lo, 0), n - 1)] += 1 - t
            m[o, min(max(lo + 1, 0), n - 1)] += t
        return m

    uh = jnp.asarray(matrix(x.shape[1]), x.dtype)
    uw = jnp.asarray(matrix(x.shape[2]), x.dtype)
    return jnp.einsum("yi,xj,nijc->nyxc", uh, uw, x)


def crop(x: Array, offset_h: int, offset_w: int, height: int, width: int) -> Array:
    """x[:, oh:oh+height, ow:ow+width, :], checking the window fits (Caffe's Crop layer)."""
    if offset_h + height > x.shape[1] or offset_w + width > x.shape[2]:
        raise ValueError(
            f"crop window {(offset_h, offset_w, height, width)} exceeds feature map {x.shape}"
        )
    return x[:, offset_h : offset_h + height, offset_w : offset_w + width, :]


def center_crop(x: Array, height: int, width: int) -> Array:
    """Crops the centre [height, width] of x: [N, H, W, C] (U-Net's crop-and-copy)."""
    return crop(x, (x.shape[1] - height) // 2, (x.shape[2] - width) // 2, height, width)
