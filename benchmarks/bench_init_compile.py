r"""Compile + run time of a model's jitted initialisation, the cost of `jax_threefry_partitionable`.

  python -m benchmarks.bench_init_compile --config configs/default.py --partitionable 1
  python -m benchmarks.bench_init_compile --config configs/default.py --partitionable 0

Each setting needs its own process (the setting must precede the first random op).
"""

import argparse
import functools
import time

import jax
import jax.numpy as jnp

from benchmarks import presets
from jaxseg.models import build_model


def main():
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_init_compile", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--config", "--model", dest="config", default="configs/default.py")
    parser.add_argument("--partitionable", type=int, choices=(0, 1), required=True)
    parser.add_argument("--size", type=int, default=32)
    args = parser.parse_args()
    jax.config.update("jax_threefry_partitionable", bool(args.partitionable))
    model = build_model(presets.load(args.config).model)
    init = jax.jit(functools.partial(model.init, train=False))
    t0 = time.perf_counter()
    jax.block_until_ready(init(jax.random.key(0), jnp.zeros((1, args.size, args.size, 3))))
    print(
        f"config={args.config} model={model.__class__.__name__} "
        f"threefry_partitionable={bool(args.partitionable)} init_compile_and_run_s="
        f"{time.perf_counter() - t0:.1f}"
    )


if __name__ == "__main__":
    main()
