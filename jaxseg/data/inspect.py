r"""Inspects a configured data set before training: flags only, then one call into jaxseg.

  python -m jaxseg.data.inspect --config configs/default.py [--config.data.key=value ...]
      [--output inspect/] [--max_examples 0] [--num_shown 4]

Prints, per split (config.data.train_split and eval_split), the image count, size range, class
pixel histogram, ignore fraction, classes that never occur and label ids that are no class, and
writes <output>/examples_<split>.png (images, masks and a class legend) and <output>/stats.json.
"""

from jaxseg import backend

backend.configure_before_jax()  # Before jax is imported.

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from jaxseg.data import inspection  # noqa: E402

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config", None, "Path to an ml_collections config file.", lock_config=True
)
flags.DEFINE_string("output", "inspect", "Folder for examples_<split>.png and stats.json.")
flags.DEFINE_integer("max_examples", 0, "Examples read per split; 0 = all.")
flags.DEFINE_integer("num_shown", 4, "Examples per split drawn in the PNG.")
flags.mark_flags_as_required(["config"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    inspection.inspect_data(
        FLAGS.config, FLAGS.output, max_examples=FLAGS.max_examples, num_shown=FLAGS.num_shown
    )


if __name__ == "__main__":
    app.run(main)
