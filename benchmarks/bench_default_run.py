r"""The README's first command, timed the way a newcomer runs it: wall time, result, per class.

  python -m benchmarks.bench_default_run
  python -m benchmarks.bench_default_run --python venvs/py311/bin/python venvs/py313/bin/python \
      --repeats 2

Each run is the train command of README.md's first line, read from the README itself (so the
figure is always that of the command users type), with only the workdir replaced by a fresh
temporary one and `TFDS_DATA_DIR` pointed at a fresh empty folder: the data set's build is in the
wall time, as on a first try (--data-dir reuses a built one). With several interpreters (one per
Python/jax pair), their runs take turns round by round, so a VM that slows down during the
sitting slows every pair alike.

Per run: the wall time; the child's user and system CPU seconds, minor page faults and peak RSS
(`os.wait4`; page faults tell the runs that landed in glibc's slow arena mode under jax 0.10.2,
BENCHMARKS.md, "Host allocator"); the train images/s that train.py logged (range); and the final
evaluation's mean IoU and per-class IoU from `<workdir>/eval/report.json`. Then the verdict
against the README's promise: about --minutes minutes (up to 10% over), mean IoU >= --min-miou,
every class >= --min-class-iou. Prints one `RESULT {json}` line per run and a Markdown table
with the columns of BENCHMARKS.md's "Default config ..." sections. --override key=value
(repeatable) is appended as `--config.key=value`: ablations of the default, and the tests' tiny
run. A run that fails keeps its folder and prints where its log is.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from benchmarks import common, side_by_side
from jaxseg.workdir import RunDir

ROOT = Path(side_by_side.ROOT)
ABOUT = 1.10  # "about N minutes": at most 10% over


def readme_train_command(readme_text: str) -> list[str]:
    """The words of the train command on the first line of the README's first bash block
    (`pip install ... && python train.py ...`), as the shell splits them."""
    block = re.search(r"```bash\n(.*?)```", readme_text, flags=re.S)
    if block is None:
        raise ValueError("README.md has no ```bash block")
    first = next(line for line in block.group(1).splitlines() if line.strip())
    train = first.split("&&")[-1]
    words = shlex.split(train, comments=True)
    if words[:2] != ["python", "train.py"] or "--workdir" not in words:
        raise ValueError(f"README.md's first line has no `python train.py ... --workdir`: {first}")
    return words


def run_command(readme_words: list[str], python: str, workdir: str, overrides: list[str]):
    """The README's train command under `python`, its workdir replaced, overrides appended."""
    words = list(readme_words)
    words[0] = python
    words[words.index("--workdir") + 1] = workdir
    return words + [f"--config.{o}" for o in overrides]


def interpreter(python: str) -> str:
    """`python`'s versions, as "3.13.0, jax 0.12.0.1" (asked in a subprocess)."""
    code = "import sys, importlib.metadata as m; print(sys.version.split()[0], m.version('jax'))"
    out = subprocess.run([python, "-c", code], capture_output=True, text=True, check=True)
    version, jax_version = out.stdout.split()
    return f"{version}, jax {jax_version}"


def timed_run(cmd: list[str], env: dict | None, log_path: str, timeout_s: float) -> dict:
    """Runs `cmd` from the repo root, its output to `log_path`; its wall time and, from
    `os.wait4`, its own CPU time, page faults and peak RSS. At the timeout it gets SIGTERM (train.py
    checkpoints and exits 75)."""
    with open(log_path, "w") as log:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        timer = threading.Timer(timeout_s, proc.send_signal, (signal.SIGTERM,))
        timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
        wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
    return {
        "exit_code": proc.returncode,
        "wall_s": wall,
        "user_s": usage.ru_utime,
        "system_s": usage.ru_stime,
        "minor_page_faults": usage.ru_minflt,
        "peak_rss_gb": usage.ru_maxrss * 1024 / 1e9,  # Linux: KiB
    }


def read_run(workdir: str) -> dict:
    """What a finished run reports: the final evaluation (mean IoU, IoU per class, its step) and
    the range of the train images/s train.py logged."""
    run = RunDir(workdir)
    report = run.read_report()
    if report is None:
        raise FileNotFoundError(f"{run.report_json} is missing: the run did not finish")
    rates = [r["images_per_sec"] for r in run.read_metrics() if "images_per_sec" in r]
    return {
        "step": report["step"],
        "mean_iou": report["mean_iou"],
        "class_iou": {name: c["iou"] for name, c in report["per_class"].items()},
        "images_per_s_min": min(rates, default=None),
        "images_per_s_max": max(rates, default=None),
    }


