r"""Segments image files with a trained run: flags only, then one call into jaxseg.

  python predict.py --workdir runs/default --input photos/ --output masks/ [--overlay]
      [--checkpoint best|latest|<step>] [--mode sliding_window --crop 512,512 --stride 384,384]
      [--flip] [--scales 0.75,1,1.25] [--save_probs npz|png16] [--confidence] [--strict]

--input is a folder (its .png/.jpg/.tif/... files) or a comma-separated list of files. Writes
<output>/<stem>.png, a palette PNG of class ids at the image's own size, and with --overlay
<stem>_overlay.png, the class colours blended over the image. Files that cannot be read are
skipped and listed at the end, unless --strict (which stops at the first). 16-bit images are
scaled by the run's recorded range, as in training. The inference mode and TTA default
to the run's config.eval; images of any size are tiled, so device memory stays bounded by
--batch_size_per_device tiles (whole_image mode: images with a side above --max_tile px run as
a sliding window of --max_tile crops). --save_probs writes <stem>_probs.npz (float16
`probabilities` [H, W, K]) or <stem>_prob_<k>.png (16-bit, value / 65535); --confidence writes
<stem>_maxprob.png and <stem>_entropy.png (entropy / log K), and with --flip or --scales
<stem>_tta_variance.png (variance of the class probabilities across augmentations, summed over
classes), all 16-bit PNGs of values in [0, 1].

Nothing of the user's is replaced: --output may not be (or lie inside) an input's folder, and a
file already at an output name is replaced only with --force and only if predict wrote it (its
PNG "Software" text or npz `written_by` entry says so); these checks run before the model loads.

Exit status: 0 every input has its mask; 3 some inputs could not be read and were skipped (listed
on stderr), the others' masks were written; 1 on an error, including "no mask written" (no input
could be read, or --input matched no image file) and, with --strict, the first unreadable file.
"""

import sys

from jaxseg import backend

backend.configure_before_jax()  # Before jax is imported.


from absl import app, flags  # noqa: E402

from jaxseg import inference, logs, prediction  # noqa: E402
from jaxseg import workdir as workdir_lib  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "The trained run directory (config.json, checkpoints/).")
flags.DEFINE_string("checkpoint", "best", '"best", "latest" or a step number.')
flags.DEFINE_string("input", None, "A folder of images or a comma-separated list of image files.")
flags.DEFINE_string("output", None, "Folder for the masks (created if missing).")
flags.DEFINE_bool("overlay", False, "Also write <stem>_overlay.png for each image.")
flags.DEFINE_bool(
    "strict", False, "Stop at the first unreadable file (default: skip it, list it at the end)."
)
flags.DEFINE_enum(
    "mode",
    None,
    list(inference.MODES),
    "Inference mode; default: the run's config.eval.mode.",
)
flags.DEFINE_list("crop", None, "sliding_window: window height,width (px); default config.eval.")
flags.DEFINE_list("stride", None, "sliding_window: step height,width (px); default config.eval.")
flags.DEFINE_list("tile_in", None, "overlap_tile: input tile height,width; default config.eval.")
flags.DEFINE_bool("flip", None, "Average with the mirrored image (--noflip: off); default config.")
flags.DEFINE_list("scales", None, "Input scales to average, e.g. 0.75,1,1.25; default config.")
flags.DEFINE_integer("batch_size_per_device", 1, "Images (whole_image) or tiles per device.")
flags.DEFINE_integer("max_tile", 1024, "whole_image: larger sides run as sliding window; 0=off.")
flags.DEFINE_enum("save_probs", "", ["", "npz", "png16"], "Also write class probabilities.")
flags.DEFINE_bool("confidence", False, "Also write max-probability, entropy (and TTA variance).")
flags.DEFINE_bool(
    "force", False, "Replace outputs an earlier predict wrote in --output (never other files)."
)
flags.mark_flags_as_required(["workdir", "input", "output"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    logs.route_library_logs()  # library INFO chatter (jax's backend probing, orbax) off the console
    backend.configure_jax_for_backend()
    if not workdir_lib.RunDir(FLAGS.workdir).path.is_dir():  # gs:// too
        raise app.UsageError(f"--workdir {FLAGS.workdir} does not exist")
    sizes = lambda v: None if v is None else [int(x) for x in v]
    result = prediction.predict(
        FLAGS.workdir,
        FLAGS.input,
        FLAGS.output,
        FLAGS.checkpoint,
        FLAGS.overlay,
        strict=FLAGS.strict,
        mode=FLAGS.mode,
        crop=sizes(FLAGS.crop),
        stride=sizes(FLAGS.stride),
        tile_in=sizes(FLAGS.tile_in),
        flip=FLAGS.flip,
        scales=None if FLAGS.scales is None else [float(x) for x in FLAGS.scales],
        batch_size_per_device=FLAGS.batch_size_per_device,
        max_tile=FLAGS.max_tile,
        save_probs=FLAGS.save_probs,
        confidence=FLAGS.confidence,
        force=FLAGS.force,
    )
    print(f"wrote {len(result.masks)} masks to {FLAGS.output}")
    if result.skipped:
        print(
            f"skipped {len(result.skipped)} unreadable file(s), listed above: exit status "
            f"{result.exit_status} (some inputs have no mask)",
            file=sys.stderr,
        )
    return result.exit_status


if __name__ == "__main__":
    app.run(main)
