r"""Ablation sweeps: run named variants x seeds of one base config, then tabulate and plot.

A sweep file (`configs/sweeps/*.py`) defines `get_sweep() -> Sweep`: a base config file, named
variants (each a dict of `config.*` overrides) and the seeds. Every run is the train.py command

  python train.py --config <base> --workdir <sweep workdir>/<variant>-seed<seed> \
      --config.<key>=<value> ...   (common overrides, command-line overrides, variant, seed)

so `--print-commands`, the SLURM script and the local runner all run the same thing, and every
run resumes exactly like any train.py run. Before anything runs, `plan` parses each run's flags
against the locked base config the way train.py will (ml_collections config_flags), so a
misspelt key fails at once, naming the variant and the closest valid key.

Run order: seed-major (every variant once with the first seed, then the next seed), variants in
the file's order; names `<variant>-seed<seed>`. A variant may start from another variant's run of
the same seed (`init_from=run_dir("fcn32s")`, the FCN paper's staged training); that variant
must come earlier.

Finished-ness is read from the run's files, never from an exit code: a run is finished when its
latest complete checkpoint is at `total_steps` and `eval/report.json` scores that step. A run
stopped early (SIGTERM, `max_steps_per_run`) is resumed by starting it again.

Results (`collect`, after every finished run and by `sweep.py --collect`): results.csv and
results.md (one row per variant: mean and sample std over seeds), curves.png and bars.png.
"""

from __future__ import annotations

import csv
import dataclasses
import difflib
import importlib.util
import json
import math
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any, TextIO

import ml_collections
import numpy as np

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
METRICS = ("pixel_accuracy", "mean_accuracy", "mean_iou", "frequency_weighted_iou")
METRIC_TITLES = {
    "pixel_accuracy": "pixel acc",
    "mean_accuracy": "mean acc",
    "mean_iou": "mIoU",
    "frequency_weighted_iou": "fwIoU",
}
RESULT_FILES = ("results.csv", "results.md", "curves.png", "bars.png")


@dataclasses.dataclass(frozen=True)
class RunDir:
    """Placeholder for the workdir of `variant`'s run with the same seed (see `run_dir`)."""

    variant: str


def run_dir(variant: str) -> RunDir:
    """An override value meaning "the run of `variant` with this run's seed", e.g.
    `{"init_from": run_dir("fcn32s")}` trains FCN-16s from the FCN-32s run (staged training)."""
    return RunDir(variant)


@dataclasses.dataclass(frozen=True)
class Sweep:
    """What a sweep file's `get_sweep()` returns.

    Attributes:
      base: config file, relative to the repository root (e.g. "configs/default.py").
      variants: {name: {"dotted.config.key": value}}, in run order; names become directories.
      seeds: `config.seed` of each repetition.
      common: overrides applied to every variant (before the variant's own).
      description: one line for results.md.
    """

    base: str
    variants: Mapping[str, Mapping[str, Any]]
    seeds: Sequence[int] = (0,)
    common: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    description: str = ""


@dataclasses.dataclass
class Run:
    """One variant x seed: its directory, its train.py flags and the config they resolve to."""

    variant: str
    seed: int
    name: str
    workdir: str  # As the user gave the sweep workdir (may be relative), + name.
    flags: list[str]  # --config.* overrides, in order.
    config: ml_collections.ConfigDict
    depends_on: list[str]  # Names of runs this one initialises from.
    own_flags: list[str] = dataclasses.field(default_factory=list)  # The variant's own flags.


@dataclasses.dataclass
class Plan:
    """A validated sweep: every run, in order."""

    sweep_file: str
    sweep: Sweep
    workdir: str
    runs: list[Run]

    @property
    def variants(self) -> list[str]:
        return list(dict.fromkeys(r.variant for r in self.runs))


class SweepError(ValueError):
    """A sweep file, override or run directory that cannot be run as asked."""


# ---------------------------------------------------------------------------------------------
# Loading and validation.


