r"""Evaluation throughput (images/s) per inference mode, and host memory over a long evaluation.

  python benchmarks/bench_eval.py --config configs/default.py --size 256 --batch 4
  python benchmarks/bench_eval.py --config configs/fcn8s_voc.py --size 512 --batch 1
  python benchmarks/bench_eval.py --config configs/default.py --memory_passes 5

Throughput: the jitted `evaluation.eval_step` (inference + on-device confusion matrix) of a
randomly initialised model on random [batch, size, size, 3] images, for whole-image and
sliding-window inference (window = size/2, stride = size/4), median of --repeats after warm-up.
Memory: RSS of this process before and after `Evaluator.evaluate` runs --memory_passes times over
the config's evaluation split (the default's synthetic validation set).
"""

from jaxseg import backend

backend.configure_xla_flags()

import argparse  # noqa: E402
import functools  # noqa: E402
import importlib.util  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402

from jaxseg import evaluation, optim, sharding, train_lib  # noqa: E402
from jaxseg.data import datasets  # noqa: E402
from jaxseg.models import build_model  # noqa: E402


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith("VmRSS"))
    return int(line.split()[1]) / 1024


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/default.py")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--memory_passes", type=int, default=0)
    args = parser.parse_args()
    backend.configure_jax_for_backend()
    spec_ = importlib.util.spec_from_file_location("bench_config", args.config)
    module = importlib.util.module_from_spec(spec_)
    spec_.loader.exec_module(module)
    config = module.get_config()
    config.data.crop_size = (args.size, args.size)
    model = build_model(config.model)
    tx = optim.make_optimizer(config.optim, config.total_steps)
    mesh = sharding.make_mesh()
    _, _, init = train_lib.create_state(config, model, tx, mesh)
    state = init(jax.random.key(0))
    variables = evaluation.variables_of(state)

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
    half, quarter = args.size // 2, args.size // 4
    for mode, crop, stride in (
        ("whole_image", (0, 0), (0, 0)),
        ("sliding_window", (half, half), (quarter, quarter)),
    ):
        config.eval.mode, config.eval.crop, config.eval.stride = mode, crop, stride
        step = jax.jit(
            functools.partial(
                evaluation.eval_step,
                predict=evaluation.inference_fn(model, config.eval),
                num_classes=config.model.num_classes,
            )
        )
        t0 = time.perf_counter()
        jax.block_until_ready(step(variables, batch))
        first = time.perf_counter() - t0
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            jax.block_until_ready(step(variables, batch))
            times.append(time.perf_counter() - t0)
        med = statistics.median(times)
        print(
            f"model={config.model.name} mode={mode} size={args.size} batch={args.batch} "
            f"window={crop} stride={stride} first_s={first:.1f} step_s_median={med:.3f} "
            f"(min {min(times):.3f}, max {max(times):.3f}) images_per_s={args.batch / med:.2f}"
        )


if __name__ == "__main__":
    main()
