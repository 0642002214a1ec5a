r"""Evaluation speed per inference mode, and host memory over a long evaluation.

  python -m benchmarks.bench_eval --model unet_paper --size 256 --batch 4
  python -m benchmarks.bench_eval --model fcn8s --size 512 --batch 1 --dtype bfloat16
  python -m benchmarks.bench_eval --model configs/default.py --memory_passes 5

Speed: the jitted `evaluation.eval_step` (inference + on-device confusion matrix) of a randomly
initialised model on random [batch, size, size, 3] images, for whole-image and sliding-window
inference (window = size/2, stride = size/4): compile time, first call, median/min/max of
--repeats calls after a warm-up, images/s, FLOPs per image counted from the jaxpr
(`benchmarks/flops.py`), GFLOP/s and its fraction of the measured matmul peak, peak memory.
--model is a preset of benchmarks/presets.py or a config file.
Memory: RSS of this process before and after `Evaluator.evaluate` runs --memory_passes times over
the config's evaluation split (the default's synthetic validation set).
"""

from jaxseg import backend

backend.configure_before_jax()

import argparse  # noqa: E402
import functools  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import common, flops, presets  # noqa: E402
from jaxseg import evaluation, inference, optim, sharding, train_state  # noqa: E402
from jaxseg.data import datasets  # noqa: E402
from jaxseg.models import build_model  # noqa: E402


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith("VmRSS"))
    return int(line.split()[1]) / 1024


def main():
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_eval", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--model", "--config", dest="model", default="unet_default")
    parser.add_argument("--dtype", default=None, help="override model.dtype (float32/bfloat16)")
    parser.add_argument("--no-peak", action="store_true", help="skip the matmul peak")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--memory_passes", type=int, default=0)
    args = parser.parse_args()
    backend.configure_jax_for_backend()
    config = presets.load(args.model)
    config.data.crop_size = (args.size, args.size)
    if args.dtype:
        config.model.dtype = args.dtype
    model = build_model(config.model)
    tx, _ = optim.make_optimizer(config.optim, config.total_steps)
    mesh = sharding.make_mesh()
    spec = datasets.dataset_spec(config.data)
    _, _, init = train_state.create_state(config, model, tx, mesh, spec)
    state = init(jax.random.key(0))
    variables = train_state.variables_of(state)

    if args.memory_passes:
        evaluator = evaluation.Evaluator(config, model, mesh, datasets.dataset_spec(config.data))
        evaluator.evaluate(state)  # compile, build the data set
        rss = [rss_mb()]
        for _ in range(args.memory_passes):
            result = evaluator.evaluate(state)
            rss.append(rss_mb())
        print(
            f"memory: {args.memory_passes} passes x {result['num_examples']} images: "
            f"RSS MB before and after each pass: {[round(r) for r in rss]}"
        )
        return

    rng = np.random.default_rng(0)
    batch = {
        "image": rng.normal(size=(args.batch, args.size, args.size, 3)).astype(np.float32),
        "label": rng.integers(0, config.model.num_classes, (args.batch, args.size, args.size)),
        "valid": np.ones((args.batch,), bool),
    }
    batch["label"] = batch["label"].astype(np.int32)
    batch = jax.device_put(batch, sharding.batch_sharding(mesh))
    peak = None if args.no_peak else common.jax_peak_for(config.model.dtype)
    half, quarter = args.size // 2, args.size // 4
    for mode, crop, stride in (
        ("whole_image", (0, 0), (0, 0)),
        ("sliding_window", (half, half), (quarter, quarter)),
    ):
        config.eval.mode, config.eval.crop, config.eval.stride = mode, crop, stride
        settings = inference.InferenceSettings.from_eval_config(config.eval)
        step = jax.jit(
            functools.partial(
                evaluation.eval_step,
                predict=functools.partial(inference.predict_logits, model, settings=settings),
                num_classes=config.model.num_classes,
            )
        )
        t0 = time.perf_counter()
        traced = step.trace(variables, batch)  # traced once: compiled and its FLOPs counted
        compiled = traced.lower().compile()
        compile_s = time.perf_counter() - t0
        counted = flops.jaxpr_flops(traced.jaxpr)
        stats = common.time_repeats(
            lambda: jax.block_until_ready(compiled(variables, batch)),  # noqa: B023
            args.repeats,
        )
        stats["first_step_s"] += compile_s
        ips = args.batch / stats["step_s_median"]
        gflops = counted / stats["step_s_median"] / 1e9
        record = {
            "framework": f"jax {jax.__version__}",
            "model": args.model,
            "mode": mode,
            "size": args.size,
            "batch": args.batch,
            "dtype": config.model.dtype,
            "window": list(crop),
            "stride": list(stride),
            "compile_s": compile_s,
            **stats,
            "images_per_s": ips,
            "flops_per_image": counted / args.batch,
            "gflops_per_s": gflops,
            **common.device_peak_mb(compiled),
        }
        if peak:
            record.update(peak_gflops=peak, mfu=gflops / peak)
        common.emit(
            record,
            f"{args.model} {mode} {args.size}px b{args.batch} {config.model.dtype} "
            f"window={crop} stride={stride}: compile {compile_s:.1f} s, "
            f"step {stats['step_s_median']:.3f} s ({stats['step_s_min']:.3f}-"
            f"{stats['step_s_max']:.3f}), {ips:.2f} img/s, "
            + common.rate_text(counted / args.batch, gflops, peak, record["peak_mem_mb"]),
        )


if __name__ == "__main__":
    main()
