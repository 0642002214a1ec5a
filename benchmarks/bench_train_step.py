r"""Train-step speed of a model: compile time, step time, images/s, FLOPs, "MFU", peak memory.

  python -m benchmarks.bench_train_step --model unet_paper --size 256 --batch 4
  python -m benchmarks.bench_train_step --model fcn8s --size 512 --batch 1 --dtype bfloat16
  python -m benchmarks.bench_train_step --model configs/default.py --size 96 --batch 16

--model is a preset of benchmarks/presets.py (unet_paper, unet_default, fcn8s, fcn32s, ...) or a
config file. Times the real jitted `train_lib.train_step` (the config's optimiser and loss) on
random data: compile time, then the first step, one warm-up step and --repeats timed steps
(median, min, max). FLOPs are counted analytically from the step's jaxpr (`benchmarks/flops.py`:
convolutions and matmuls of the forward and backward pass); GFLOP/s is divided by this
machine's matmul peak, measured in the same run (`--no-peak` skips it). Peak memory is XLA's
buffer plan for the step plus, on CPU, the process's peak RSS; on GPUs the device's peak.
Prints a readable line and a `RESULT {json}` line (collected by benchmarks/side_by_side.py).
"""

from jaxseg import backend

backend.configure_before_jax()

import argparse  # noqa: E402
import functools  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import common, flops, presets  # noqa: E402
from jaxseg import optim, sharding, train_lib, train_state  # noqa: E402
from jaxseg.models import build_model, output_size  # noqa: E402


def add_step_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments that pick the step: model, input size, batch, dtype, overrides."""
    parser.add_argument("--model", "--config", dest="model", default="unet_default")
    parser.add_argument("--size", type=int, default=256, help="square side, px; 0: config's crop")
    parser.add_argument("--batch", type=int, default=4, help="global batch; 0: config's batch")
    parser.add_argument("--dtype", default=None, help="override model.dtype (float32/bfloat16)")
    parser.add_argument("--channels", type=int, default=3)
    parser.add_argument(
        "--override", action="append", default=[], help="config override key=value, repeatable"
    )


def build_step(args: argparse.Namespace):
    """(config, model, step, state, batch): the jitted train step of `args` (see
    add_step_arguments), its initial state and one random batch, placed on every device."""
    backend.configure_jax_for_backend()
    config = presets.load(args.model, args.override)
    if args.batch:
        config.batch_size = args.batch
    if args.size:
        config.data.crop_size = (args.size, args.size)
    batch_size, (height, width) = config.batch_size, config.data.crop_size
    if args.dtype:
        config.model.dtype = args.dtype
    model = build_model(config.model)
    tx, _ = optim.make_optimizer(config.optim, config.total_steps)
    mesh = sharding.make_mesh(num_fsdp=config.mesh.fsdp)
    init = functools.partial(
        train_state.init_state,
        model=model,
        tx=tx,
        input_shape=(1, height, width, args.channels),
    )
    abstract = jax.eval_shape(init, jax.random.key(0))
    shardings = sharding.state_shardings(abstract, mesh)
    state = jax.jit(init, out_shardings=shardings)(jax.random.key(0))
    step = train_lib.make_train_step(config, model, tx, mesh, shardings)

    rng = np.random.default_rng(0)
    shape = (batch_size, height, width)
    batch = {
        "image": rng.normal(size=(*shape, args.channels)).astype(np.float32),
        "label": rng.integers(0, config.model.num_classes, shape).astype(np.int32),
    }
    if config.data.weight_map:  # the eq. 2 pixel weights the recipe's loss multiplies by
        batch["weight"] = rng.uniform(1.0, 10.0, shape).astype(np.float32)
    batch = jax.device_put(batch, sharding.batch_sharding(mesh))
    return config, model, step, state, batch


def main():
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_train_step", description=__doc__.splitlines()[0]
    )
    add_step_arguments(parser)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-peak", action="store_true", help="skip the matmul peak")
    parser.add_argument(
        "--compile-only", action="store_true", help="only compile the step (compile time check)"
    )
    args = parser.parse_args()
    config, model, step, state, batch = build_step(args)
    batch_size, (height, width) = config.batch_size, config.data.crop_size
    size = f"{height}x{width}"

    t0 = time.perf_counter()
    traced = step.trace(state, batch)  # traced once: compiled below and its FLOPs counted
    compiled = traced.lower().compile()
    compile_s = time.perf_counter() - t0
    if args.compile_only:
        common.emit(
            {"model": args.model, "size": size, "batch": batch_size, "compile_s": compile_s},
            f"{args.model} {size} b{batch_size} grad_accum {config.grad_accum_steps} "
            f"{config.model.dtype}: train step compiled in {compile_s:.1f} s",
        )
        return
    step_flops = flops.jaxpr_flops(traced.jaxpr)
    variables = {"params": state.params}
    if state.batch_stats:
        variables["batch_stats"] = state.batch_stats
    fwd_flops = flops.count_flops(
        lambda v, x: model.apply(v, x, train=False), variables, batch["image"]
    )
    params = sum(x.size for x in jax.tree.leaves(state.params))
    holder = {"state": state}

    def run():
        holder["state"], metrics = compiled(holder["state"], batch)
        jax.block_until_ready(metrics)

    stats = common.time_repeats(run, args.repeats)
    stats["first_step_s"] += compile_s
    memory = common.device_peak_mb(compiled)
    peak = None if args.no_peak else common.jax_peak_for(config.model.dtype)
    images_per_s = batch_size / stats["step_s_median"]
    gflops = step_flops / stats["step_s_median"] / 1e9
    device = jax.devices()[0]
    record = {
        "framework": f"jax {jax.__version__}",
        "model": args.model,
        "size": size,
        "batch": batch_size,
        "dtype": config.model.dtype,
        "mode": "jit",
        "device": f"{jax.device_count()}x {device.device_kind}",
        "machine": common.machine(),
        "params": int(params),
        "out": list(output_size(model, (height, width))),
        "compile_s": compile_s,
        **stats,
        "images_per_s": images_per_s,
        "flops_per_image": step_flops / batch_size,
        "flops_per_image_fwd": fwd_flops / batch_size,
        "gflops_per_s": gflops,
        **memory,
    }
    if peak:
        record["peak_gflops"] = peak
        record["mfu"] = gflops / peak
    common.emit(
        record,
        f"{args.model} {size} b{batch_size} {config.model.dtype} on {record['device']}: "
        f"compile {compile_s:.1f} s, first step {stats['first_step_s']:.1f} s, "
        f"step {stats['step_s_median']:.3f} s ({stats['step_s_min']:.3f}-"
        f"{stats['step_s_max']:.3f}), {images_per_s:.2f} img/s, "
        f"{stats['page_faults_per_step']:.0f} page faults and "
        f"{stats['system_s_per_step']:.3f} kernel CPU-s per step, "
        + common.rate_text(step_flops / batch_size, gflops, peak, memory["peak_mem_mb"]),
    )


if __name__ == "__main__":
    main()
