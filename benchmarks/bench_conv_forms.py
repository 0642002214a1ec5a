r"""bf16 3x3 convolution formulations on XLA:CPU, forward + both gradients, at U-Net level shapes.

  python -m benchmarks.bench_conv_forms

Candidates for `jaxseg.models.layers` on CPUs whose bf16 products only reach the fast path as
canonical bf16 x bf16 -> f32 dot_generals (see benchmarks/bench_dot_forms.py):
  xla f32 / xla bf16   lax.conv_general_dilated (what nn.Conv runs)
  shifted              layers.ShiftedMatmulConv's kernel: nine [N*H*W, C] x [C, O] products
  im2col               one [N*H*W, 9C] x [9C, O] product per pass (patch tensor built first)
  rows                 three [N*H*W, 3C] x [3C, O] products (the three taps of a row side by side)
  shifted, xla dW      shifted forward and input gradient, XLA's convolution for the kernel's
Each is checked against the f32 convolution's gradients (relative error printed) and timed as
jit(grad(sum(conv(x, w)**2))) w.r.t. x and w, median of --repeats after warm-up. Only `shifted`
is in the library; the others are here because they were measured and dropped (BENCHMARKS.md).
"""

from jaxseg import backend

backend.configure_before_jax()

import argparse  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax import lax  # noqa: E402

from benchmarks import common  # noqa: E402
from jaxseg.models import layers  # noqa: E402

F32, BF16 = jnp.float32, jnp.bfloat16
SAME = ((1, 1), (1, 1))
LEVELS = ((4, 256, 32), (4, 128, 64), (4, 64, 128), (4, 32, 256), (4, 16, 512))  # N, side, C


def _xla(x, w):
    return lax.conv_general_dilated(x, w, (1, 1), SAME, dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _dot(a, b):
    return lax.dot_general(a, b, (((a.ndim - 1,), (0,)), ((), ())), preferred_element_type=F32)


def _pad(x):
    return jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))


def _flip(w):
    return w[::-1, ::-1].transpose(0, 1, 3, 2)


def _patches(x, taps):
    """[N, H, W, len(taps) * C]: the padded input's views at each (row, column) offset."""
    xp, (h, w) = _pad(x), x.shape[1:3]
    return jnp.concatenate([xp[:, i : i + h, j : j + w] for i, j in taps], axis=-1)


def _custom(forward, kernel_grad):
    """A conv with `forward(x, w)` for the output and input gradient (as the correlation of
    the cotangent with the flipped kernel) and `kernel_grad(x, g, w_shape)` for dW."""

    @jax.custom_vjp
    def conv(x, w):
        return forward(x, w).astype(x.dtype)

    def bwd(res, g):
        x, w = res
        g = g.astype(x.dtype)
        return forward(g, _flip(w)).astype(x.dtype), kernel_grad(x, g, w.shape).astype(w.dtype)

    conv.defvjp(lambda x, w: (conv(x, w), (x, w)), bwd)
    return conv


def _im2col(x, w):
    taps = [(i, j) for i in range(3) for j in range(3)]
    return _dot(_patches(x, taps), w.reshape(-1, w.shape[-1]))


def _rows(x, w):
    xp = _pad(x)
    h, wd, c = x.shape[1], x.shape[2], x.shape[3]
    side = jnp.concatenate([xp[:, :, j : j + wd] for j in range(3)], axis=-1)  # [N, H+2, W, 3C]
    return sum(_dot(side[:, i : i + h], w[i].reshape(3 * c, -1)) for i in range(3))


def _patch_kernel_grad(x, g, w_shape):
    taps = [(i, j) for i in range(3) for j in range(3)]
    p = _patches(x, taps)
    dims = (((0, 1, 2), (0, 1, 2)), ((), ()))
    return lax.dot_general(p, g, dims, preferred_element_type=F32).reshape(w_shape)


def _xla_kernel_grad(x, g, w_shape):
    _, vjp = jax.vjp(lambda w: _xla(x, w), jnp.zeros(w_shape, x.dtype))
    return vjp(g)[0]


def _shifted(x, w):
    return layers._shifted_matmul_conv(x, w, SAME)  # the library's custom VJP


def _shifted_xla_dw():
    @jax.custom_vjp
    def conv(x, w):
        return _shifted(x, w)

    def bwd(res, g):
        x, w = res
        g = g.astype(x.dtype)
        dx = layers._shifted_matmul_conv(g, _flip(w), SAME)
        return dx, _xla_kernel_grad(x, g, w.shape).astype(w.dtype)

    conv.defvjp(lambda x, w: (conv(x, w), (x, w)), bwd)
    return conv


FORMS = {
    "xla f32": (_xla, F32),
    "xla bf16": (_xla, BF16),
    "shifted": (_shifted, BF16),
    "im2col": (_custom(_im2col, _patch_kernel_grad), BF16),
    "rows": (_custom(_rows, _patch_kernel_grad), BF16),
    "shifted, xla dW": (_shifted_xla_dw(), BF16),
}


def main():
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_conv_forms", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    backend.configure_jax_for_backend()
    print("machine:", common.machine())
    rng = np.random.default_rng(0)
    for n, side, c in LEVELS:
        x0 = rng.standard_normal((n, side, side, c), np.float32)
        w0 = 0.05 * rng.standard_normal((3, 3, c, c), np.float32)
        flops = 3 * 2 * n * side * side * 9 * c * c
        times, grads = {}, {}
        for name, (conv, dtype) in FORMS.items():
            x, w = jnp.asarray(x0, dtype), jnp.asarray(w0, dtype)
            grad = jax.jit(jax.grad(lambda x, w, f=conv: jnp.sum(f(x, w).astype(F32) ** 2), (0, 1)))
            call = lambda g=grad, x=x, w=w: jax.block_until_ready(g(x, w))
            times[name] = common.time_repeats(call, args.repeats)["step_s_median"]
            grads[name] = [np.asarray(v, np.float32) for v in grad(x, w)]
        rel = lambda a, b: float(np.abs(a - b).max() / np.abs(b).max())
        errors = {k: max(map(rel, g, grads["xla f32"])) for k, g in grads.items()}
        common.emit(
            {"n": n, "side": side, "channels": c, "seconds": times, "rel_error": errors},
            f"[{n}, {side}, {side}, {c}]: "
            + " | ".join(f"{k} {t * 1e3:.1f} ms ({flops / t / 1e9:.0f})" for k, t in times.items())
            + f"  (GFLOP/s; max rel. error vs f32 {max(errors.values()):.1g})",
        )


if __name__ == "__main__":
    main()