def verdict(row: dict, minutes: float, min_miou: float, min_class_iou: float) -> dict:
    """The promises a run missed, {what: how} ("wall", "mIoU" or a class name); empty: all met."""
    missed = {}
    if row["wall_s"] > minutes * 60 * ABOUT:
        missed["wall"] = f"wall {clock(row['wall_s'])} > about {minutes:g} min"
    if row["mean_iou"] < min_miou:
        missed["mIoU"] = f"mean IoU {row['mean_iou']:.4f} < {min_miou}"
    for name, iou in row["class_iou"].items():
        if iou is not None and iou < min_class_iou:
            missed[name] = f"{name} IoU {iou:.3f} < {min_class_iou}"
    return missed


def clock(seconds: float) -> str:
    """m:ss"""
    s = round(seconds)
    return f"{s // 60}:{s % 60:02d}"


def table(rows: list[dict]) -> str:
    """BENCHMARKS.md's columns: one line per run, in the order run."""
    classes = list(rows[0]["class_iou"]) if rows else []
    head = [
        "Python, jax", "wall", "user s", "system s", "page faults", "train images/s (logged)",
        "val mIoU", *classes, "peak RSS", "promise",
    ]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in rows:
        rates = (
            f"{r['images_per_s_min']:.0f}-{r['images_per_s_max']:.0f}"
            if r["images_per_s_min"] is not None
            else "-"
        )
        cells = [
            r["interpreter"], f"**{clock(r['wall_s'])}**", f"{r['user_s']:.0f}",
            f"{r['system_s']:.0f}", f"{r['minor_page_faults'] / 1e6:.1f} M", rates,
            f"**{r['mean_iou']:.4f}**",
            *("-" if r["class_iou"][c] is None else f"{r['class_iou'][c]:.3f}" for c in classes),
            f"{r['peak_rss_gb']:.2f} GB",
            "missed: " + ", ".join(r["missed"]) if r["missed"] else "met",
        ]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_default_run", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--python", nargs="+", default=[sys.executable], help="interpreters, one per Python/jax"
    )
    parser.add_argument("--repeats", type=int, default=1, help="rounds (each runs every --python)")
    parser.add_argument("--data-dir", default=None, help="a built TFDS_DATA_DIR to reuse")
    parser.add_argument(
        "--override", action="append", default=[], help="key=value, as --config.key=value"
    )
    parser.add_argument("--minutes", type=float, default=6.0, help="the promised wall time")
    parser.add_argument("--min-miou", type=float, default=0.75)
    parser.add_argument("--min-class-iou", type=float, default=0.30)
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per run")
    args = parser.parse_args()

    words = readme_train_command((ROOT / "README.md").read_text())
    print("command:", "python -m benchmarks.bench_default_run " + shlex.join(sys.argv[1:]))
    print("README's:", shlex.join(words))
    print("machine:", common.machine())
    names = {python: interpreter(python) for python in args.python}
    rows = []
    for round_ in range(args.repeats):
        for python in args.python:
            tmp = tempfile.mkdtemp(prefix="jaxseg-default-run-")
            data_dir = args.data_dir or os.path.join(tmp, "tensorflow_datasets")
            workdir = os.path.join(tmp, "runs", "default")
            cmd = run_command(words, python, workdir, args.override)
            print(f"round {round_ + 1}, {names[python]}: $ TFDS_DATA_DIR={data_dir}", end=" ")
            print(shlex.join(cmd), flush=True)
            log = os.path.join(tmp, "train.out")
            usage = timed_run(cmd, dict(os.environ, TFDS_DATA_DIR=data_dir), log, args.timeout)
            if usage["exit_code"]:
                raise SystemExit(f"exit {usage['exit_code']}; its output: {log}, run in {tmp}")
            row = {"interpreter": names[python], "round": round_ + 1, **usage, **read_run(workdir)}
            row["command"] = shlex.join(cmd)
            row["missed"] = verdict(row, args.minutes, args.min_miou, args.min_class_iou)
            common.emit(
                row,
                f"{names[python]}: {clock(row['wall_s'])}, mean IoU {row['mean_iou']:.4f}, "
                + (
                    "missed: " + "; ".join(row["missed"].values())
                    if row["missed"]
                    else "promise met"
                ),
            )
            rows.append(row)
            shutil.rmtree(tmp, ignore_errors=True)
    print()
    print(table(rows))


if __name__ == "__main__":
    main()
