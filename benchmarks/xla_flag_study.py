r"""Train-step speed under each XLA:CPU flag set, for the jaxlib installed: what backend.py adopts.

  python -m benchmarks.xla_flag_study --model unet_paper --size 256 --batch 4
  python -m benchmarks.xla_flag_study --model fcn8s --size 256 --batch 2 --rounds 2
  python -m benchmarks.xla_flag_study --model configs/default.py --size 96 --batch 8 \
      --variants none ynn_no_conv "--xla_cpu_use_onednn=true"

Runs benchmarks/bench_train_step.py once per variant and round, each in a fresh process with
JAXSEG_NO_XLA_TUNING=1 and XLA_FLAGS set to exactly that variant's flags (so backend.py adds
nothing), variants interleaved round by round so that they share the machine's drift. A variant is
a name of VARIANTS or a literal flag string. Prints each variant's median step time over rounds
and its speed relative to the first variant; a flag XLA does not know aborts that run, which shows
as "failed" (what backend.py must never set). --out appends the RESULT records (with the flags)
to a JSON-lines file.
"""

import argparse
import json
import os
import statistics
import sys

from benchmarks import side_by_side

_YNN = "--xla_cpu_experimental_ynn_fusion_type="

# The XLA:CPU options of jaxlib 0.10-0.12 that change which kernels run convolutions and dots.
VARIANTS = {
    "none": "",  # XLA's defaults for this release
    "ynn_no_conv": _YNN + "-individual_convolution",  # what backend.py sets on 0.10.x
    "ynn_no_conv_dot": _YNN + "-individual_convolution,-individual_dot",
    "ynn_no_conv_no_dot": _YNN + "-individual_convolution,-dot",
    "ynn_off": _YNN + "-individual_convolution,-individual_dot,-dot,-eltwise,-reduce",
    "ynn_conv_only": _YNN + "individual_convolution",
    "onednn": "--xla_cpu_use_onednn=true",
    "onednn_no_ynn_conv": "--xla_cpu_use_onednn=true " + _YNN + "-individual_convolution",
    "xnn_off": _YNN + "-individual_convolution --xla_cpu_use_xnnpack=false",
}


def run_variant(flags: str, bench_args: list[str], python: str, timeout: float) -> dict | None:
    env = dict(os.environ, JAXSEG_NO_XLA_TUNING="1", XLA_FLAGS=flags)
    cmd = [python, "-m", "benchmarks.bench_train_step", *bench_args, "--no-peak"]
    return side_by_side.run(cmd, timeout, env=env)


def main():
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.xla_flag_study", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--model", default="unet_paper")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per run")
    parser.add_argument("--rounds", type=int, default=1, help="runs of each variant")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS))
    parser.add_argument("--python", default=sys.executable, help="interpreter (its jaxlib)")
    parser.add_argument("--timeout", type=float, default=1200, help="seconds per run")
    parser.add_argument("--out", default=None, help="append RESULT records to this JSONL file")
    args = parser.parse_args()
    bench_args = ["--model", args.model, "--size", str(args.size), "--batch", str(args.batch)]
    bench_args += ["--dtype", args.dtype, "--repeats", str(args.repeats)]
    flags = {name: VARIANTS.get(name, name) for name in args.variants}
    times: dict[str, list[float]] = {name: [] for name in flags}
    compile_s: dict[str, list[float]] = {name: [] for name in flags}
    jax_version = ""
    for _ in range(args.rounds):
        for name, flag in flags.items():
            record = run_variant(flag, bench_args, args.python, args.timeout)
            if record is None:
                continue
            jax_version = record["framework"]
            print(f"  {name}: step {record['step_s_median']:.3f} s", flush=True)
            times[name].append(record["step_s_median"])
            compile_s[name].append(record["compile_s"])
            if args.out:
                with open(args.out, "a") as f:
                    f.write(json.dumps({**record, "variant": name, "xla_flags": flag}) + "\n")
    print(f"\n{jax_version}, {args.model} {args.size}px b{args.batch} {args.dtype}\n")
    print("| variant | XLA_FLAGS | step s (median over runs) | images/s | compile s | vs first |")
    print("| --- | --- | --- | --- | --- | --- |")
    first = None
    for name, flag in flags.items():
        if not times[name]:
            print(f"| {name} | `{flag}` | failed | | | |")
            continue
        step = statistics.median(times[name])
        first = first or step
        print(
            f"| {name} | `{flag or '(defaults)'}` | {step:.3f} | {args.batch / step:.3f} | "
            f"{statistics.median(compile_s[name]):.1f} | {first / step:.2f}x |"
        )


if __name__ == "__main__":
    main()
