r"""Each fast formulation in jaxseg.models.layers against the straightforward op, forward+backward.

  python -m benchmarks.bench_ops                 # all cases, f32
  python -m benchmarks.bench_ops --only conv3x3  # cases whose name contains "conv3x3"

Times jit(grad) of sum(f(x, w)**2) with respect to every input, median of --repeats after
warm-up, and prints GFLOP/s of the counted convolution/matmul FLOPs (benchmarks/flops.py) where
there are any. These are the measurements behind the choices in layers.py and backend.py; the tests
(tests/test_layers.py) prove each pair equal in outputs and gradients.
"""

from jaxseg import backend

backend.configure_before_jax()

import argparse  # noqa: E402

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from benchmarks import common, flops  # noqa: E402
from jaxseg.models import layers  # noqa: E402

F32, BF16 = jnp.float32, jnp.bfloat16


def _conv(x, w, padding="SAME"):
    return jax.lax.conv_general_dilated(
        x, w, (1, 1), padding, dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


def _upcast_conv(x, w, padding="SAME"):
    return _conv(x.astype(F32), w.astype(F32), padding).astype(x.dtype)


def _module(module):
    def apply(x, params):
        return module.apply(params, x)

    return apply


def cases():
    """(name, fn(x, w), x shape, w shape or a flax module to init, dtype)."""
    conv_x, conv_w = (4, 64, 64, 128), (3, 3, 128, 128)  # a paper U-Net level-1 conv at 256 px
    yield "conv3x3 f32", _conv, conv_x, conv_w, F32
    yield "conv3x3 bf16 (lax)", _conv, conv_x, conv_w, BF16
    yield "conv3x3 bf16 (as f32 on bf16 values)", _upcast_conv, conv_x, conv_w, BF16
    for c in (64, 128, 256):  # paper U-Net levels 0-2 at 256 px, batch 1
        x_shape = (1, 256 * 64 // c, 256 * 64 // c, c)
        yield (
            f"conv3x3 {c}ch bf16 nn.Conv",
            _module(nn.Conv(c, (3, 3), dtype=BF16)),
            x_shape,
            nn.Conv(c, (3, 3), dtype=BF16),
            BF16,
        )
        shifted = layers.ShiftedMatmulConv(c, (3, 3), dtype=BF16)
        yield f"conv3x3 {c}ch bf16 ShiftedMatmulConv", _module(shifted), x_shape, shifted, BF16
    mm_x, mm_w = (4096, 2048), (2048, 2048)
    yield "matmul f32", jnp.matmul, mm_x, mm_w, F32
    yield "matmul bf16 -> bf16", jnp.matmul, mm_x, mm_w, BF16
    yield (
        "matmul bf16, f32 accumulate",
        lambda a, b: jnp.matmul(a, b, preferred_element_type=F32).astype(a.dtype),
        mm_x,
        mm_w,
        BF16,
    )
    pool_x = (4, 128, 128, 64)
    yield "maxpool reduce_window", lambda x: nn.max_pool(x, (2, 2), (2, 2)), pool_x, None, F32
    yield "maxpool reshape (layers)", layers.max_pool_2x2, pool_x, None, F32
    up_x = (4, 32, 32, 512)
    yield (
        "upconv2x2 nn.ConvTranspose",
        _module(nn.ConvTranspose(256, (2, 2), strides=(2, 2))),
        up_x,
        nn.ConvTranspose(256, (2, 2), strides=(2, 2)),
        F32,
    )
    yield (
        "upconv2x2 einsum (layers)",
        _module(layers.UpConv2x2(256)),
        up_x,
        layers.UpConv2x2(256),
        F32,
    )
    fc6_x = (2, 15, 15, 512)  # FCN-8s (reference alignment) pool5 at 256 px
    yield (
        "fc6 7x7 nn.Conv",
        _module(nn.Conv(4096, (7, 7), padding="VALID")),
        fc6_x,
        nn.Conv(4096, (7, 7), padding="VALID"),
        F32,
    )
    yield (
        "fc6 7x7 PatchMatmulConv (layers)",
        _module(layers.PatchMatmulConv(4096, (7, 7))),
        fc6_x,
        layers.PatchMatmulConv(4096, (7, 7)),
        F32,
    )


def time_grad(fn, inputs, repeats):
    """Timing stats and counted FLOPs of jit(grad(sum(fn(*inputs)**2))) w.r.t. all inputs."""
    loss = lambda *a: jnp.sum(fn(*a).astype(F32) ** 2)
    grad = jax.jit(jax.grad(loss, argnums=tuple(range(len(inputs)))))
    counted = flops.count_flops(grad, *inputs)
    return common.time_repeats(lambda: jax.block_until_ready(grad(*inputs)), repeats), counted


def main():
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_ops", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--only", default="")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    backend.configure_jax_for_backend()
    print("machine:", common.machine())
    key = jax.random.key(0)
    for name, fn, x_shape, w, dtype in cases():
        if args.only not in name:
            continue
        x = jax.random.normal(key, x_shape, F32).astype(dtype)
        if w is None:
            inputs = (x,)
        elif isinstance(w, nn.Module):
            inputs = (x, w.init(key, x))
        else:
            inputs = (x, (0.01 * jax.random.normal(key, w, F32)).astype(dtype))
        stats, counted = time_grad(fn, inputs, args.repeats)
        med = stats["step_s_median"]
        rate = f"{counted / med / 1e9:7.1f} GFLOP/s" if counted else ""
        common.emit(
            {"case": name, **stats, "flops": counted},
            f"{name:40s} fwd+bwd {med * 1e3:8.1f} ms ({stats['step_s_min'] * 1e3:.1f}-"
            f"{stats['step_s_max'] * 1e3:.1f}) {rate}",
        )


if __name__ == "__main__":
    main()
