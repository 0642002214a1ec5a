r"""Results of a sweep, read only from its runs' own files: tables, plots, a noise screen.

`collect` (after every finished run, and by `sweep.py --collect`) writes results.csv and
results.md (one row per variant: mean and sample std over seeds), curves.png and bars.png into
the sweep workdir. A run counts once it is finished (its eval/report.json scores total_steps);
unfinished runs are left out and counted in the "runs" column.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import os
from typing import Any

import numpy as np

from jaxseg import workdir as workdir_lib
from jaxseg.sweeps.spec import Plan, Run

METRICS = ("pixel_accuracy", "mean_accuracy", "mean_iou", "frequency_weighted_iou")
METRIC_TITLES = {
    "pixel_accuracy": "pixel acc",
    "mean_accuracy": "mean acc",
    "mean_iou": "mIoU",
    "frequency_weighted_iou": "fwIoU",
}
RESULT_FILES = ("results.csv", "results.md", "curves.png", "bars.png")


@dataclasses.dataclass
class RunResult:
    """A finished run's numbers, read from its own files."""

    run: Run
    report: dict  # eval/report.json
    curve: tuple[list[int], list[float]]  # (steps, validation mIoU)
    train_wall_time_s: float | None
    images_per_sec: float | None
    num_params: int | None


def read_result(run: Run) -> RunResult | None:
    """The result of `run` if finished (report at total_steps), else None."""
    report = read_report(run)
    if report is None:
        return None
    run_dir = workdir_lib.RunDir(run.workdir)
    records = run_dir.read_metrics(missing_ok=True)
    evals = {r["step"]: r["mean_iou"] for r in records if r.get("split") == "eval"}
    steps = sorted(evals)
    rates = [r["images_per_sec"] for r in records if "images_per_sec" in r]
    info = run_dir.read_run_info()
    return RunResult(
        run=run,
        report=report,
        curve=(steps, [evals[s] for s in steps]),
        train_wall_time_s=_wall_time(info, records),
        images_per_sec=float(np.mean(rates)) if rates else None,
        num_params=info.get("num_params") if info else None,
    )


def read_report(run: Run) -> dict | None:
    """The run's eval/report.json if it scores the final step (eval.py may rewrite it)."""
    report = workdir_lib.RunDir(run.workdir).read_report()
    if report is None:
        return None
    return report if report.get("step") == int(run.config.total_steps) else None


def _wall_time(info: dict | None, records: list[dict]) -> float | None:
    """Seconds spent in train_and_evaluate over all invocations: from each invocation's start
    (run_info.json) to its last metrics line. Time between invocations (queueing, a preempted
    machine) is not counted; compilation, evaluation and checkpointing are."""
    if not info or not info.get("invocations") or not records:
        return None
    starts = sorted(inv["time"] for inv in info["invocations"])
    total = 0.0
    for i, start in enumerate(starts):
        end = starts[i + 1] if i + 1 < len(starts) else math.inf
        times = [r["time"] for r in records if start <= r["time"] < end]
        if times:
            total += max(times) - start
    return total


def _stats(values: list[float | None]) -> tuple[float, float]:
    """(mean, sample std with ddof=1) of the non-None values; nan where undefined."""
    vals = [float(v) for v in values if v is not None]
    if not vals:
        return math.nan, math.nan
    std = float(np.std(vals, ddof=1)) if len(vals) > 1 else math.nan
    return float(np.mean(vals)), std


