r"""Trains a segmentation model: flags only, then one call into jaxseg.

  python train.py --config configs/default.py --workdir runs/default [--config.key=value ...]

Rerunning the same command resumes from the latest checkpoint in --workdir. Exit status: 0 when
the run reached config.total_steps; 75 (EX_TEMPFAIL) when it stopped early with a checkpoint
(SIGTERM / preemption, config.max_steps_per_run), so rerun it; 1 on an error. Multi-host jobs call
`jax.distributed.initialize()`, which reads SLURM / TPU / GPU cluster environments by itself; the
--coordinator_address / --num_processes / --process_id flags cover the other cases.
"""

from jaxseg import backend

backend.configure_before_jax()  # Before jax is imported.

import jax  # noqa: E402
from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from jaxseg import logs, train_lib  # noqa: E402

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config", None, "Path to an ml_collections config file.", lock_config=True
)
flags.DEFINE_string("workdir", None, "Run directory: config.json, checkpoints, metrics, events.")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-host only).")
flags.DEFINE_integer("num_processes", None, "Number of processes (multi-host only).")
flags.DEFINE_integer("process_id", None, "This process's index (multi-host only).")
flags.DEFINE_bool(
    "distributed",
    False,
    "Call jax.distributed.initialize() (auto-detects "
    "SLURM/TPU/GPU clusters; implied by --coordinator_address).",
)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    # Library INFO chatter (jax's backend probing, orbax) off the console; train_lib.run adds
    # <workdir>/train.log, where it all goes.
    logs.route_library_logs()
    if FLAGS.distributed or FLAGS.coordinator_address:
        jax.distributed.initialize(
            coordinator_address=FLAGS.coordinator_address,
            num_processes=FLAGS.num_processes,
            process_id=FLAGS.process_id,
        )
    backend.configure_jax_for_backend()
    return train_lib.run(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
    app.run(main)
