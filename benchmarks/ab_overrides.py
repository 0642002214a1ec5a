r"""Train-step time of config variants, compiled in one process and called in turn.

  python -m benchmarks.ab_overrides --model configs/default.py --size 0 --batch 0 \
      --variant "model.depth=3" --variant "model.base_width=12" \
      --variant "data.crop_size=(80,80)" --variant "model.upsampling=bilinear"

The first program is the model as given (--model, --size, --batch, --override: the arguments of
benchmarks/bench_train_step.py; `--size 0 --batch 0` keep the config's crop and batch); each
--variant adds its space-separated key=value overrides to it (a crop_size override changes the
input size when --size is 0). All programs are compiled first, then called in turn, --steps
steps each, for --rounds rounds, so they share the background load of a shared VM: the "vs
first" column is the median over rounds of the first program's time divided by the variant's
in the same round. Prints a table and a `RESULT {json}` line.
"""

# First: bench_train_step configures the backend (XLA flags, allocator) before jax is imported.
from benchmarks.bench_train_step import add_step_arguments, build_step  # isort: skip

import argparse  # noqa: E402
import copy  # noqa: E402
import shlex  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402

from benchmarks import common  # noqa: E402


def main():
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.ab_overrides", description=__doc__.splitlines()[0]
    )
    add_step_arguments(parser)
    parser.add_argument(
        "--variant", action="append", default=[], help='overrides, e.g. "model.depth=3 seed=1"'
    )
    parser.add_argument("--steps", type=int, default=15, help="steps per program per round")
    parser.add_argument("--rounds", type=int, default=8)
    args = parser.parse_args()
    programs = {}
    for variant in ["", *args.variant]:
        variant_args = copy.copy(args)
        variant_args.override = [*args.override, *shlex.split(variant)]
        config, _, step, state, batch = build_step(variant_args)
        compiled = step.lower(state, batch).compile()
        state, metrics = compiled(state, batch)  # warm-up
        jax.block_until_ready(metrics)
        programs[variant or "(as given)"] = [compiled, state, batch, config.batch_size]
    times: dict[str, list[float]] = {name: [] for name in programs}
    for _ in range(args.rounds):
        for name, program in programs.items():
            compiled, state, batch, _ = program
            start = time.perf_counter()
            for _ in range(args.steps):
                state, metrics = compiled(state, batch)
            jax.block_until_ready(metrics)
            times[name].append((time.perf_counter() - start) / args.steps)
            program[1] = state
    rows = common.interleaved_summary(times)
    print(f"\n{args.model}, jax {jax.__version__}, {common.machine()}")
    print("| variant | step ms (median) | min | images/s | vs first |")
    print("| --- | --- | --- | --- | --- |")
    for row in rows:
        images = programs[row["variant"]][3] / row["step_s"]
        print(
            f"| {row['variant']} | {row['step_s'] * 1e3:.1f} | {row['min_s'] * 1e3:.1f} | "
            f"{images:.1f} | {row['vs_first']:.2f}x |"
        )
    common.emit(
        {
            "model": args.model,
            "framework": f"jax {jax.__version__}",
            "machine": common.machine(),
            "rows": rows,
        },
        f"{len(rows)} programs, {args.rounds} rounds of {args.steps} steps",
    )


if __name__ == "__main__":
    main()
