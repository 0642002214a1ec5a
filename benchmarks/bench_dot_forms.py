r"""XLA:CPU matmul speed by dtype and by operand form: which products reach the bf16 dot path.

  python -m benchmarks.bench_dot_forms
  XLA_FLAGS=--xla_cpu_use_onednn=true python -m benchmarks.bench_dot_forms   # try a flag

Times single jitted `dot_general`s (forward only, median of 5 after warm-up) at the shapes of a
U-Net 3x3 conv tap ([N*H*W, C] x [C, O]), an im2col conv ([N*H*W, 9C] x [9C, O]) and a square
matmul, in f32, bf16 -> bf16 and bf16 x bf16 -> f32 (`preferred_element_type`), and the kernel
gradient's form (contracting both operands' first axis, [M, K]^T x [M, N]) as written and with
the transposed operand materialised row-major first. The convolution formulations in
jaxseg/models/layers.py are chosen from what this prints; figures in BENCHMARKS.md.
"""

from jaxseg import backend

backend.configure_before_jax()

import argparse  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax import lax  # noqa: E402

from benchmarks import common  # noqa: E402

F32, BF16 = jnp.float32, jnp.bfloat16
SHAPES = {  # (M, K, N)
    "conv tap, 64 ch": (65536, 64, 64),
    "conv tap, 128 ch": (16384, 128, 128),
    "conv tap, 512 ch": (1024, 512, 512),
    "im2col, 64 ch": (16384, 576, 64),
    "square 2048": (4096, 2048, 2048),
}
CANONICAL = (((1,), (0,)), ((), ()))  # [M, K] x [K, N]
FIRST_AXES = (((0,), (0,)), ((), ()))  # [M, K] x [M, N] -> [K, N], the kernel gradient


def _canonical(out_dtype):
    return lambda a, b: lax.dot_general(a, b, CANONICAL, preferred_element_type=out_dtype)


def _first_axes(a, g):
    return lax.dot_general(a, g, FIRST_AXES, preferred_element_type=F32)


def _first_axes_transposed(a, g):
    # The barrier keeps XLA from folding the transpose back into the dot's dimension numbers.
    a_t = lax.optimization_barrier(a.T.reshape(-1)).reshape(a.shape[1], a.shape[0])
    return lax.dot_general(a_t, g, CANONICAL, preferred_element_type=F32)


def main():
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_dot_forms", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print("machine:", common.machine())
    rng = np.random.default_rng(0)
    for name, (m, k, n) in SHAPES.items():
        a = rng.standard_normal((m, k), np.float32)
        b = rng.standard_normal((k, n), np.float32)
        g = rng.standard_normal((m, n), np.float32)
        cases = {
            "f32": (_canonical(F32), a, b),
            "bf16 -> bf16": (_canonical(BF16), a.astype(BF16), b.astype(BF16)),
            "bf16 -> f32": (_canonical(F32), a.astype(BF16), b.astype(BF16)),
            "bf16 first axes": (_first_axes, a.astype(BF16), g.astype(BF16)),
            "bf16 first axes, transposed": (_first_axes_transposed, a.astype(BF16), g.astype(BF16)),
        }
        rates = {}
        for label, (fn, x, y) in cases.items():
            x, y = jnp.asarray(x), jnp.asarray(y)
            f = jax.jit(fn)
            call = lambda f=f, x=x, y=y: f(x, y).block_until_ready()
            stats = common.time_repeats(call, args.repeats)
            rates[label] = 2 * m * k * n / stats["step_s_median"] / 1e9
        common.emit(
            {"case": name, "m": m, "k": k, "n": n, "gflops": rates},
            f"{name:18s} [{m}, {k}] x [{k}, {n}]: "
            + ", ".join(f"{label} {r:6.0f}" for label, r in rates.items())
            + " GFLOP/s",
        )


if __name__ == "__main__":
    main()