def load_sweep(path: str) -> Sweep:
    """Imports the sweep file at `path` and returns its `get_sweep()`; errors name the file."""
    if not os.path.isfile(path):
        raise SweepError(f"no sweep file {path}")
    if REPO_ROOT not in sys.path:
        sys.path.insert(0, REPO_ROOT)  # Sweep files import configs.* and jaxseg.*.
    spec = importlib.util.spec_from_file_location("_jaxseg_sweep_file", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_sweep"):
        raise SweepError(f"{path} defines no get_sweep()")
    sweep = module.get_sweep()
    if not isinstance(sweep, Sweep):
        raise SweepError(f"{path}: get_sweep() returned {type(sweep).__name__}, not a Sweep")
    if not sweep.variants:
        raise SweepError(f"{path}: the sweep has no variants")
    if not sweep.seeds or len(set(sweep.seeds)) != len(sweep.seeds):
        raise SweepError(f"{path}: seeds must be distinct and non-empty, got {sweep.seeds}")
    for name in sweep.variants:
        if not _NAME_RE.match(name):
            raise SweepError(
                f"{path}: variant name {name!r} must be letters, digits and _.+- (a directory name)"
            )
    return sweep


def format_value(value: Any) -> str:
    """A Python override value as train.py's `--config.<key>=<value>` text."""
    if isinstance(value, bool | int | float):
        return repr(value)
    if isinstance(value, str):
        return value
    if isinstance(value, tuple | list):
        return repr(tuple(value))
    raise SweepError(f"cannot pass {value!r} ({type(value).__name__}) as a --config flag")


def _config_keys(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
    keys = []
    for k, v in config.items():
        keys.append(prefix + k)
        if isinstance(v, ml_collections.ConfigDict):
            keys.extend(_config_keys(v, prefix + k + "."))
    return keys


def _check_key(config: ml_collections.ConfigDict, key: str, where: str) -> None:
    """Raises SweepError naming `where` and the closest key if `key` is not in `config`."""
    node: Any = config
    for part in key.split("."):
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            close = difflib.get_close_matches(key, _config_keys(config), n=1, cutoff=0.6)
            hint = f'; did you mean "{close[0]}"?' if close else ""
            raise SweepError(f'{where}: no config key "{key}" in the base config{hint}')
        node = node[part]
    if isinstance(node, ml_collections.ConfigDict):
        raise SweepError(f'{where}: "{key}" is a group of settings; override its fields')


def load_config(base: str, flags: Sequence[str]) -> ml_collections.ConfigDict:
    """The locked config train.py builds from `--config=<base>` plus `flags` (same parser)."""
    from absl import flags as absl_flags
    from ml_collections import config_flags

    argv = ["train.py", f"--config={base}", *flags]
    values = absl_flags.FlagValues()
    config_flags.DEFINE_config_file(
        "config", None, "", flag_values=values, lock_config=True, sys_argv=argv
    )
    values(argv)
    return values.config


def parse_overrides(texts: Sequence[str]) -> list[tuple[str, str]]:
    """["--config.a.b=1", ...] (command-line form) -> [("a.b", "1"), ...]."""
    out = []
    for text in texts:
        m = re.match(r"^--?config\.([A-Za-z0-9_.]+)=(.*)$", text, re.S)
        if not m:
            raise SweepError(f"expected --config.<key>=<value>, got {text!r}")
        out.append((m.group(1), m.group(2)))
    return out


def plan(
    sweep_file: str,
    workdir: str,
    *,
    overrides: Sequence[str] = (),
    variants: Sequence[str] | None = None,
    seeds: Sequence[int] | None = None,
    sweep: Sweep | None = None,
) -> Plan:
    """Loads and validates a sweep; returns every run, in run order. Nothing is run or written.

    Args:
      sweep_file: path of a `configs/sweeps/*.py` file.
      workdir: the sweep's directory; runs go to `<workdir>/<variant>-seed<seed>`.
      overrides: `--config.<key>=<value>` texts applied to every run (e.g. another data set).
      variants: run only these variants (names from the file), in the file's order.
      seeds: replaces the file's seeds.
      sweep: use this Sweep instead of the file's get_sweep() (`sweep_file` still names it).

    Raises:
      SweepError naming the sweep file, variant and key of any override the base config
      rejects, and any run directory whose config.json disagrees with the sweep.
    """
    sweep = sweep or load_sweep(sweep_file)
    base = sweep.base if os.path.isabs(sweep.base) else os.path.join(REPO_ROOT, sweep.base)
    if not os.path.isfile(base):
        raise SweepError(f"{sweep_file}: base config {sweep.base} does not exist")
    base_rel = os.path.relpath(base, REPO_ROOT) if base.startswith(REPO_ROOT) else base
    if REPO_ROOT not in sys.path:
        sys.path.insert(0, REPO_ROOT)
    base_config = load_config(base, [])
    cli = parse_overrides(overrides)
    names = list(sweep.variants)
    if variants:
        unknown = [v for v in variants if v not in sweep.variants]
        if unknown:
            raise SweepError(f"{sweep_file}: no variant(s) {unknown}; the variants are {names}")
        names = [v for v in names if v in set(variants)]
    seeds = list(seeds) if seeds else list(sweep.seeds)

    for key, _ in cli:
        _check_key(base_config, key, f"{sweep_file}: command-line override")
    for key in sweep.common:
        _check_key(base_config, key, f"{sweep_file}: common overrides")
    for variant in names:
        for key in sweep.variants[variant]:
            _check_key(base_config, key, f'{sweep_file}: variant "{variant}"')
            if key == "seed":
                raise SweepError(f'{sweep_file}: variant "{variant}" sets "seed"; use seeds=')
            if key in dict(cli):
                raise SweepError(
                    f'{sweep_file}: the command-line override of "{key}" would erase variant '
                    f'"{variant}"\'s own setting of it'
                )

    runs = []
    for seed in seeds:
        for variant in names:
            runs.append(_make_run(sweep_file, sweep, base_rel, workdir, variant, seed, cli, names))
    _check_existing(runs)
    return Plan(sweep_file=sweep_file, sweep=sweep, workdir=workdir, runs=runs)


def run_name(variant: str, seed: int) -> str:
    return f"{variant}-seed{seed}"


def _make_run(sweep_file, sweep, base, workdir, variant, seed, cli, names) -> Run:
    where = f'{sweep_file}: variant "{variant}"'
    # (key, value, is_text): command-line overrides are already flag text (train.py parses them).
    items = [(k, v, False) for k, v in sweep.common.items()]
    items += [(k, v, True) for k, v in cli]
    items += [(k, v, False) for k, v in sweep.variants[variant].items()]
    # One flag per key, the last setting winning: absl accumulates repeated tuple-valued
    # --config flags ((64, 64) then (148, 148) would give (64, 64, 148, 148)).
    merged = {}
    for key, value, is_text in items:
        merged.pop(key, None)
        merged[key] = (value, is_text)
    flags, expected, depends_on = [], {}, []
    for key, (value, is_text) in merged.items():
        if isinstance(value, RunDir):
            if value.variant in sweep.variants and value.variant not in names:
                raise SweepError(
                    f'{where} starts from variant "{value.variant}" (run_dir): select it too'
                )
            if value.variant not in names or names.index(value.variant) >= names.index(variant):
                raise SweepError(
                    f'{where}: {key}=run_dir("{value.variant}") must name a variant that runs '
                    f"before it (variants, in order: {names})"
                )
            depends_on.append(run_name(value.variant, seed))
            value = os.path.join(workdir, run_name(value.variant, seed))
        try:
            text = value if is_text else format_value(value)
        except SweepError as e:
            raise SweepError(f'{where}, key "{key}": {e}') from None
        flags.append(f"--config.{key}={text}")
        if not is_text:
            expected[key] = value
    flags.append(f"--config.seed={seed}")
    own = [f for f in flags if f.split("=")[0].removeprefix("--config.") in sweep.variants[variant]]
    try:
        config = load_config(os.path.join(REPO_ROOT, base), flags)
    except Exception as e:  # absl / ml_collections parse and type errors.
        raise SweepError(f"{where}: the base config {base} rejects its overrides: {e}") from e
    for key, value in expected.items():
        got = _get(config, key)
        if isinstance(value, list | tuple):
            same = isinstance(got, list | tuple) and list(got) == list(value)
        else:
            same = got == value
        if not same:  # A value the flag text cannot carry (train.py would run something else).
            raise SweepError(f'{where}: "{key}" = {value!r} came out of train.py as {got!r}')
    return Run(
        variant=variant,
        seed=seed,
        name=run_name(variant, seed),
        workdir=os.path.join(workdir, run_name(variant, seed)),
        flags=flags,
        config=config,
        depends_on=depends_on,
        own_flags=own,
    )


def _get(config, key: str) -> Any:
    node = config
    for part in key.split("."):
        node = node[part]
    return node


def _check_existing(runs: list[Run]) -> None:
    """A run directory trained with other settings must not be silently resumed or tabulated."""
    for run in runs:
        path = os.path.join(run.workdir, "config.json")
        if not os.path.exists(path):
            continue
        with open(path) as f:
            found = json.load(f)
        want = json.loads(run.config.to_json_best_effort())
        diff = sorted(_diff(found, want))
        if diff:
            shown = ", ".join(diff[:5]) + (" ..." if len(diff) > 5 else "")
            raise SweepError(
                f"{path} differs from the sweep's config for {run.name} in: {shown}. The sweep "
                "file or its command-line overrides changed since that run started: move that "
                "directory away, or undo the change"
            )


def _diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            if k not in a or k not in b:
                out.append(prefix + k)
            else:
                out.extend(_diff(a[k], b[k], prefix + k + "."))
        return out
    return [] if a == b else [prefix.rstrip(".") or "<root>"]


# ---------------------------------------------------------------------------------------------
# Commands: local runner, printed commands, SLURM array.


def train_command(plan_: Plan, run: Run, *, python: str = "python") -> list[str]:
    """The train.py command of `run` (paths as the user gave them; run from the repo root)."""
    return [
        python,
        "train.py",
        "--config",
        os.path.relpath(_base_path(plan_), REPO_ROOT),
        "--workdir",
        run.workdir,
        *run.flags,
    ]


def _base_path(plan_: Plan) -> str:
    base = plan_.sweep.base
    return base if os.path.isabs(base) else os.path.join(REPO_ROOT, base)


def print_commands(plan_: Plan, out: TextIO | None = None) -> None:
    out = out or sys.stdout
    for run in plan_.runs:
        out.write(shlex.join(train_command(plan_, run)) + "\n")


def write_slurm_array(plan_: Plan, path: str, sbatch_options: Sequence[str] = ()) -> str:
    """Writes a SLURM job-array script with one task per run, in run order; returns `path`.

    Each task runs its train.py command through `srun ... --distributed` (so a task may span
    several nodes: jax.distributed reads the SLURM environment) in a shell that knows the
    sweep's working directory. Resubmitting, or `scontrol requeue`, resumes unfinished runs
    (train.py resumes from its workdir) and finishes done ones at once; a task whose
    `run_dir(...)` source has not finished stops with an error saying which task to wait for.
    After its run, each task rewrites the sweep's results (`sweep.py --collect`).
    """
    runs = plan_.runs
    index = {r.name: i for i, r in enumerate(runs)}
    cwd = os.getcwd()
    lines = [
        "#!/bin/bash",
        f"# Sweep {plan_.sweep_file}: {len(runs)} runs, one SLURM array task each.",
        f"#   sbatch {path}",
        "# Tasks that start from another run (run_dir) must wait for it; submit those after",
        "# their sources, e.g. with --dependency=afterok:<job id of the first submission>.",
        f"#SBATCH --job-name={_slurm_safe(os.path.basename(plan_.workdir.rstrip('/')) or 'sweep')}",
        f"#SBATCH --array=0-{len(runs) - 1}",
        f"#SBATCH --output={os.path.abspath(os.path.join(plan_.workdir, 'slurm-%A_%a.out'))}",
        "#SBATCH --requeue",
        # SIGTERM to the job steps (train.py) 2 minutes before the time limit: they checkpoint.
        "#SBATCH --signal=TERM@120",
        *(f"#SBATCH {opt}" for opt in sbatch_options),
        "set -uo pipefail",
        f"cd {shlex.quote(cwd)}  # Run dirs are relative to it.",
        f"REPO={shlex.quote(REPO_ROOT)}",
        "rc=0",
        'case "${SLURM_ARRAY_TASK_ID:?run me with sbatch}" in',
    ]
    for i, run in enumerate(runs):
        cmd = train_command(plan_, run)
        args = [shlex.quote(a) for a in cmd[2:]]
        args[1] = f'"$REPO"/{shlex.quote(cmd[3])}'  # The config file, from any directory.
        cmd = ["srun", "python", '"$REPO/train.py"', *args, "--distributed", "|| rc=$?"]
        lines.append(f"  {i})  # {run.name}")
        for dep in run.depends_on:
            dep_dir = shlex.quote(os.path.join(plan_.workdir, dep))
            lines.append(
                f"    [ -f {dep_dir}/eval/report.json ] || "
                f'{{ echo "{run.name} starts from {dep} (task {index[dep]}): run that first" >&2; '
                "exit 1; }"
            )
        lines.append("    " + " ".join(cmd))
        lines.append("    ;;")
    collect = [
        "python",
        '"$REPO/sweep.py"',
        "--sweep",
        shlex.quote(plan_.sweep_file),
        "--workdir",
        shlex.quote(plan_.workdir),
        "--collect",
    ]
    lines += [
        '  *) echo "no run for array task $SLURM_ARRAY_TASK_ID" >&2; exit 2 ;;',
        "esac",
        " ".join(collect) + " || true  # Results so far; never masks the run's own status.",
        "exit $rc",
        "",
    ]
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    os.makedirs(plan_.workdir, exist_ok=True)  # SLURM does not create --output's directory.
    with open(path, "w") as f:
        f.write("\n".join(lines))
    os.chmod(path, 0o755)
    return path


def _slurm_safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


@dataclasses.dataclass
class RunState:
    """What a run's files say: latest complete checkpoint step and whether it is finished."""

    step: int  # 0 before the first checkpoint.
    total_steps: int
    has_report: bool

    @property
    def finished(self) -> bool:
        return self.step >= self.total_steps and self.has_report


def run_state(run: Run) -> RunState:
    """Reads `run`'s checkpoints/ and eval/report.json (no jax needed)."""
    total = int(run.config.total_steps)
    ckpt_dir = os.path.join(run.workdir, "checkpoints")
    steps = [int(n) for n in _listdir(ckpt_dir) if n.isdigit()]  # Partial saves have a suffix.
    report = _read_report(run)
    return RunState(step=max(steps, default=0), total_steps=total, has_report=report is not None)


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except FileNotFoundError:
        return []


def _read_report(run: Run) -> dict | None:
    """The run's eval/report.json if it scores the final step (eval.py may rewrite it)."""
    path = os.path.join(run.workdir, "eval", "report.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        report = json.load(f)
    return report if report.get("step") == int(run.config.total_steps) else None


def latest_logged_step(workdir: str) -> int:
    """The step of the last line of `<workdir>/metrics.jsonl` (0 if none); reads its tail only."""
    path = os.path.join(workdir, "metrics.jsonl")
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 4096))
            lines = f.read().decode(errors="replace").splitlines()
    except FileNotFoundError:
        return 0
    for line in reversed(lines):
        try:
            return int(json.loads(line)["step"])
        except (ValueError, KeyError):
            continue
    return 0


class _Stopper:
    """SIGINT / SIGTERM: forward SIGTERM to the running train.py (it checkpoints and exits) and
    start no further run. A second signal kills the child (its last complete checkpoint stays)."""

    def __init__(self):
        self.signum: int | None = None
        self.child: subprocess.Popen | None = None
        self._previous = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc_info):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame):
        del frame
        first = self.signum is None
        self.signum = self.signum or signum
        if self.child is not None and self.child.poll() is None:
            self.child.send_signal(signal.SIGTERM if first else signal.SIGKILL)
        msg = "stopping: the current run checkpoints, then the sweep ends; rerun to continue"
        print(f"\n{signal.Signals(signum).name}: " + (msg if first else "killing the run"))


