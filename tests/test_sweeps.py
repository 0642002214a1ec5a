"""sweep.py end to end and jaxseg/sweeps/: plans, validation, SLURM script, results, resumption.

Two sweeps of configs/sweeps/smoke.py (two variants x two seeds, four runs each) run as a user
runs them, `python sweep.py --sweep ... --workdir runs/<x>` with a relative workdir, from a
scratch directory, on 2 fake CPU devices:
- "straight" runs through once: the oracle.
- "interrupted" gets SIGTERM once its second run has finished, then the same command again.
Same config + seed in both sweeps must give identical confusion matrices (reproducibility).
They share the e2e tests' tfds and XLA caches (conftest.shared_dir), so only the first run
of each variant compiles.
"""

from __future__ import annotations

import concurrent.futures
import csv
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import REPO, child_env, shared_dir
from PIL import Image

from jaxseg import run_info, sweeps
from jaxseg.models import build_model
from jaxseg.sweeps import spec

SMOKE_SWEEP = str(REPO / "configs" / "sweeps" / "smoke.py")
RUN_NAMES = ["transpose-seed0", "bilinear-seed0", "transpose-seed1", "bilinear-seed1"]
METRICS = sweeps.METRICS
SWEEP_TIMEOUT_S = 600
SWEEP_FILES = sorted((REPO / "configs" / "sweeps").glob("*.py"))


def _write_sweep(path: Path, variants: dict, base: str = "configs/smoke.py") -> str:
    path.write_text(
        "from jaxseg.sweeps import Sweep, run_dir\n\n\n"
        f"def get_sweep():\n    return Sweep(base={base!r}, variants={variants!r}, seeds=(0, 1))\n"
    )
    return str(path)


# ---------------------------------------------------------------------------------------------
# Planning: no training.


def test_plan_order_and_names_are_deterministic_and_commands_match(tmp_path, capsys):
    first = sweeps.plan(SMOKE_SWEEP, "runs/smoke")
    again = sweeps.plan(SMOKE_SWEEP, "runs/smoke")
    # Seed-major: every variant once before any repeats; names <variant>-seed<seed>.
    assert [r.name for r in first.runs] == RUN_NAMES
    assert [r.workdir for r in first.runs] == [f"runs/smoke/{n}" for n in RUN_NAMES]
    assert [r.flags for r in first.runs] == [r.flags for r in again.runs]
    for run in first.runs:
        assert run.config.seed == run.seed and run.config.is_locked
        want = "bilinear" if run.variant == "bilinear" else "transpose"
        assert run.config.model.upsampling == want
    # The printed commands are what the runner runs; parsing one gives the run's config.
    sweeps.print_commands(first)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4
    for line, run in zip(lines, first.runs):
        argv = line.split()
        assert argv[:6] == ["python", "train.py", "--config", "configs/smoke.py", "--workdir"] + [
            run.workdir
        ]
        parsed = sweeps.load_config(str(REPO / argv[3]), argv[6:])
        assert parsed.to_dict() == run.config.to_dict()


def test_sweep_and_base_config_load_by_path_without_editing_sys_path(tmp_path):
    """configs/smoke.py does `from configs import default`. A caller outside the repository,
    whose `import configs` finds nothing, still plans the smoke sweep: the same runs as here,
    the repository's configs package, and sys.path as the caller left it."""
    script = f"""
import importlib.util, json, sys
from jaxseg import sweeps
# What a user with jaxseg installed and no checkout on sys.path has.
sys.path[:] = [p for p in sys.path if p not in ({str(REPO)!r}, "")]
assert importlib.util.find_spec("configs") is None, "configs importable: the test proves nothing"
before = list(sys.path)
plan = sweeps.plan({SMOKE_SWEEP!r}, "runs/smoke")
assert sys.path == before, (before, sys.path)
print(json.dumps({{"configs": sys.modules["configs"].__file__,
                  "runs": [[r.name, r.flags, r.config.to_dict()] for r in plan.runs]}}))
"""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    child = json.loads(proc.stdout.splitlines()[-1])
    assert child["configs"] == str(REPO / "configs" / "__init__.py")
    here = sweeps.plan(SMOKE_SWEEP, "runs/smoke")
    want = [[r.name, r.flags, r.config.to_dict()] for r in here.runs]
    assert child["runs"] == json.loads(json.dumps(want))  # Tuples as JSON lists, both sides.