def summarize(plan_: Plan) -> tuple[list[dict], dict[str, list[RunResult]], list[str]]:
    """(one row per variant, finished results per variant, class names) of the plan's runs."""
    results = {v: [] for v in plan_.variants}
    for run in plan_.runs:
        result = read_result(run)
        if result is not None:
            results[run.variant].append(result)
    classes = []
    for rs in results.values():
        for r in rs:
            classes = list(r.report.get("per_class", {}))
            break
        if classes:
            break
    planned = {v: sum(r.variant == v for r in plan_.runs) for v in plan_.variants}
    rows = []
    for variant, rs in results.items():
        row: dict[str, Any] = {
            "variant": variant,
            "runs": f"{len(rs)}/{planned[variant]}",
            "seeds": " ".join(str(r.run.seed) for r in rs),
        }
        columns: dict[str, list] = {m: [r.report[m] for r in rs] for m in METRICS}
        for c in classes:
            columns[f"iou_{c}"] = [r.report["per_class"][c]["iou"] for r in rs]
        columns["train_wall_time_s"] = [r.train_wall_time_s for r in rs]
        columns["images_per_sec"] = [r.images_per_sec for r in rs]
        columns["num_params"] = [r.num_params for r in rs]
        for key, values in columns.items():
            row[f"{key}_mean"], row[f"{key}_std"] = _stats(values)
        rows.append(row)
    return rows, results, classes


def collect(plan_: Plan) -> dict[str, str]:
    """Writes results.csv, results.md, curves.png and bars.png into the sweep workdir.

    Reads only the runs' own files (eval/report.json, metrics.jsonl, run_info.json); unfinished
    runs are left out and counted in the "runs" column. Returns {file name: path}.
    """
    rows, results, classes = summarize(plan_)
    paths = {name: os.path.join(plan_.workdir, name) for name in RESULT_FILES}
    os.makedirs(plan_.workdir, exist_ok=True)
    fields = list(rows[0])
    _atomic_write(paths["results.csv"], lambda f: _write_csv(f, fields, rows))
    _atomic_write(paths["results.md"], lambda f: f.write(_markdown(plan_, rows, classes)))
    _save_curves(results, paths["curves.png"])
    _save_bars(results, rows, paths["bars.png"])
    return paths


def _atomic_write(path: str, write) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", newline="") as f:
        write(f)
    os.replace(tmp, path)  # Readers (and concurrent SLURM tasks) never see half a file.


def _write_csv(f, fields, rows) -> None:
    writer = csv.DictWriter(f, fieldnames=fields)
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _csv_value(v) for k, v in row.items()})


def _csv_value(v: Any) -> str:
    if isinstance(v, float):
        return "" if math.isnan(v) else repr(v)  # repr: every digit, so the file round-trips.
    return str(v)


def _pm(mean: float, std: float, fmt: str = ".4f") -> str:
    if math.isnan(mean):
        return "-"
    return f"{mean:{fmt}}" + ("" if math.isnan(std) else f" ± {std:{fmt}}")


def within_noise(a: dict, b: dict, key: str = "mean_iou") -> bool | None:
    """Whether variants `a` and `b` (summary rows) differ in `key` by less than twice the
    standard error of the difference, sqrt(s_a^2/n_a + s_b^2/n_b); None without two seeds each.

    A rough screen, not a test: with 2 seeds the std itself is very uncertain.
    """
    na, nb = (int(r["runs"].split("/")[0]) for r in (a, b))
    if na < 2 or nb < 2:
        return None
    se = math.sqrt(a[f"{key}_std"] ** 2 / na + b[f"{key}_std"] ** 2 / nb)
    return abs(a[f"{key}_mean"] - b[f"{key}_mean"]) <= 2 * se  # <=: identical results too.