def child_env(plan_: Plan) -> dict[str, str]:
    """train.py's environment: ours, plus a persistent XLA compilation cache for the sweep.

    Runs that differ only in seed compile identical programs; the cache turns every repeat's
    compilation into a load (what the tests do, tests/test_train_e2e.py). An existing
    JAX_COMPILATION_CACHE_DIR is kept.
    """
    env = dict(os.environ)
    cache = os.path.abspath(os.path.join(plan_.workdir, "xla_cache"))
    env.setdefault("JAX_COMPILATION_CACHE_DIR", cache)
    return env


def run_sweep(plan_: Plan, *, out: TextIO | None = None, poll_s: float = 2.0) -> int:
    """Runs every unfinished run of `plan_` in order, one train.py subprocess at a time.

    Returns 0 when every run is finished, 1 if any run failed (the others still ran), or
    128 + signal number when stopped by SIGINT / SIGTERM (rerun the same command to continue).
    Results are rewritten after each run finishes.
    """
    out = out or sys.stdout
    os.makedirs(plan_.workdir, exist_ok=True)
    runs, n = plan_.runs, len(plan_.runs)
    seconds_per_step: dict[str, list[float]] = {}
    failed: list[str] = []
    env = child_env(plan_)
    tty = out.isatty()
    t_sweep = time.time()
    with _Stopper() as stopper:
        for i, run in enumerate(runs, start=1):
            head = f"[{i}/{n}] {run.variant} seed {run.seed}"
            if stopper.signum:  # Signalled between runs (e.g. while writing results).
                out.write(f"{head}: not started (stopped); rerun the command to continue\n")
                return 128 + stopper.signum
            state = run_state(run)
            if state.finished:
                out.write(f"{head}: finished earlier ({state.step} steps), skipped\n")
                continue
            missing = [d for d in run.depends_on if not _finished_name(plan_, d)]
            if missing:
                out.write(f"{head}: skipped, its source run(s) {missing} did not finish\n")
                failed.append(run.name)
                continue
            verb = f"resuming at step {state.step}" if state.step else "starting at step 0"
            eta = _eta(runs[i - 1 :], seconds_per_step)
            out.write(f"{head}: {verb}/{state.total_steps} (log {run.workdir}/train.log){eta}\n")
            out.flush()
            while True:  # Restart a run that stops early by itself (max_steps_per_run).
                t0, step0 = time.time(), state.step
                rc = _run_child(plan_, run, env, stopper, out, head, tty, poll_s)
                state = run_state(run)
                if state.step > step0:
                    rate = (time.time() - t0) / (state.step - step0)
                    seconds_per_step.setdefault(run.variant, []).append(rate)
                if state.finished or stopper.signum or state.step <= step0:
                    break
            if state.finished:
                took = _duration(time.time() - t0)
                miou = (_read_report(run) or {}).get("mean_iou", float("nan"))
                eta = _eta(runs[i:], seconds_per_step)
                out.write(f"{head}: done, step {state.step}, mIoU {miou:.4f}, {took}{eta}\n")
                _collect_quietly(plan_, out)
            elif stopper.signum:
                out.write(f"{head}: stopped at step {state.step}; rerun the command to continue\n")
                _collect_quietly(plan_, out)
                return 128 + stopper.signum
            else:
                failed.append(run.name)
                out.write(
                    f"{head}: FAILED (exit code {rc}) at step {state.step}/{state.total_steps}; "
                    f"last lines of {run.workdir}/train.log:\n{_tail(run)}\n"
                )
            out.flush()
    _collect_quietly(plan_, out)
    took = _duration(time.time() - t_sweep)
    if failed:
        out.write(f"sweep: {len(failed)} run(s) failed: {', '.join(failed)} ({took})\n")
        return 1
    out.write(f"sweep: all {n} runs finished ({took}); results in {plan_.workdir}/results.md\n")
    return 0


