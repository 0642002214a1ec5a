r"""Exports a trained run for serving: flags only, then one call into jaxseg.

  python export.py --workdir runs/default --format stablehlo --output exports/default_hlo
  python export.py --workdir runs/default --format savedmodel --output exports/default_tf
      [--checkpoint best|latest|<step>] [--size 512,512]

The export takes uint8 images [N, H, W, C] and returns labels, probabilities and logits, with the
run's normalisation inside; <output>/card.json gives classes, palette, mean/std, the input size
rule (symbolic sides where the model allows it, else --size, default config.data.eval_pad_size)
and the source run. See jaxseg/export.py. The savedmodel format needs TensorFlow:
pip install -e ".[savedmodel]".
"""

from jaxseg import backend

backend.configure_before_jax()  # Before jax is imported.

import json  # noqa: E402

from absl import app, flags  # noqa: E402

from jaxseg import export, logs  # noqa: E402
from jaxseg import workdir as workdir_lib  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "The trained run directory (config.json, checkpoints/).")
flags.DEFINE_string("checkpoint", "best", '"best", "latest" or a step number.')
flags.DEFINE_enum("format", None, list(export.FORMATS), "stablehlo (jax.export) or savedmodel.")
flags.DEFINE_string("output", None, "Folder for the export (created; must be empty).")
flags.DEFINE_list("size", None, "height,width for models without symbolic sides.")
flags.mark_flags_as_required(["workdir", "format", "output"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    logs.route_library_logs()  # library INFO chatter (jax's backend probing, orbax) off the console
    backend.configure_jax_for_backend()
    if not workdir_lib.RunDir(FLAGS.workdir).path.is_dir():  # gs:// too
        raise app.UsageError(f"--workdir {FLAGS.workdir} does not exist")
    size = None if FLAGS.size is None else tuple(int(v) for v in FLAGS.size)
    card = export.export_run(FLAGS.workdir, FLAGS.output, FLAGS.format, FLAGS.checkpoint, size)
    print(json.dumps({"output": FLAGS.output, "size_rule": card["size_rule"]}))


if __name__ == "__main__":
    app.run(main)