def test_misspelt_override_fails_before_any_run_naming_variant_and_key(tmp_path):
    bad = _write_sweep(tmp_path / "bad.py", {"ok": {}, "typo": {"optim.learnig_rate": 0.1}})
    # The user's path: sweep.py with a relative workdir; nothing may be created.
    proc = subprocess.run(
        [sys.executable, str(REPO / "sweep.py"), "--sweep", bad, "--workdir", "runs/bad"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert 'variant "typo"' in proc.stderr and "optim.learnig_rate" in proc.stderr, proc.stderr
    assert 'did you mean "optim.learning_rate"' in proc.stderr, proc.stderr
    assert not (tmp_path / "runs").exists()


def test_override_of_the_wrong_type_or_group_fails_naming_the_variant(tmp_path):
    wrong_type = _write_sweep(tmp_path / "t.py", {"steps": {"total_steps": "many"}})
    with pytest.raises(sweeps.SweepError, match='variant "steps".*total_steps'):
        sweeps.plan(wrong_type, str(tmp_path / "w"))
    group = _write_sweep(tmp_path / "g.py", {"opt": {"optim": 1}})
    with pytest.raises(sweeps.SweepError, match='variant "opt".*"optim" is a group'):
        sweeps.plan(group, str(tmp_path / "w"))
    # A command-line override may not silently erase an ablation's own setting.
    with pytest.raises(sweeps.SweepError, match="erase"):
        sweeps.plan(SMOKE_SWEEP, "w", overrides=["--config.model.upsampling=transpose"])


def test_a_variant_overrides_a_common_setting_with_one_flag(tmp_path):
    # absl accumulates repeated tuple flags: (48, 48) then (32, 32) must not give 4 numbers.
    (tmp_path / "s.py").write_text(
        "from jaxseg.sweeps import Sweep\n\n\ndef get_sweep():\n"
        "    return Sweep(base='configs/smoke.py', common={'data.crop_size': (48, 48)},\n"
        "                 variants={'a': {}, 'b': {'data.crop_size': (32, 32)}})\n"
    )
    a, b = sweeps.plan(str(tmp_path / "s.py"), "w").runs
    assert tuple(a.config.data.crop_size) == (48, 48)
    assert tuple(b.config.data.crop_size) == (32, 32)
    assert [f for f in b.flags if "crop_size" in f] == ["--config.data.crop_size=(32, 32)"]


def test_run_dir_references_an_earlier_variant_with_the_same_seed(tmp_path):
    staged = (
        "from jaxseg.sweeps import Sweep, run_dir\n\n\ndef get_sweep():\n"
        "    return Sweep(base='configs/smoke.py', seeds=(3, 4), variants={\n"
        "        'a': {}, 'b': {'init_from': run_dir('a')}})\n"
    )
    (tmp_path / "staged.py").write_text(staged)
    plan = sweeps.plan(str(tmp_path / "staged.py"), "runs/st")
    b = [r for r in plan.runs if r.variant == "b"]
    assert [r.config.init_from for r in b] == ["runs/st/a-seed3", "runs/st/a-seed4"]
    assert [r.depends_on for r in b] == [["a-seed3"], ["a-seed4"]]
    (tmp_path / "late.py").write_text(staged.replace("run_dir('a')", "run_dir('c')"))
    with pytest.raises(sweeps.SweepError, match="must name a variant that runs before it"):
        sweeps.plan(str(tmp_path / "late.py"), "runs/st")


def test_slurm_script_is_valid_bash_and_runs_the_right_command_per_task(tmp_path):
    plan = sweeps.plan(SMOKE_SWEEP, "runs/smoke")
    script = tmp_path / "sweep.sbatch"
    sweeps.write_slurm_array(plan, str(script), ["--time=1:00:00"])
    text = script.read_text()
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    assert "#SBATCH --array=0-3" in text and "#SBATCH --time=1:00:00" in text
    for run in plan.runs:
        assert f"--workdir {run.workdir} " in text and f"# {run.name}" in text
    # Execute task 2 with stand-ins for srun and python that record their arguments.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("srun", "python"):
        stub = bin_dir / tool
        stub.write_text(f'#!/bin/sh\necho "{tool} $*" >> "{tmp_path}/calls"\n')
        stub.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_ARRAY_TASK_ID": "2"}
    proc = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    calls = (tmp_path / "calls").read_text().splitlines()
    expected = " ".join(sweeps.train_command(plan, plan.runs[2])[2:]).replace(
        "--config configs/smoke.py", f"--config {REPO}/configs/smoke.py"
    )
    assert calls[0] == f"srun python {REPO}/train.py {expected} --distributed"
    assert calls[1].startswith("python") and calls[1].endswith("--collect")
    assert len(calls) == 2


def _shipped_variants() -> list:
    return [
        pytest.param(path.name, variant, id=f"{path.name}:{variant}")
        for path in SWEEP_FILES
        for variant in sweeps.load_sweep(str(path)).variants
    ]


@pytest.mark.parametrize(("file", "variant"), _shipped_variants())
def test_every_shipped_sweep_variant_plans_and_builds(file, variant, tmp_path):
    path = str(REPO / "configs" / "sweeps" / file)
    sweep = sweeps.load_sweep(path)
    # The variant plus the runs it starts from (run_dir), in the file's order.
    needed, todo = {variant}, [variant]
    while todo:
        for value in sweep.variants[todo.pop()].values():
            if isinstance(value, sweeps.RunDir) and value.variant not in needed:
                needed.add(value.variant)
                todo.append(value.variant)
    overrides = {**sweep.common, **sweep.variants[variant]}
    plan = sweeps.plan(path, str(tmp_path), variants=sorted(needed), sweep=sweep)
    assert len(sweep.seeds) >= 2
    for run in plan.runs:
        if run.variant != variant:
            continue
        for key, value in overrides.items():
            if isinstance(value, sweeps.RunDir):
                value = os.path.join(str(tmp_path), f"{value.variant}-seed{run.seed}")
            got = spec._get(run.config, key)
            assert (list(got) if isinstance(got, tuple) else got) == (
                list(value) if isinstance(value, tuple) else value
            ), key
        build_model(run.config.model)  # Every model field the variant sets exists.


# ---------------------------------------------------------------------------------------------
# End to end.


@dataclasses.dataclass
class Sweeps:
    root: Path
    straight: subprocess.CompletedProcess
    stopped: subprocess.CompletedProcess
    rerun: subprocess.CompletedProcess
    before_rerun: dict  # {run name: {file: mtime}} for the runs finished before the stop.

    def workdir(self, which: str) -> Path:
        return self.root / "runs" / which


def _sweep_cmd(which: str) -> list[str]:
    return [
        sys.executable,
        str(REPO / "sweep.py"),
        "--sweep",
        SMOKE_SWEEP,
        "--workdir",
        f"runs/{which}",  # Relative, as users type it.
    ]


def _run(cmd, cwd, env) -> subprocess.CompletedProcess:
    return subprocess.run(
        cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=SWEEP_TIMEOUT_S
    )


def _finished_files(workdir: Path) -> dict:
    files = [workdir / "eval" / "report.json", workdir / "metrics.jsonl", workdir / "train.log"]
    files += sorted((workdir / "checkpoints").iterdir())
    return {str(p.relative_to(workdir)): p.stat().st_mtime_ns for p in files}


def _interrupted(root: Path, env) -> tuple:
    """Starts a sweep, SIGTERMs it once its second run has finished, then reruns it."""
    workdir = root / "runs" / "interrupted"
    second = workdir / RUN_NAMES[1] / "eval" / "report.json"
    proc = subprocess.Popen(
        _sweep_cmd("interrupted"),
        cwd=root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + SWEEP_TIMEOUT_S
    while proc.poll() is None and not second.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=SWEEP_TIMEOUT_S)
    stopped = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    before = {n: _finished_files(workdir / n) for n in RUN_NAMES[:2]}
    return stopped, _run(_sweep_cmd("interrupted"), root, env), before


@pytest.fixture(scope="module")
def ran(tmp_path_factory) -> Sweeps:
    """Both sweeps; the interrupted one starts once the straight one's first run has finished
    (compiled programs in the shared cache), so the two share the 2 cores."""
    root = tmp_path_factory.mktemp("sweeps")
    env = child_env(shared_dir(tmp_path_factory), num_devices=2)
    env["PYTHONPATH"] = ""  # sweep.py finds its package beside itself, like a user's checkout.
    straight = subprocess.Popen(
        _sweep_cmd("straight"),
        cwd=root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        output = pool.submit(straight.communicate, timeout=SWEEP_TIMEOUT_S)
        first = root / "runs" / "straight" / RUN_NAMES[0] / "eval" / "report.json"
        deadline = time.monotonic() + SWEEP_TIMEOUT_S
        while straight.poll() is None and not first.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        stopped, rerun, before = _interrupted(root, env)
        out, err = output.result()
    done = subprocess.CompletedProcess(straight.args, straight.returncode, out, err)
    return Sweeps(root, done, stopped, rerun, before)


def _read_csv(path: Path) -> dict[str, dict[str, str]]:
    with open(path) as f:
        return {row["variant"]: row for row in csv.DictReader(f)}


def _reports(workdir: Path) -> dict[str, dict]:
    return {n: json.loads((workdir / n / "eval" / "report.json").read_text()) for n in RUN_NAMES}


@pytest.mark.slow
def test_sweep_results_equal_the_runs_own_reports(ran):
    assert ran.straight.returncode == 0, ran.straight.stdout + ran.straight.stderr[-3000:]
    workdir = ran.workdir("straight")
    assert sorted(p.name for p in workdir.iterdir() if p.name in RUN_NAMES) == sorted(RUN_NAMES)
    rows = _read_csv(workdir / "results.csv")
    assert list(rows) == ["transpose", "bilinear"]  # The sweep file's order.
    reports = _reports(workdir)
    classes = list(reports[RUN_NAMES[0]]["per_class"])
    assert len(classes) == 6
    for variant, row in rows.items():
        mine = [reports[f"{variant}-seed{s}"] for s in (0, 1)]
        assert row["runs"] == "2/2" and row["seeds"] == "0 1"
        columns = {m: [r[m] for r in mine] for m in METRICS}
        columns.update({f"iou_{c}": [r["per_class"][c]["iou"] for r in mine] for c in classes})
        for key, values in columns.items():
            assert float(row[f"{key}_mean"]) == pytest.approx(np.mean(values), rel=1e-12), key
            assert float(row[f"{key}_std"]) == pytest.approx(
                np.std(values, ddof=1), rel=1e-9, abs=1e-15
            ), key
        # Throughput: the mean of the runs' own logged images/s.
        rates = []
        for s in (0, 1):
            lines = (workdir / f"{variant}-seed{s}" / "metrics.jsonl").read_text().splitlines()
            logged = [json.loads(ln).get("images_per_sec") for ln in lines]
            rates.append(np.mean([r for r in logged if r is not None]))
        assert float(row["images_per_sec_mean"]) == pytest.approx(np.mean(rates), rel=1e-9)
        assert float(row["train_wall_time_s_mean"]) > 0
    # Parameter counts against an independent count of each model's initialised parameters.
    for variant, row in rows.items():
        run = next(r for r in sweeps.plan(SMOKE_SWEEP, str(workdir)).runs if r.variant == variant)
        model = build_model(run.config.model)
        shapes = jax.eval_shape(
            lambda m=model: m.init(jax.random.key(0), np.zeros((1, 32, 32, 3)), train=False)
        )
        assert int(float(row["num_params_mean"])) == run_info.num_params(shapes["params"])
    assert rows["transpose"]["num_params_mean"] != rows["bilinear"]["num_params_mean"]


@pytest.mark.slow
def test_results_markdown_and_plots(ran):
    assert ran.straight.returncode == 0, ran.straight.stderr[-3000:]
    workdir = ran.workdir("straight")
    rows = _read_csv(workdir / "results.csv")
    md = (workdir / "results.md").read_text()
    for variant, row in rows.items():
        miou = f"{float(row['mean_iou_mean']):.4f} ± {float(row['mean_iou_std']):.4f}"
        line = next(ln for ln in md.splitlines() if ln.startswith(f"| {variant} | 2/2 |"))
        assert miou in line, line
    assert "`bilinear`: `--config.model.upsampling=bilinear`" in md
    for name in ("curves.png", "bars.png"):
        image = np.asarray(Image.open(workdir / name).convert("L"), np.float32)
        assert image.shape[0] >= 300 and image.std() > 5, name  # Drawn, not blank.


@pytest.mark.slow
def test_every_run_records_its_provenance(ran):
    workdir = ran.workdir("straight") / RUN_NAMES[1]
    info = json.loads((workdir / "run_info.json").read_text())
    assert info["config"] == json.loads((workdir / "config.json").read_text())
    assert info["config"]["model"]["upsampling"] == "bilinear"
    assert info["global_batch_size"] == 8
    assert info["devices"]["global"] == 2 and info["devices"]["mesh"] == {"data": 2, "fsdp": 1}
    assert info["versions"]["jax"] == jax.__version__
    git = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True)
    if git.returncode == 0:
        assert info["git"]["commit"] == git.stdout.decode().strip()
    assert [inv["start_step"] for inv in info["invocations"]] == [0]


@pytest.mark.slow
def test_sigterm_stops_the_sweep_and_the_rerun_skips_finished_runs(ran):
    assert ran.stopped.returncode == 128 + signal.SIGTERM, ran.stopped.stdout + ran.stopped.stderr
    assert "rerun the command to continue" in ran.stopped.stdout
    assert ran.rerun.returncode == 0, ran.rerun.stdout + ran.rerun.stderr[-3000:]
    workdir = ran.workdir("interrupted")
    for i, name in enumerate(RUN_NAMES[:2], start=1):
        variant, seed = name.split("-seed")
        assert f"[{i}/4] {variant} seed {seed}: finished earlier (6 steps), skipped" in (
            ran.rerun.stdout
        )
        # Not retrained, not re-evaluated, not even restarted.
        assert _finished_files(workdir / name) == ran.before_rerun[name]
        info = json.loads((workdir / name / "run_info.json").read_text())
        assert len(info["invocations"]) == 1
    for name in RUN_NAMES[2:]:
        assert json.loads((workdir / name / "eval" / "report.json").read_text())["step"] == 6


@pytest.mark.slow
def test_interrupted_sweep_results_equal_the_uninterrupted_ones(ran):
    assert ran.straight.returncode == 0 and ran.rerun.returncode == 0
    straight = _read_csv(ran.workdir("straight") / "results.csv")
    resumed = _read_csv(ran.workdir("interrupted") / "results.csv")
    assert list(straight) == list(resumed)
    metric_keys = [k for k in straight["transpose"] if k.startswith(("iou_", *METRICS))]
    assert len(metric_keys) == 2 * (4 + 6)
    for variant in straight:
        for key in metric_keys:
            assert float(resumed[variant][key]) == pytest.approx(
                float(straight[variant][key]), abs=1e-6
            ), (variant, key)


@pytest.mark.slow
def test_same_config_and_seed_reproduce_the_final_metrics(ran):
    """Item 5: two independent executions of each run (two sweeps) agree pixel for pixel."""
    assert ran.straight.returncode == 0 and ran.rerun.returncode == 0
    a, b = _reports(ran.workdir("straight")), _reports(ran.workdir("interrupted"))
    for name in RUN_NAMES:
        assert a[name]["confusion_matrix"] == b[name]["confusion_matrix"], name
        assert a[name]["mean_iou"] == b[name]["mean_iou"], name
    # ...and the seed matters, so the agreement is not vacuous.
    assert a["transpose-seed0"]["confusion_matrix"] != a["transpose-seed1"]["confusion_matrix"]


@pytest.mark.slow
def test_changed_sweep_refuses_to_mix_with_existing_runs(ran):
    workdir = str(ran.workdir("straight"))
    with pytest.raises(sweeps.SweepError, match="config.json differs.*optim.learning_rate"):
        sweeps.plan(SMOKE_SWEEP, workdir, overrides=["--config.optim.learning_rate=0.5"])
