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
