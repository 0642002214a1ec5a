"""Every fast formulation in jaxseg.models.layers equals the straightforward one."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxseg.models import layers


def _rand(shape, seed=0):
    # Continuous random values: no ties, so max-pool gradients are unambiguous.
    return jax.random.normal(jax.random.key(seed), shape, jnp.float32)


def _value_and_grad_equal(f_fast, f_ref, x, atol=1e-5):
    y_fast, vjp_fast = jax.vjp(f_fast, x)
    y_ref, vjp_ref = jax.vjp(f_ref, x)
    np.testing.assert_allclose(y_fast, y_ref, atol=atol)
    cot = _rand(y_ref.shape, seed=1)
    np.testing.assert_allclose(vjp_fast(cot)[0], vjp_ref(cot)[0], atol=atol)


def _modules_equal(fast, ref, x, *, atol, grad_atol, rtol=1e-7):
    """fast and ref have the same parameter shapes and, with the same (randomised, nonzero-bias)
    values, the same outputs and gradients w.r.t. params and input. Returns fast's output."""
    params = fast.init(jax.random.key(0), x)
    params = jax.tree.map(lambda p: p + _rand(p.shape, seed=2), params)  # nonzero bias too
    assert jax.tree.map(jnp.shape, ref.init(jax.random.key(0), x)) == jax.tree.map(
        jnp.shape, params
    )
    y_fast, y_ref = fast.apply(params, x), ref.apply(params, x)
    assert y_fast.shape == y_ref.shape
    np.testing.assert_allclose(y_fast, y_ref, atol=atol, rtol=rtol)
    grad = lambda m: jax.grad(lambda p, x: jnp.sum(m.apply(p, x) ** 2), argnums=(0, 1))(params, x)
    close = lambda a, b: np.testing.assert_allclose(a, b, atol=grad_atol, rtol=rtol)
    jax.tree.map(close, grad(fast), grad(ref))
    return y_fast


@pytest.mark.parametrize("shape", [(2, 8, 12, 3), (1, 7, 9, 2)])
def test_max_pool_floor_equals_reduce_window(shape):
    x = _rand(shape)
    _value_and_grad_equal(
        lambda x: layers.max_pool_2x2(x),
        lambda x: nn.max_pool(x, (2, 2), strides=(2, 2)),
        x,
    )


def test_max_pool_ceil_mode_equals_caffe_rounding():
    x = _rand((2, 7, 9, 3))
    # Caffe's ceil-mode pooling = reduce_window over an input padded (bottom/right) with -inf.
    ref = lambda x: nn.max_pool(x, (2, 2), strides=(2, 2), padding=((0, 1), (0, 1)))
    assert layers.max_pool_2x2(x, ceil_mode=True).shape == (2, 4, 5, 3)
    _value_and_grad_equal(lambda x: layers.max_pool_2x2(x, ceil_mode=True), ref, x)


def test_upconv_equals_conv_transpose_in_outputs_and_gradients():
    x = _rand((2, 5, 6, 4))
    fast = layers.UpConv2x2(3)
    ref = nn.ConvTranspose(3, (2, 2), strides=(2, 2), padding="VALID")
    y = _modules_equal(fast, ref, x, atol=1e-5, grad_atol=1e-4)
    assert y.shape == (2, 10, 12, 3)


@pytest.mark.parametrize(
    "kernel, padding, shape",
    [
        ((7, 7), "VALID", (2, 9, 10, 5)),
        ((7, 7), "SAME", (1, 4, 6, 5)),
        ((2, 4), "SAME", (2, 5, 7, 3)),
    ],
)
def test_patch_matmul_conv_equals_conv_in_outputs_and_gradients(kernel, padding, shape):
    x = _rand(shape)
    fast = layers.PatchMatmulConv(6, kernel, padding)
    ref = nn.Conv(6, kernel, padding=padding)
    _modules_equal(fast, ref, x, atol=1e-4, grad_atol=1e-3, rtol=1e-5)