def _finished_name(plan_: Plan, name: str) -> bool:
    run = next((r for r in plan_.runs if r.name == name), None)
    return run is not None and run_state(run).finished


def _run_child(plan_, run, env, stopper, out, head, tty, poll_s) -> int:
    os.makedirs(run.workdir, exist_ok=True)
    # Absolute script and config paths: the child runs in our working directory, where the
    # run directories (as the user typed them) are.
    cmd = train_command(plan_, run, python=sys.executable)
    cmd[1], cmd[3] = os.path.join(REPO_ROOT, "train.py"), _base_path(plan_)
    with open(os.path.join(run.workdir, "train.log"), "ab") as log:
        # Own session: a terminal's Ctrl-C reaches only us, and we ask the run to stop cleanly.
        child = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    stopper.child = child
    if stopper.signum:  # The signal came while the child was being started.
        child.send_signal(signal.SIGTERM)
    try:
        while True:
            try:
                return child.wait(timeout=poll_s)
            except subprocess.TimeoutExpired:
                if tty:
                    step = latest_logged_step(run.workdir)
                    out.write(f"\r{head}: step {step}/{run.config.total_steps}")
                    out.flush()
    finally:
        if child.poll() is None:  # An exception in the runner: do not leave the run behind.
            child.terminate()
            child.wait()
        stopper.child = None
        if tty:
            out.write("\r\033[K")


