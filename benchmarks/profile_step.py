r"""Where a train step's time goes: device time per XLA op and per model layer, from a profile.

  python -m benchmarks.profile_step --model fcn8s --size 512 --batch 8 --dtype bfloat16
  python -m benchmarks.profile_step --model configs/default.py --size 96 --batch 16 --top 30

Builds the same jitted `train_lib.train_step` as benchmarks/bench_train_step.py (same arguments),
runs --steps steps under `jax.profiler.trace`, and reads the trace back with
`jax.profiler.ProfileData`. Each executed XLA op (a GPU "XLA Ops" event; on the CPU, a thunk
event carrying `hlo_op`) is matched to its instruction in the compiled HLO, whose metadata names
the JAX operation and the Flax module path it came from. Prints the top --top ops (ms per step,
share, opcode or fusion kind, source op) and the time per layer (the module path, with the
forward and backward pass apart), and a `RESULT {json}` line with both tables.

On accelerators the events are the ops' device time. On the CPU they are thunk events on the
executor's threads, and XLA:CPU runs some thunks asynchronously (events named "end: <op>" mark
their completion): for those the event covers the launch, not the work, so the CPU table is a
lower bound per op and its total falls short of the step (the default U-Net: 95 of 198 ms).
"""

# First: bench_train_step configures the backend (XLA flags, allocator) before jax is imported.
from benchmarks.bench_train_step import add_step_arguments, build_step  # isort: skip

import argparse  # noqa: E402
import collections  # noqa: E402
import glob  # noqa: E402
import os  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402

from benchmarks import common  # noqa: E402
from benchmarks.xla_profile import device_op_times, hlo_instructions, layer_of  # noqa: E402


def main():
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.profile_step", description=__doc__.splitlines()[0]
    )
    add_step_arguments(parser)
    parser.add_argument("--steps", type=int, default=5, help="profiled steps (after 2 warm-up)")
    parser.add_argument("--top", type=int, default=25, help="ops and layers listed")
    parser.add_argument("--trace-dir", default=None, help="keep the trace here (TensorBoard)")
    args = parser.parse_args()
    config, _, step, state, batch = build_step(args)
    compiled = step.lower(state, batch).compile()
    hlo_text = compiled.as_text()
    if args.trace_dir:
        os.makedirs(args.trace_dir, exist_ok=True)
        with open(os.path.join(args.trace_dir, "train_step.hlo.txt"), "w") as f:
            f.write(hlo_text)
    for _ in range(2):
        state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics)

    trace_dir = args.trace_dir or tempfile.mkdtemp(prefix="jaxseg-profile-")
    with jax.profiler.trace(trace_dir):
        start = time.perf_counter()
        for _ in range(args.steps):
            state, metrics = compiled(state, batch)
        jax.block_until_ready(metrics)
        step_s = (time.perf_counter() - start) / args.steps
    paths = glob.glob(f"{trace_dir}/**/*.xplane.pb", recursive=True)
    if not paths:
        raise SystemExit(f"no .xplane.pb under {trace_dir}: the profiler wrote no trace")
    times = device_op_times(paths[0])
    if not times:  # what the trace holds instead, for a new profiler layout
        from jax.profiler import ProfileData

        for plane in ProfileData.from_file(paths[0]).planes:
            lines = [(line.name, len(list(line.events))) for line in plane.lines]
            print("plane", plane.name, lines)
        raise SystemExit(f"no XLA op events in {paths[0]} (planes above)")
    instructions = hlo_instructions(hlo_text)

    per_step = {name: ns / args.steps / 1e6 for name, ns in times.items()}  # ms per step
    total = sum(per_step.values())
    ops = []
    layers: dict[str, float] = collections.defaultdict(float)
    for name, ms in sorted(per_step.items(), key=lambda kv: -kv[1]):
        info = instructions.get(name, {"opcode": "?", "op_name": ""})
        layer = layer_of(info["op_name"])
        layers[layer] += ms
        ops.append({"op": name, "ms": ms, "opcode": info["opcode"], "op_name": info["op_name"]})
    layer_rows = sorted(layers.items(), key=lambda kv: -kv[1])

    size = f"{config.data.crop_size[0]}x{config.data.crop_size[1]}"
    device = f"{jax.device_count()}x {jax.devices()[0].device_kind}"
    print(
        f"{args.model} {size} b{config.batch_size} {config.model.dtype} on {device}: "
        f"step {step_s * 1e3:.1f} ms under the profiler, op time {total:.1f} ms per step"
    )
    print(f"\nTop {args.top} ops (ms per step, share of op time):")
    for op in ops[: args.top]:
        print(
            f"  {op['ms']:8.2f}  {op['ms'] / total:6.1%}  {op['opcode']:<28} {op['op']:<32} "
            f"{op['op_name'][-90:]}"
        )
    print(f"\nTop {args.top} layers:")
    for layer, ms in layer_rows[: args.top]:
        print(f"  {ms:8.2f}  {ms / total:6.1%}  {layer}")
    common.emit(
        {
            "model": args.model,
            "size": size,
            "batch": config.batch_size,
            "dtype": config.model.dtype,
            "device": device,
            "machine": common.machine(),
            "framework": f"jax {jax.__version__}",
            "step_ms_profiled": step_s * 1e3,
            "op_ms_per_step": total,
            "ops": ops[: args.top],
            "layers": [{"layer": k, "ms": v} for k, v in layer_rows[: args.top]],
        },
        f"profile of {args.model}: {len(ops)} ops, {total:.1f} ms per step",
    )


if __name__ == "__main__":
    main()
