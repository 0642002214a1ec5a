r"""Running a planned sweep: train.py commands, the local runner, the SLURM array script.

Every run is its train.py command (`train_command`), whether printed, written into the SLURM
array script or started by the local runner (`run_sweep`, one subprocess at a time, in plan
order); each rerun resumes from the run's own workdir like any train.py run.

Finished-ness is read from the run's files, never from an exit code: a run is finished when its
latest complete checkpoint is at `total_steps` and `eval/report.json` scores that step. A run
stopped early (SIGTERM, `max_steps_per_run`) is resumed by starting it again.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import TextIO

import numpy as np

from jaxseg import workdir as workdir_lib
from jaxseg.sweeps.results import collect, read_report
from jaxseg.sweeps.spec import REPO_ROOT, Plan, Run


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
    ckpt_dir = workdir_lib.RunDir(run.workdir).checkpoints
    names = [p.name for p in ckpt_dir.iterdir()] if ckpt_dir.exists() else []
    steps = [int(n) for n in names if n.isdigit()]  # Partial saves have a suffix.
    report = read_report(run)
    return RunState(step=max(steps, default=0), total_steps=total, has_report=report is not None)


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
    compilation into a load (what the tests do, tests/conftest.py). An existing
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
                miou = (read_report(run) or {}).get("mean_iou", float("nan"))
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
                    step = workdir_lib.RunDir(run.workdir).latest_logged_step()
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