def _eta(remaining: list[Run], seconds_per_step: dict[str, list[float]]) -> str:
    if not seconds_per_step:
        return ""
    overall = float(np.mean([np.mean(v) for v in seconds_per_step.values()]))
    seconds = 0.0
    for run in remaining:
        rate = float(np.mean(seconds_per_step.get(run.variant, [overall])))
        seconds += max(0, int(run.config.total_steps) - run_state(run).step) * rate
    return f"; sweep ETA {_duration(seconds)}"


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    h, rem = divmod(seconds, 3600)
    return f"{h}h{rem // 60:02d}m" if h else f"{rem // 60}m{rem % 60:02d}s"


def _tail(run: Run, n: int = 15) -> str:
    path = os.path.join(run.workdir, "train.log")
    try:
        with open(path, errors="replace") as f:
            lines = [ln.rstrip() for ln in f if not re.match(r"I\d{4} ", ln)]
    except FileNotFoundError:
        return "(no log)"
    return "\n".join("    " + ln for ln in lines[-n:])


def _collect_quietly(plan_: Plan, out: TextIO) -> None:
    try:
        collect(plan_)
    except Exception as e:  # A results problem must not stop the runs; --collect shows it.
        out.write(f"warning: could not write the results: {e}\n")


# ---------------------------------------------------------------------------------------------
# Results.


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
    report = _read_report(run)
    if report is None:
        return None
    records = _read_jsonl(os.path.join(run.workdir, "metrics.jsonl"))
    evals = {r["step"]: r["mean_iou"] for r in records if r.get("split") == "eval"}
    steps = sorted(evals)
    rates = [r["images_per_sec"] for r in records if "images_per_sec" in r]
    info_path = os.path.join(run.workdir, "run_info.json")
    info = None
    if os.path.exists(info_path):
        with open(info_path) as f:
            info = json.load(f)
    return RunResult(
        run=run,
        report=report,
        curve=(steps, [evals[s] for s in steps]),
        train_wall_time_s=_wall_time(info, records),
        images_per_sec=float(np.mean(rates)) if rates else None,
        num_params=info.get("num_params") if info else None,
    )


def _read_jsonl(path: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


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
