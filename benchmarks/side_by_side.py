r"""JAX and PyTorch train steps side by side, in one run, on this machine: one table of ratios.

  python -m benchmarks.side_by_side --models unet_paper --sizes 256 --batch 4
  python -m benchmarks.side_by_side --models fcn8s fcn32s --sizes 256 --batch 2 \
      --dtypes float32 bfloat16 --torch-modes eager compile

For each model x size x dtype, runs benchmarks/bench_train_step.py (JAX) and
benchmarks/peer_torch.py (PyTorch, channels_last, each --torch-modes) one after another, each in a
fresh process (so compile times and peak memory are per run), and prints a Markdown table:
compile / first step, step time (median, min-max), images/s, FLOPs per image (JAX counts them
from its jaxpr, PyTorch with its FlopCounterMode: they must agree, or the networks differ),
GFLOP/s, the fraction of the machine's matmul peak (the highest peak the runs of that dtype
measured; for bfloat16 that includes the f32 peak, see common.jax_peak_for), peak memory, and
JAX's speed relative to each PyTorch run. --out appends every RESULT record to a JSON-lines
file; --table prints the table of such a file. Needs the `[bench]` extra (torch), or
--torch-python naming another environment's interpreter that has torch and jaxseg (PyTorch has
no wheel beside every jax: e.g. jax 0.12 on Python 3.13 here, torch on 3.11).
"""

import argparse
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(cmd: list[str], timeout: float, env: dict[str, str] | None = None) -> dict | None:
    """The last RESULT record `cmd` printed (run from the repo root), or None if it failed."""
    print("$", " ".join(cmd), flush=True)
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env
        )
    except subprocess.TimeoutExpired:
        print(f"  timed out after {timeout:.0f} s", flush=True)
        return None
    records = [
        json.loads(line[len("RESULT ") :])
        for line in proc.stdout.splitlines()
        if line.startswith("RESULT ")
    ]
    if proc.returncode or not records:
        print(f"  failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}", flush=True)
        return None
    human = [line for line in proc.stdout.splitlines() if line and not line.startswith("RESULT")]
    print("  " + human[-1], flush=True)
    return records[-1]


def table(rows: list[dict]) -> str:
    header = (
        "| model | input | batch | dtype | framework | compile + first step (s) "
        "| step s, median (min-max) | images/s | GFLOP/img | GFLOP/s | of matmul peak "
        "| peak mem (MB) | JAX speed-up |"
    )
    lines = [header, "|" + " --- |" * (header.count("|") - 1)]
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        size = r["size"] if "x" in str(r["size"]) else f"{r['size']}x{r['size']}"
        groups.setdefault((r["model"], size, r["batch"], r["dtype"]), []).append(r)
    for (model, size, batch, dtype), group in groups.items():
        peak = max(r.get("peak_gflops", float("nan")) for r in group)
        jax_rows = [r for r in group if r["framework"].startswith("jax")]
        for r in group:
            name = r["framework"] + ("" if r["mode"] == "jit" else f" {r['mode']}")
            if r["framework"].startswith("torch") and r.get("channels_last"):
                name += " channels_last"
            gflops = r["flops_per_image"] * r["images_per_s"] / 1e9
            # Each JAX run's speed over this row's (several JAX releases: one ratio each).
            ratio = ", ".join(
                (f"{j['framework'].split()[-1]}: " if len(jax_rows) > 1 else "")
                + f"{j['images_per_s'] / r['images_per_s']:.2f}x"
                for j in jax_rows
                if not r["framework"].startswith("jax")
            )
            lines.append(
                f"| {model} | {size} | {batch} | {dtype} | {name} | {r['first_step_s']:.1f} | "
                f"{r['step_s_median']:.3f} ({r['step_s_min']:.3f}-{r['step_s_max']:.3f}) | "
                f"{r['images_per_s']:.3f} | {r['flops_per_image'] / 1e9:.1f} | {gflops:.1f} | "
                f"{gflops / peak:.0%} of {peak:.0f} | {r['peak_mem_mb']:.0f} | {ratio} |"
            )
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.side_by_side", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--models", nargs="+", default=["unet_paper"])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--dtypes", nargs="+", default=["float32"])
    parser.add_argument("--torch-modes", nargs="+", default=["eager", "compile"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--torch-python", default=sys.executable, help="interpreter for the PyTorch runs"
    )
    parser.add_argument(
        "--frameworks", nargs="+", default=["jax", "torch"], help="jax, torch or both"
    )
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per run")
    parser.add_argument("--out", default=None, help="append RESULT records to this JSONL file")
    parser.add_argument("--table", default=None, help="only print the table of a --out file")
    args = parser.parse_args()
    if args.table:
        with open(args.table) as f:
            print(table([json.loads(line) for line in f if line.strip()]))
        return

    rows = []
    for model in args.models:
        for size in args.sizes:
            for dtype in args.dtypes:
                common = ["--model", model, "--size", str(size), "--batch", str(args.batch)]
                common += ["--dtype", dtype, "--repeats", str(args.repeats)]
                cmds = []
                if "jax" in args.frameworks:
                    cmds.append([sys.executable, "-m", "benchmarks.bench_train_step", *common])
                if "torch" in args.frameworks:
                    torch = [args.torch_python, "-m", "benchmarks.peer_torch", *common, "--peak"]
                    cmds += [[*torch, "--mode", mode] for mode in args.torch_modes]
                for cmd in cmds:
                    record = run(cmd, args.timeout)
                    if record is None:
                        continue
                    rows.append(record)
                    if args.out:
                        with open(args.out, "a") as f:
                            f.write(json.dumps(record) + "\n")
    if rows:
        print(f"\nmachine: {rows[0].get('machine', '')}\n")
        print(table(rows))


if __name__ == "__main__":
    main()
