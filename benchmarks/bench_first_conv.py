r"""FCN's first convolution (conv1_1: 3 -> 64 channels, 3x3, zero padding 100), three ways.

  python -m benchmarks.bench_first_conv                       # 500 px (VOC), batch 1, f32 + bf16
  python -m benchmarks.bench_first_conv --sizes 512 --batch 8 --dtypes bfloat16   # a GPU batch

The FCN reference release pads conv1_1's input by 100 pixels. Timed: the forward pass and the
kernel's gradient (the input is data: no input gradient), jit(grad(sum(relu(conv)))), median of
--repeats after a warm-up, on the default device, for
  padded conv     lax.conv_general_dilated with padding 100 (what nn.Conv(padding=100) runs)
  pad + valid     jnp.pad by 100, then a VALID convolution (layers.WidePaddingConv on the CPU)
  im2col          jnp.pad, 27-value patches, one [N*H*W, 27] x [27, 64] product
                  (layers.WidePaddingConv on accelerators)
XLA computes the padded conv's kernel gradient as a convolution whose window is the whole
image: on an AVX-512 CPU 13-34x slower than the same sum over the padded input, on an H200
55 of FCN-8s' 75 ms train step (cuDNN runs a 512 x 512 "filter" over 8 channels). XLA:GPU folds
an explicit pad back into the convolution (pad + valid is as slow as the padded conv there);
the im2col product is not a convolution. Each form's kernel gradient is checked against the
padded conv's (relative error printed).
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

PAD = 100
DIMS = ("NHWC", "HWIO", "NHWC")


def _padded(x, w):
    return lax.conv_general_dilated(x, w, (1, 1), ((PAD, PAD), (PAD, PAD)), dimension_numbers=DIMS)


def _explicit(x):
    return jnp.pad(x, ((0, 0), (PAD, PAD), (PAD, PAD), (0, 0)))


def _pad_valid(x, w):
    return lax.conv_general_dilated(_explicit(x), w, (1, 1), "VALID", dimension_numbers=DIMS)


def _im2col(x, w):
    return layers.matmul(layers.im2col(_explicit(x), (3, 3)), w.reshape(-1, w.shape[-1]))


FORMS = {"padded conv": _padded, "pad + valid": _pad_valid, "im2col": _im2col}


def main():
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_first_conv", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[500])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    backend.configure_jax_for_backend()
    device = f"{jax.devices()[0].device_kind}"
    print(f"machine: {common.machine()}; jax {jax.__version__} on {device}")
    rng = np.random.default_rng(0)
    for size in args.sizes:
        for dtype in args.dtypes:
            x = jnp.asarray(rng.random((args.batch, size, size, 3)), dtype)
            w = jnp.asarray(rng.normal(size=(3, 3, 3, 64)) * 0.1, dtype)
            reference = None
            for name, form in FORMS.items():

                def loss(w, x, form=form):
                    return jnp.sum(jax.nn.relu(form(x, w)).astype(jnp.float32))

                grad = jax.jit(jax.grad(loss))
                dw = np.asarray(grad(w, x), np.float32)
                if reference is None:
                    reference = dw
                error = float(np.abs(dw - reference).max() / np.abs(reference).max())
                stats = common.time_repeats(
                    lambda grad=grad, w=w, x=x: grad(w, x).block_until_ready(), args.repeats
                )
                common.emit(
                    {
                        "form": name,
                        "size": size,
                        "batch": args.batch,
                        "dtype": dtype,
                        "device": device,
                        "framework": f"jax {jax.__version__}",
                        "machine": common.machine(),
                        "rel_error": error,
                        **stats,
                    },
                    f"{size} px b{args.batch} {dtype} {name:<12}: "
                    f"{stats['step_s_median'] * 1e3:8.2f} ms "
                    f"({stats['step_s_min'] * 1e3:.2f}-{stats['step_s_max'] * 1e3:.2f}), "
                    f"dW relative error {error:.1e}",
                )


if __name__ == "__main__":
    main()
