r"""Runs an ablation sweep (variants x seeds of one config) and tabulates it: flags, one call.

  python sweep.py --sweep configs/sweeps/unet_ablations.py --workdir runs/unet_ablations
  python sweep.py --sweep ... --workdir ... --collect            # rewrite results only
  python sweep.py --sweep ... --workdir ... --print-commands     # one train.py command per run
  python sweep.py --sweep ... --workdir ... --slurm-array sweep.sbatch
  python sweep.py --sweep ... --workdir ... --config.total_steps=100   # applies to every run

Rerunning the same command skips finished runs and resumes unfinished ones; Ctrl-C or SIGTERM
checkpoints the current run and stops. Results: <workdir>/results.{md,csv}, curves.png, bars.png.
See jaxseg/sweeps/spec.py for the sweep file format.
"""

import sys

from absl import app, flags

from jaxseg import sweeps

FLAGS = flags.FLAGS
flags.DEFINE_string("sweep", None, "Sweep file (configs/sweeps/*.py) defining get_sweep().")
flags.DEFINE_string("workdir", None, "Sweep directory; each run goes to <workdir>/<run name>.")
flags.DEFINE_list("variants", None, "Run only these variants (default: all, in file order).")
flags.DEFINE_list("seeds", None, "Seeds to run instead of the sweep file's (e.g. 0,1,2).")
flags.DEFINE_bool("collect", False, "Only rewrite results.{md,csv} and the plots from the runs.")
flags.DEFINE_bool("print-commands", False, "Print one train.py command per run and exit.")
flags.DEFINE_string("slurm-array", None, "Write a SLURM job-array script (one task per run).")
flags.DEFINE_multi_string("sbatch", [], "Extra #SBATCH line (--slurm-array), e.g. --time=4:00:00")
flags.mark_flags_as_required(["sweep", "workdir"])


def _parse(argv):
    """absl flags, plus train.py-style --config.<key>=<value> overrides for every run."""
    overrides = [a for a in argv[1:] if a.startswith(("--config.", "-config."))]
    rest = [argv[0]] + [a for a in argv[1:] if a not in overrides]
    return FLAGS(rest), overrides


def main(parsed):
    argv, overrides = parsed
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    try:
        plan = sweeps.plan(
            FLAGS.sweep,
            FLAGS.workdir,
            overrides=overrides,
            variants=FLAGS.variants,
            seeds=[int(s) for s in FLAGS.seeds] if FLAGS.seeds else None,
        )
    except sweeps.SweepError as e:
        sys.exit(f"sweep.py: {e}")
    if FLAGS["print-commands"].value:
        sweeps.print_commands(plan)
    elif FLAGS["slurm-array"].value:
        path = sweeps.write_slurm_array(plan, FLAGS["slurm-array"].value, FLAGS.sbatch)
        print(f"wrote {path}: {len(plan.runs)} array tasks; submit with: sbatch {path}")
    elif FLAGS.collect:
        paths = sweeps.collect(plan)
        print("wrote " + ", ".join(paths.values()))
    else:
        sys.exit(sweeps.run_sweep(plan))


if __name__ == "__main__":
    app.run(main, flags_parser=_parse)
