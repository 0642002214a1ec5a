"""Ablation sweeps: run named variants x seeds of one base config, then tabulate and plot.

Outside the library core (no other jaxseg module imports it); sweep.py is its entry point.
- spec.py: the sweep file format (`Sweep`, `run_dir`), loading and validating a sweep, and
  `plan`, which lists every run with its train.py flags and resolved config.
- runner.py: each run's train.py command, the local runner (`run_sweep`), the SLURM array
  script, and when a run counts as finished (read from its files).
- results.py: results.csv / results.md / curves.png / bars.png from the runs' own files.
"""

from jaxseg.sweeps.results import METRICS, collect, read_result, summarize, within_noise
from jaxseg.sweeps.runner import (
    print_commands,
    run_state,
    run_sweep,
    train_command,
    write_slurm_array,
)
from jaxseg.sweeps.spec import (
    Plan,
    Run,
    RunDir,
    Sweep,
    SweepError,
    load_config,
    load_sweep,
    plan,
    run_dir,
)

__all__ = [
    "METRICS",
    "Plan",
    "Run",
    "RunDir",
    "Sweep",
    "SweepError",
    "collect",
    "load_config",
    "load_sweep",
    "plan",
    "print_commands",
    "read_result",
    "run_dir",
    "run_state",
    "run_sweep",
    "summarize",
    "train_command",
    "within_noise",
    "write_slurm_array",
]
