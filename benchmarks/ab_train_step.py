r"""One preset's train step in f32, bf16 (shifted matmuls) and bf16 (XLA convs), alternating.

  python -m benchmarks.ab_train_step unet_paper 128 2 5          # model size batch rounds
  python -m benchmarks.ab_train_step unet_paper 256 4 3 64 256   # + bf16 channel thresholds

The jitted `train_lib.train_step` programs (f32; bf16 with shifted matmuls from each given
`layers.SHIFTED_MATMUL_MIN_CHANNELS` threshold, default the library's; bf16 with XLA's convs)
are compiled in one process and called in turn,
`rounds` times, so all three see the same background load (on a shared VM, separate processes
minutes apart do not). Prints the median, min and max step time and the speed relative to f32.
"""

import sys

from jaxseg import backend

backend.configure_before_jax()

import functools  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import flops, presets  # noqa: E402
from jaxseg import optim, sharding, train_lib, train_state  # noqa: E402
from jaxseg.models import build_model, layers  # noqa: E402


def programs(thresholds: list[int]) -> list[tuple[str, str, int]]:
    """(label, model dtype, SHIFTED_MATMUL_MIN_CHANNELS); a huge threshold means XLA's convs."""
    shifted = [(f"bf16 shifted >= {t} ch", "bfloat16", t) for t in thresholds]
    return [("f32", "float32", 10**9), *shifted, ("bf16 XLA convs", "bfloat16", 10**9)]


def compiled_step(name: str, size: int, batch: int, dtype: str):
    """(compiled train step, state, batch, FLOPs per step) for a preset at size x size."""
    config = presets.load(name)
    config.batch_size, config.data.crop_size, config.model.dtype = batch, (size, size), dtype
    model = build_model(config.model)
    tx, _ = optim.make_optimizer(config.optim, config.total_steps)
    mesh = sharding.make_mesh(num_fsdp=config.mesh.fsdp)
    init = functools.partial(
        train_state.init_state, model=model, tx=tx, input_shape=(1, size, size, 3)
    )
    shardings = sharding.state_shardings(jax.eval_shape(init, jax.random.key(0)), mesh)
    state = jax.jit(init, out_shardings=shardings)(jax.random.key(0))
    step = train_lib.make_train_step(config, model, tx, mesh, shardings)
    rng = np.random.default_rng(0)
    data = {
        "image": rng.normal(size=(batch, size, size, 3)).astype(np.float32),
        "label": rng.integers(0, config.model.num_classes, (batch, size, size)).astype(np.int32),
    }
    data = jax.device_put(data, sharding.batch_sharding(mesh))
    traced = step.trace(state, data)
    return traced.lower().compile(), state, data, flops.jaxpr_flops(traced.jaxpr)


def main():
    backend.configure_jax_for_backend()
    name, size, batch, rounds = sys.argv[1], *map(int, sys.argv[2:5])
    thresholds = [int(t) for t in sys.argv[5:]] or [layers.SHIFTED_MATMUL_MIN_CHANNELS]
    runs = {}
    for label, dtype, threshold in programs(thresholds):
        layers.SHIFTED_MATMUL_MIN_CHANNELS = threshold  # read when the step is traced
        compiled, state, data, step_flops = compiled_step(name, size, batch, dtype)
        state, metrics = compiled(state, data)  # warm-up
        jax.block_until_ready(metrics)
        runs[label] = {"fn": compiled, "state": state, "data": data, "flops": step_flops}
        runs[label]["times"] = []
    for _ in range(rounds):
        for run in runs.values():
            t0 = time.perf_counter()
            run["state"], metrics = run["fn"](run["state"], run["data"])
            jax.block_until_ready(metrics)
            run["times"].append(time.perf_counter() - t0)
    f32_min = min(runs["f32"]["times"])
    f32_med = sorted(runs["f32"]["times"])[len(runs["f32"]["times"]) // 2]
    for label, run in runs.items():
        times = sorted(run["times"])
        med = times[len(times) // 2]
        print(
            f"{name} {size}px b{batch} {label:24s} step median {med:7.3f} s "
            f"(min {times[0]:.3f}, max {times[-1]:.3f}), {run['flops'] / med / 1e9:5.1f} GFLOP/s "
            f"at the median; vs f32: median {f32_med / med:.2f}x, min {f32_min / times[0]:.2f}x",
            flush=True,
        )


if __name__ == "__main__":
    main()
