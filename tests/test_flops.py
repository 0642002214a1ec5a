"""benchmarks.flops counts convolution and matmul FLOPs exactly, through nesting and gradients."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from benchmarks import flops
from jaxseg.models import UNet


def _conv(x, w, padding="SAME", groups=1):
    return jax.lax.conv_general_dilated(
        x,
        w,
        (1, 1),
        padding,
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=groups,
    )


X = jax.ShapeDtypeStruct((2, 10, 12, 4), jnp.float32)
W = jax.ShapeDtypeStruct((3, 3, 4, 8), jnp.float32)
CONV = 2 * (2 * 10 * 12 * 8) * (3 * 3 * 4)  # 2 x outputs x (window x input channels)


def test_conv_and_matmul_counts():
    assert flops.count_flops(_conv, X, W) == CONV
    assert flops.count_flops(lambda x, w: _conv(x, w, "VALID"), X, W) == CONV * 8 * 10 // 120
    grouped = jax.ShapeDtypeStruct((3, 3, 2, 8), jnp.float32)
    assert flops.count_flops(lambda x, w: _conv(x, w, groups=2), X, grouped) == CONV // 2
    a, b = jax.ShapeDtypeStruct((5, 7), jnp.float32), jax.ShapeDtypeStruct((7, 3), jnp.float32)
    assert flops.count_flops(jnp.matmul, a, b) == 2 * 5 * 7 * 3
    e = jax.ShapeDtypeStruct((4, 5, 7), jnp.float32)
    assert (
        flops.count_flops(lambda e, b: jnp.einsum("nij,jk->nik", e, b), e, b) == 4 * 2 * 5 * 7 * 3
    )
    assert flops.count_flops(lambda x: jax.nn.relu(x) * 2 + 1, X) == 0  # element-wise is free


def test_gradients_count_their_transposed_convolutions():
    loss = lambda x, w: jnp.sum(_conv(x, w) ** 2)
    # Forward, input gradient and weight gradient: three convolutions of the same size.
    assert flops.count_flops(jax.grad(loss, argnums=(0, 1)), X, W) == 3 * CONV
    # Not differentiating the input (a first layer): its gradient is never computed.
    assert flops.count_flops(jax.grad(loss, argnums=1), X, W) == 2 * CONV


def test_nested_jit_remat_scan_and_cond():
    inner = jax.jit(jax.checkpoint(_conv))
    assert flops.count_flops(lambda x, w: inner(x, w), X, W) == CONV

    def scanned(x, w):
        return jax.lax.scan(lambda c, _: (c, _conv(x, w)), 0.0, None, length=5)[1]

    assert flops.count_flops(scanned, X, W) == 5 * CONV
    branches = lambda p, x, w: jax.lax.cond(
        p, lambda: _conv(x, w), lambda: jnp.zeros_like(_conv(x, w)) * 0
    )
    # A cond costs its most expensive branch (the second traces a conv for its shape only).
    assert flops.count_flops(branches, jax.ShapeDtypeStruct((), bool), X, W) == CONV
    with pytest.raises(ValueError, match="while"):
        flops.count_flops(
            lambda x, w: jax.lax.while_loop(
                lambda c: c[1] < 3, lambda c: (c[0], c[1] + 1), (_conv(x, w), 0)
            ),
            X,
            W,
        )


def test_paper_unet_forward_flops_match_the_architecture():
    # The padded paper U-Net at 256 x 256: every 3x3 conv, 2x2 up-conv and the 1x1 output conv
    # from its channel plan, written out by hand (the performance issue quotes ~289 GFLOP per
    # training image, i.e. ~96 GFLOP forward).
    size, widths = 256, [64, 128, 256, 512, 1024]
    expected, c_in = 0, 3
    for level, c in enumerate(widths):
        pixels = (size // 2**level) ** 2
        expected += 2 * pixels * 9 * (c_in * c + c * c)
        c_in = c
    for level in reversed(range(4)):
        c, pixels = widths[level], (size // 2**level) ** 2
        expected += 2 * pixels * (4 * widths[level + 1] * c) // 4  # 2x2 up-conv: one matmul
        expected += 2 * pixels * 9 * (2 * c * c + c * c)  # concat -> c, c -> c
    expected += 2 * size * size * 64 * 2  # 1x1 output conv
    model = UNet(num_classes=2, padding="SAME")
    x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
    variables = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros(x.shape), train=False)
    )
    counted = flops.count_flops(lambda v, x: model.apply(v, x, train=False), variables, x)
    assert counted == expected
    assert round(counted * 3 / 1e9) == 289


def test_dense_layer():
    model = nn.Dense(5)
    x = jax.ShapeDtypeStruct((3, 4), jnp.float32)
    params = jax.eval_shape(model.init, jax.random.key(0), x)
    assert flops.count_flops(model.apply, params, x) == 2 * 3 * 4 * 5
