r"""Segments image files with a trained run: flags only, then one call into jaxseg.

  python predict.py --workdir runs/default --input photos/ --output masks/ [--overlay]
      [--checkpoint best|latest|<step>] [--strict]

--input is a folder (its .png/.jpg/.tif/... files) or a comma-separated list of files. Writes
<output>/<stem>.png, a palette PNG of class ids at the image's own size, and with --overlay
<stem>_overlay.png, the class colours blended over the image. Files that cannot be read are
skipped and listed at the end (exit status 0), unless --strict. 16-bit images are scaled by the
run's recorded range, as in training.
"""

from jaxseg import backend

backend.configure_xla_flags()  # Before jax is imported.

import os  # noqa: E402

from absl import app, flags  # noqa: E402

from jaxseg import prediction  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "The trained run directory (config.json, checkpoints/).")
flags.DEFINE_string("checkpoint", "best", '"best", "latest" or a step number.')
flags.DEFINE_string("input", None, "A folder of images or a comma-separated list of image files.")
flags.DEFINE_string("output", None, "Folder for the masks (created if missing).")
flags.DEFINE_bool("overlay", False, "Also write <stem>_overlay.png for each image.")
flags.DEFINE_bool(
    "strict", False, "Stop at the first unreadable file (default: skip it, list it at the end)."
)
flags.mark_flags_as_required(["workdir", "input", "output"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    backend.hide_accelerators_from_tensorflow()
    backend.configure_jax_for_backend()
    if not os.path.isdir(FLAGS.workdir):
        raise app.UsageError(f"--workdir {FLAGS.workdir} does not exist")
    paths = prediction.predict(
        FLAGS.workdir, FLAGS.input, FLAGS.output, FLAGS.checkpoint, FLAGS.overlay, FLAGS.strict
    )
    print(f"wrote {len(paths)} masks to {FLAGS.output}")


if __name__ == "__main__":
    app.run(main)
