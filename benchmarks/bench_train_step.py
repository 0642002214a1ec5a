r"""Train-step throughput of a config's model: compile time, step time, images/s.

  python benchmarks/bench_train_step.py --config configs/default.py --size 256 --batch 4
  python benchmarks/bench_train_step.py --config configs/fcn8s_voc.py --size 512 --batch 2

Times the real jitted `train_lib.train_step` (with the config's optimiser and loss) on random
data of the given size, after one warm-up step; prints the median and spread of --repeats steps.
"""

from jaxseg import backend

backend.configure_xla_flags()

import argparse  # noqa: E402
import functools  # noqa: E402
import importlib.util  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402

from jaxseg import optim, sharding, train_lib  # noqa: E402
from jaxseg.models import build_model, output_size  # noqa: E402


def load_config(path):
    spec = importlib.util.spec_from_file_location("bench_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/default.py")
    parser.add_argument("--size", type=int, default=256, help="square input side, px")
    parser.add_argument("--batch", type=int, default=4, help="global batch")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dtype", default=None, help="override model.dtype (float32/bfloat16)")
    parser.add_argument("--channels", type=int, default=3)
    args = parser.parse_args()
    backend.configure_jax_for_backend()

    config = load_config(args.config)
    config.batch_size = args.batch
    config.grad_accum_steps = 1
    config.data.crop_size = (args.size, args.size)
    if args.dtype:
        config.model.dtype = args.dtype
    model = build_model(config.model)
    tx = optim.make_optimizer(config.optim, config.total_steps)
    mesh = sharding.make_mesh(num_fsdp=config.mesh.fsdp)
    init = functools.partial(
        train_lib.init_state,
        model=model,
        tx=tx,
        input_shape=(1, args.size, args.size, args.channels),
    )
    abstract = jax.eval_shape(init, jax.random.key(0))
    shardings = sharding.state_shardings(abstract, mesh)
    state = jax.jit(init, out_shardings=shardings)(jax.random.key(0))
    step = train_lib.make_train_step(config, model, tx, mesh, shardings)

    rng = np.random.default_rng(0)
    oh, ow = output_size(model, (args.size, args.size))
    batch = {
        "image": rng.normal(size=(args.batch, args.size, args.size, args.channels)).astype(
            np.float32
        ),
        "label": rng.integers(
            0, config.model.num_classes, (args.batch, args.size, args.size)
        ).astype(np.int32),
    }
    batch = jax.device_put(batch, sharding.batch_sharding(mesh))

    t0 = time.perf_counter()
    state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - t0
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        state, metrics = step(state, batch)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    print(
        f"machine={platform.machine()} cpus={jax.local_device_count()}x{jax.devices()[0].platform} "
        f"model={config.model.name} size={args.size} out={oh}x{ow} batch={args.batch} "
        f"dtype={config.model.dtype} first_step_s={compile_s:.1f} step_s_median={med:.3f} "
        f"step_s_min={min(times):.3f} step_s_max={max(times):.3f} "
        f"images_per_s={args.batch / med:.2f}"
    )


if __name__ == "__main__":
    main()
