r"""Evaluates a trained run: flags only, then one call into jaxseg.

  python eval.py --workdir runs/default [--checkpoint best|latest|<step>] [--config.key=value]

Uses the run's own config.json unless --config is given; writes <workdir>/eval/report.json and
eval/per_class.md, and prints the FCN paper's four metrics.
"""

from jaxseg import backend

backend.configure_before_jax()  # Before jax is imported.

import json  # noqa: E402

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from jaxseg import evaluation, logs  # noqa: E402
from jaxseg import workdir as workdir_lib  # noqa: E402

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config", None, "Config file; default: the run's config.json.", lock_config=True
)
flags.DEFINE_string("workdir", None, "The run directory to evaluate.")
flags.DEFINE_string("checkpoint", "best", '"best", "latest" or a step number.')
flags.mark_flags_as_required(["workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    logs.route_library_logs()  # library INFO chatter (jax's backend probing, orbax) off the console
    backend.configure_jax_for_backend()
    if not workdir_lib.RunDir(FLAGS.workdir).path.is_dir():  # gs:// too
        raise app.UsageError(f"--workdir {FLAGS.workdir} does not exist")
    config = FLAGS.config or workdir_lib.read_config(FLAGS.workdir)
    result = evaluation.evaluate_checkpoint(config, FLAGS.workdir, FLAGS.checkpoint)
    summary = {
        k: round(result[k], 4)
        for k in ("pixel_accuracy", "mean_accuracy", "mean_iou", "frequency_weighted_iou")
    }
    print(json.dumps(summary | {"num_examples": result["num_examples"]}))


if __name__ == "__main__":
    app.run(main)