def _markdown(plan_: Plan, rows: list[dict], classes: list[str]) -> str:
    ref = rows[0]
    out = [
        f"# Sweep `{plan_.sweep_file}`",
        "",
        plan_.sweep.description,
        "",
        f"Base config `{plan_.sweep.base}`; seeds {sorted({r.seed for r in plan_.runs})}; "
        f"runs in `{plan_.workdir}/<variant>-seed<seed>`. Mean ± sample std (ddof 1) over the "
        "finished seeds; metrics from each run's `eval/report.json` (final step). Δ mIoU is "
        f"against `{ref['variant']}`; *noise* marks a difference under twice its standard "
        "error (a rough screen; 2 seeds say little).",
        "",
        "| variant | runs | pixel acc | mean acc | mIoU | fwIoU | Δ mIoU | wall (s) | img/s "
        "| params |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        delta = row["mean_iou_mean"] - ref["mean_iou_mean"]
        noise = within_noise(row, ref)
        delta_text = "" if row is ref or math.isnan(delta) else f"{delta:+.4f}"
        if delta_text and noise:
            delta_text += " (noise)"
        params = row["num_params_mean"]
        out.append(
            "| "
            + " | ".join(
                [
                    row["variant"],
                    row["runs"],
                    *(_pm(row[f"{m}_mean"], row[f"{m}_std"]) for m in METRICS),
                    delta_text,
                    _pm(row["train_wall_time_s_mean"], row["train_wall_time_s_std"], ".0f"),
                    _pm(row["images_per_sec_mean"], row["images_per_sec_std"], ".1f"),
                    "-" if math.isnan(params) else f"{int(params):,}",
                ]
            )
            + " |"
        )
    if classes:
        out += [
            "",
            "Per-class IoU:",
            "",
            "| variant | " + " | ".join(classes) + " |",
            "| --- |" + " --- |" * len(classes),
        ]
        for row in rows:
            cells = [_pm(row[f"iou_{c}_mean"], row[f"iou_{c}_std"], ".3f") for c in classes]
            out.append(f"| {row['variant']} | " + " | ".join(cells) + " |")
    first = plan_.runs[0]
    common = [f for f in first.flags if f not in first.own_flags and "--config.seed=" not in f]
    out += ["", f"Every run: `{' '.join(common) or '(the base config)'}`", "", "Variants:", ""]
    for variant in plan_.variants:
        run = next(r for r in plan_.runs if r.variant == variant)
        out.append(f"- `{variant}`: `{' '.join(run.own_flags) or '(no further change)'}`")
    return "\n".join(out) + "\n"


def _figure(width: float, height: float):
    from matplotlib.figure import Figure  # No pyplot: no global state, no display needed.

    fig = Figure(figsize=(width, height), dpi=100)
    return fig, fig.subplots(1, 1)


def _save_curves(results: dict[str, list[RunResult]], path: str) -> None:
    """Validation mIoU against step: the mean over seeds per variant, a ±1 std band."""
    fig, ax = _figure(7.0, 4.5)
    drawn = False
    for variant, rs in results.items():
        curves = [r.curve for r in rs if r.curve[0]]
        if not curves:
            continue
        steps = sorted(set.intersection(*(set(c[0]) for c in curves)))
        values = np.array([[dict(zip(*c))[s] for s in steps] for c in curves])
        mean = values.mean(axis=0)
        (line,) = ax.plot(steps, mean, marker="o", ms=3, label=f"{variant} (n={len(curves)})")
        if len(curves) > 1:
            std = values.std(axis=0, ddof=1)
            ax.fill_between(steps, mean - std, mean + std, color=line.get_color(), alpha=0.2)
        drawn = True
    if drawn:
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no finished runs yet", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("step")
    ax.set_ylabel("validation mean IoU")
    ax.set_title("validation mIoU (mean over seeds, band ±1 std)")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)


def _save_bars(results: dict[str, list[RunResult]], rows: list[dict], path: str) -> None:
    """Final mIoU per variant: mean over seeds, error bar ±1 std, each seed as a dot."""
    fig, ax = _figure(max(5.0, 1.1 * len(rows) + 2), 4.5)
    x = np.arange(len(rows))
    means = np.array([r["mean_iou_mean"] for r in rows])
    stds = np.nan_to_num(np.array([r["mean_iou_std"] for r in rows]))
    ax.bar(x, np.nan_to_num(means), yerr=stds, capsize=4, color="tab:blue", alpha=0.6)
    for i, row in enumerate(rows):
        seeds = [r.report["mean_iou"] for r in results[row["variant"]]]
        ax.plot([i] * len(seeds), seeds, "k.", ms=6)
    ax.set_xticks(x)
    ax.set_xticklabels([r["variant"] for r in rows], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("final validation mean IoU")
    ax.set_title("final mIoU: mean ± 1 std over seeds, dots = seeds", fontsize=10)
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
