r"""The training loop against its train step alone: does the input pipeline keep the device busy?

  python -m benchmarks.bench_train_loop --recipes isbi voc --steps 2000 --log-every 200 \
      --workers 8                                                       # a GPU machine
  python -m benchmarks.bench_train_loop --recipes default --steps 120 --log-every 20  # a CPU

For each recipe of benchmarks/bench_pipeline.py (a data set written the way users bring theirs:
an image folder of PNG/JPEG images and PNG masks, with a val.txt), two processes, one after the
other:

1. the loop: `python train.py --config <recipe> --workdir <tmp> --config.<key>=<value> ...`,
   as a user types it for their own folder, with --steps steps, a log every --log-every steps and
   one evaluation and checkpoint at the end. Its rate is the median of the images/s that
   train.py logged to metrics.jsonl, over the log windows after the first (which holds the
   augmentation's compile and the loaders' start). A window covers what the loop does per step:
   reading, decoding and padding on the host (--workers loader processes), the transfer, the
   device augmentation and the step;
2. the step alone: `python -m benchmarks.bench_train_step` on the same config and overrides, one
   fixed random batch already on the device (median of --repeats steps).

"Of the step" is the loop's rate over the step's: 100% means the device never waits for input.
Prints a Markdown table and one `RESULT {json}` line per recipe. --batch, --dtype and --override
(key=value, repeatable) change the recipe in both processes; a CPU dry run of the GPU table's
plumbing: --recipes isbi voc --steps 3 --log-every 1 --repeats 1 --override model.base_width=4.
"""

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time

from benchmarks import bench_pipeline, common, presets, side_by_side


def train_command(
    config_path: str, workdir: str, overrides: list[str], steps: int, log_every: int
) -> list[str]:
    """The train.py command line of a loop run: the recipe's overrides as --config flags, then
    the run's length, its logs and a single evaluation and checkpoint at the end."""
    run = [
        f"total_steps={steps}",
        f"log_every_steps={log_every}",
        f"eval_every_steps={steps}",
        f"checkpoint_every_steps={steps}",
    ]
    return [
        sys.executable, "train.py", "--config", config_path, "--workdir", workdir,
        *(f"--config.{o}" for o in [*overrides, *run]),
    ]  # fmt: skip


def logged_rates(metrics_jsonl: str) -> list[float]:
    """images/s of each train log window in a run's metrics.jsonl, after the first."""
    with open(metrics_jsonl) as f:
        records = [json.loads(line) for line in f if line.strip()]
    rates = [
        r["images_per_sec"] for r in records if r["split"] == "train" and "images_per_sec" in r
    ]
    return rates[1:]


def _run(cmd: list[str], timeout: float) -> None:
    print("$", shlex.join(cmd), flush=True)
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, cwd=side_by_side.ROOT
    )
    if proc.returncode:
        raise SystemExit(f"exit {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")


def measure(name: str, tmp: str, args: argparse.Namespace) -> dict:
    """The loop's and the step's rates for recipe `name` (see the module docstring)."""
    config_path, overrides = bench_pipeline.write_recipe(name, tmp, args.num_images)
    overrides += [f"data.loader_workers={args.workers}"] if args.workers is not None else []
    overrides += [f"batch_size={args.batch}"] if args.batch else []
    overrides += [f"model.dtype={args.dtype}"] if args.dtype else []
    overrides += args.override
    workdir = os.path.join(tmp, f"run_{name}")
    start = time.perf_counter()
    cmd = train_command(config_path, workdir, overrides, args.steps, args.log_every)
    _run(cmd, args.timeout)
    wall_s = time.perf_counter() - start
    rates = logged_rates(os.path.join(workdir, "metrics.jsonl"))
    if not rates:
        raise SystemExit(f"{name}: fewer than two train logs; raise --steps over --log-every")

    channels = len(presets.load(config_path, overrides).data.mean)  # one mean per channel
    step_cmd = [
        sys.executable, "-m", "benchmarks.bench_train_step", "--model", config_path, "--size", "0",
        "--batch", "0", "--channels", str(channels), "--repeats", str(args.repeats), "--no-peak",
        *(f"--override={o}" for o in overrides),
    ]  # fmt: skip
    step = side_by_side.run(step_cmd, args.timeout)  # its RESULT record
    if step is None:
        raise SystemExit(f"{name}: the step alone failed (above)")
    loop = statistics.median(rates)
    return {
        "recipe": name,
        "config": config_path,
        "batch": step["batch"],
        "size": step["size"],
        "dtype": step["dtype"],
        "device": step["device"],
        "workers": args.workers,
        "steps": args.steps,
        "train_py_wall_s": wall_s,
        "loop_images_per_s": loop,
        "loop_min": min(rates),
        "loop_max": max(rates),
        "windows": len(rates),
        "step_images_per_s": step["images_per_s"],
        "of_step": loop / step["images_per_s"],
        "command": shlex.join(cmd[1:]),
    }


def table(rows: list[dict]) -> str:
    lines = [
        "| recipe | input | batch | dtype | loader workers | loop images/s, median (min-max) "
        "| step alone images/s | loop / step | train.py wall (s) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        workers = "config's" if r["workers"] is None else r["workers"]
        lines.append(
            f"| {r['recipe']} | {r['size']} | {r['batch']} | {r['dtype']} | {workers} "
            f"| {r['loop_images_per_s']:.1f} ({r['loop_min']:.1f}-{r['loop_max']:.1f}) "
            f"| {r['step_images_per_s']:.1f} | {100 * r['of_step']:.0f}% "
            f"| {r['train_py_wall_s']:.0f} |"
        )
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_train_loop", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--recipes", nargs="+", default=["isbi", "voc"])
    parser.add_argument("--steps", type=int, default=2000, help="train steps of the loop run")
    parser.add_argument("--log-every", type=int, default=200, help="steps per log window")
    parser.add_argument(
        "--workers", type=int, default=None, help="config.data.loader_workers; default: config's"
    )
    parser.add_argument("--batch", type=int, default=0, help="batch size; 0: the recipe's")
    parser.add_argument("--dtype", default=None, help="model dtype; default: the recipe's")
    parser.add_argument(
        "--override", action="append", default=[], help="more key=value overrides, repeatable"
    )
    parser.add_argument("--repeats", type=int, default=20, help="timed steps of the step alone")
    parser.add_argument("--num-images", type=int, default=30, help="images per data set")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per process")
    args = parser.parse_args()

    print("command:", "python -m benchmarks.bench_train_loop " + shlex.join(sys.argv[1:]))
    print("machine:", common.machine())
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.recipes:
            row = measure(name, tmp, args)
            common.emit(
                row,
                f"{name}: loop {row['loop_images_per_s']:.1f} images/s, step alone "
                f"{row['step_images_per_s']:.1f} ({100 * row['of_step']:.0f}%), train.py "
                f"{row['train_py_wall_s']:.0f} s",
            )
            rows.append(row)
    print()
    print(table(rows))


if __name__ == "__main__":
    main()