def test_bilinear_resize_equals_jax_image_resize():
    x = _rand((2, 5, 7, 3))
    _value_and_grad_equal(
        layers.bilinear_resize_2x,
        lambda x: jax.image.resize(x, (2, 10, 14, 3), "bilinear"),
        x,
    )


def test_bilinear_kernel_matches_reference_filter():
    np.testing.assert_allclose(layers.bilinear_kernel_1d(4), [0.25, 0.75, 0.75, 0.25])
    np.testing.assert_allclose(layers.bilinear_kernel_1d(3), [0.5, 1.0, 0.5])


@pytest.mark.parametrize("factor", [2, 8, 32])
def test_bilinear_upsampling_of_constant_and_ramp(factor):
    """Away from the borders, the frozen upsampling reproduces constants and linear ramps.

    After the centring crop of f/2, output pixel y sits at input coordinate (y - (f-1)/2) / f,
    so a ramp r_i = a*i + b must come out as a*(y - (f-1)/2)/f + b.
    """
    n = 6
    up = layers.BilinearUpsample(factor)
    const = jnp.full((1, n, n, 2), 3.0)
    out = up.apply({}, const)[0, factor // 2 :, factor // 2 :, 0]
    interior = slice(factor, (n - 1) * factor)
    np.testing.assert_allclose(out[interior, interior], 3.0, rtol=1e-6)

    i = jnp.arange(n, dtype=jnp.float32)
    ramp = jnp.broadcast_to((2.0 * i + 1.0)[None, :, None, None], (1, n, n, 1))
    out = up.apply({}, ramp)[0, factor // 2 :, factor // 2 :, 0]
    y = np.arange(out.shape[0], dtype=np.float32)
    expected = 2.0 * (y - (factor - 1) / 2) / factor + 1.0
    mid = (n * factor) // 2  # an interior column: full support along W
    np.testing.assert_allclose(out[interior, mid], expected[interior], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("factor", [2, 8])
def test_frozen_bilinear_matmul_equals_learnable_conv_transpose_at_init(factor):
    x = _rand((2, 4, 5, 3))
    frozen = layers.BilinearUpsample(factor)
    learnable = layers.BilinearUpsample(factor, learnable=True)
    params = learnable.init(jax.random.key(0), x)
    assert frozen.init(jax.random.key(0), x) == {}
    np.testing.assert_allclose(frozen.apply({}, x), learnable.apply(params, x), atol=1e-5)


def test_center_crop_and_crop_errors():
    x = jnp.arange(2 * 6 * 8 * 1).reshape(2, 6, 8, 1)
    np.testing.assert_array_equal(layers.center_crop(x, 2, 4), x[:, 2:4, 2:6])
    with pytest.raises(ValueError, match="exceeds"):
        layers.crop(x, 5, 0, 2, 2)


# bf16 tolerances: the bf16 paths round the float32 sum once, to bf16 (relative step 2**-8 =
# 0.0039), like XLA's bf16 conv; the two differ only in summation order and, in the backward
# pass, in where the bf16 cotangent is rounded. Outputs are O(1..10) here, so a few bf16 steps
# of the largest value: rtol 2e-2 with atol scaled to the tensor's magnitude.
def _assert_close_bf16(a, b):
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    scale = np.max(np.abs(b))
    np.testing.assert_allclose(a, b, rtol=2e-2, atol=2e-2 * scale)


def _conv_pair_equal(fast, ref, x):
    """fast and ref share parameters and agree in outputs and in gradients w.r.t. params and x,
    exactly-ish in f32 and to bf16 rounding in bf16."""
    bf16 = x.dtype == jnp.bfloat16
    params = fast.init(jax.random.key(0), x)
    params = jax.tree.map(lambda p: p + _rand(p.shape, seed=2) * 0.1, params)
    assert jax.tree.map(jnp.shape, ref.init(jax.random.key(0), x)) == jax.tree.map(
        jnp.shape, params
    )
    loss = lambda m: lambda p, x: jnp.sum(m.apply(p, x).astype(jnp.float32) * cot)
    y_fast, y_ref = fast.apply(params, x), ref.apply(params, x)
    assert y_fast.shape == y_ref.shape and y_fast.dtype == y_ref.dtype
    cot = _rand(y_ref.shape, seed=3)
    g_fast = jax.grad(loss(fast), argnums=(0, 1))(params, x)
    g_ref = jax.grad(loss(ref), argnums=(0, 1))(params, x)
    if bf16:
        _assert_close_bf16(y_fast, y_ref)
        jax.tree.map(_assert_close_bf16, g_fast, g_ref)
    else:
        np.testing.assert_allclose(y_fast, y_ref, atol=1e-4, rtol=1e-5)
        close = lambda a, b: np.testing.assert_allclose(a, b, atol=1e-3, rtol=1e-5)
        jax.tree.map(close, g_fast, g_ref)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize(
    "kernel, padding, use_bias",
    [
        ((3, 3), "SAME", False),  # U-Net (padded, BatchNorm)
        ((3, 3), "VALID", True),  # the paper's U-Net
        ((3, 3), ((2, 2), (2, 2)), True),  # VGG-style explicit padding, wider than the kernel
        ((1, 1), "VALID", True),  # VGG's fc7
        ((2, 3), ((0, 1), (2, 0)), True),  # asymmetric kernel and padding
    ],
)
def test_shifted_matmul_conv_equals_conv(kernel, padding, use_bias, dtype, monkeypatch):
    # Few channels keep the test fast; the threshold is lowered so the shifted matmuls run.
    monkeypatch.setattr(layers, "SHIFTED_MATMUL_MIN_CHANNELS", 4)
    x = _rand((2, 7, 9, 6)).astype(dtype)
    fast = layers.ShiftedMatmulConv(5, kernel, padding, use_bias=use_bias, dtype=dtype)
    ref = nn.Conv(5, kernel, padding=padding, use_bias=use_bias, dtype=dtype)
    _conv_pair_equal(fast, ref, x)


def test_shifted_matmul_conv_bf16_uses_f32_accumulating_dots_in_both_passes(monkeypatch):
    """The point of the formulation: every product, forward and backward, is a bf16 x bf16
    dot_general accumulating in float32, and no convolution is left in the step."""
    monkeypatch.setattr(layers, "SHIFTED_MATMUL_MIN_CHANNELS", 4)
    x = _rand((1, 6, 6, 8)).astype(jnp.bfloat16)
    m = layers.ShiftedMatmulConv(4, (3, 3), dtype=jnp.bfloat16)
    params = m.init(jax.random.key(0), x)
    step = lambda p, x: jnp.sum(m.apply(p, x).astype(jnp.float32) ** 2)
    hlo = jax.jit(jax.grad(step, argnums=(0, 1))).lower(params, x).as_text()
    dots = [line for line in hlo.splitlines() if "stablehlo.dot_general" in line]
    assert "convolution" not in hlo
    assert len(dots) == 3 * 9  # forward, input gradient, kernel gradient: one per tap each
    for line in dots:
        assert line.rstrip().endswith("f32>"), line  # f32 result ...
        assert line.count("bf16") == 2, line  # ... of two bf16 operands


def test_wide_inputs_take_the_matmuls_and_narrow_ones_xla_conv():
    m = layers.ShiftedMatmulConv(4, (3, 3), dtype=jnp.bfloat16)
    for channels, expect_conv in ((layers.SHIFTED_MATMUL_MIN_CHANNELS, False), (3, True)):
        x = jnp.ones((1, 4, 4, channels), jnp.bfloat16)
        params = m.init(jax.random.key(0), x)
        hlo = jax.jit(m.apply).lower(params, x).as_text()
        assert ("convolution" in hlo) == expect_conv
    # float32 always keeps XLA's convolution (its f32 conv beats f32 matmuls on CPU).
    x = jnp.ones((1, 4, 4, layers.SHIFTED_MATMUL_MIN_CHANNELS))
    m32 = layers.ShiftedMatmulConv(4, (3, 3))
    assert "convolution" in jax.jit(m32.apply).lower(m32.init(jax.random.key(0), x), x).as_text()


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_upconv_and_patch_matmul_conv_in_bf16(dtype):
    x = _rand((2, 5, 6, 4)).astype(dtype)
    _conv_pair_equal(
        layers.UpConv2x2(3, dtype=dtype),
        nn.ConvTranspose(3, (2, 2), strides=(2, 2), padding="VALID", dtype=dtype),
        x,
    )
    x = _rand((2, 9, 10, 5)).astype(dtype)
    _conv_pair_equal(
        layers.PatchMatmulConv(6, (7, 7), dtype=dtype),
        nn.Conv(6, (7, 7), padding="VALID", dtype=dtype),
        x,
    )


def test_conv_factory_sends_wide_paddings_to_wide_padding_conv(monkeypatch):
    for platform in ("cpu", "gpu"):
        monkeypatch.setattr(jax, "default_backend", lambda platform=platform: platform)
        wide = layers.conv(64, (3, 3), padding=((100, 100), (100, 100)), dtype=jnp.bfloat16)
        assert type(wide) is layers.WidePaddingConv and wide.padding == 100
        assert wide.dtype == jnp.bfloat16
        assert type(layers.conv(64, (3, 3), padding=3)) is layers.WidePaddingConv
        for narrow in (((1, 1), (1, 1)), ((2, 2), (2, 2)), ((100, 100), (1, 1)), "SAME"):
            made = layers.conv(64, (3, 3), padding=narrow)
            assert type(made) is not layers.WidePaddingConv, narrow


def test_conv_factory_keeps_native_convs_off_cpu(monkeypatch):
    kwargs = dict(padding="SAME", use_bias=False, kernel_init=nn.initializers.he_normal())
    assert isinstance(layers.conv(8, (3, 3), **kwargs), layers.ShiftedMatmulConv)
    for platform in ("gpu", "tpu"):
        monkeypatch.setattr(jax, "default_backend", lambda platform=platform: platform)
        made = layers.conv(8, (3, 3), dtype=jnp.bfloat16, **kwargs)
        assert type(made) is nn.Conv
        assert made.kernel_init is kwargs["kernel_init"] and made.dtype == jnp.bfloat16


def test_bf16_matmul_products_are_f32_accumulated():
    # 512 ones: a bf16 running sum stalls at 256 (256 + 1 rounds back to 256); f32 does not.
    a = jnp.ones((2, 512), jnp.bfloat16)
    b = jnp.ones((512, 3), jnp.bfloat16)
    y = layers.matmul(a, b)
    assert y.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(y, np.float32), 512.0)
    da, db = jax.grad(lambda a, b: jnp.sum(layers.matmul(a, b).astype(jnp.float32)), (0, 1))(a, b)
    assert da.dtype == db.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(da, np.float32), 3.0)
    np.testing.assert_array_equal(np.asarray(db, np.float32), 2.0)


@pytest.mark.parametrize("platform", ["cpu", "gpu"])  # XLA's VALID conv; the im2col matmul
def test_wide_padding_conv_equals_padded_conv(platform, monkeypatch):
    # FCN's conv1_1 pads 100 px; 6 px around a 5 x 7 map is as much wider than the 3x3 kernel.
    monkeypatch.setattr(jax, "default_backend", lambda: platform)
    x = _rand((2, 5, 7, 3))
    fast = layers.WidePaddingConv(4, (3, 3), 6)
    ref = nn.Conv(4, (3, 3), padding=((6, 6), (6, 6)))
    y = _modules_equal(fast, ref, x, atol=1e-5, grad_atol=1e-4, rtol=1e-5)
    assert y.shape == (2, 15, 17, 4)
