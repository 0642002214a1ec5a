"""Segments image files with a trained run: palette PNG masks (and overlays, probabilities,
confidence maps) at each image's size.

Used by predict.py and `jaxseg.load`. Images are decoded by `jaxseg.data.images.decode`, the
decoder that built the training data (16-bit images by the run's recorded
`config.data.folder.intensity_range`), scaled to [0, 1] and normalised exactly like the input
pipeline (`(x - config.data.mean) / config.data.std`), so a file gives the model the same pixels
here as in training and eval. Files are read by the data loader's threads
(`loading.read_in_order`), a few batches ahead of the devices. Files that cannot be read are
skipped and listed at the end, unless `strict`. Images are then segmented by one of
`jaxseg.inference`'s modes with its test-time augmentation (an `inference.InferenceSettings`,
default: the run's `config.eval`) through `jaxseg.tiled_inference`, which keeps images and
logits on the host and sends only batches of tiles to the devices, so memory on the device stays
bounded for any image.

whole_image mode: each image is padded up to a multiple of `BUCKET` px per side, so a folder of
photos of many sizes compiles once per bucket shape rather than once per image, and files of one
bucket shape are batched together and sharded over all devices; the labels are cropped back. The
padding is the pipeline's own (`loading.pad_image`: 0 after normalisation, bottom/right), so
predict.py sees exactly the borders that training and evaluation saw. An image with a side above
`max_tile` px is segmented by a sliding window of max_tile crops instead (logged).
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import math
import os
import sys
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import numpy as np
import tqdm
from absl import logging
from PIL import Image, PngImagePlugin, UnidentifiedImageError

from jaxseg import inference, sharding, tiled_inference, train_state, visualize
from jaxseg import workdir as workdir_lib
from jaxseg.data import datasets, loading
from jaxseg.data import images as image_decoding

BUCKET = 32  # px; FCN's coarsest stride, and a multiple of 2**depth for U-Nets up to depth 5.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp")
PROBABILITY_FORMATS = ("", "npz", "png16")

# predict.py's exit statuses (`Predictions.exit_status`). Errors, including "no mask written"
# (no input could be read), raise: Python's exit status 1. 3 is not 0 because a script that
# loops over folders must be able to tell an incomplete output folder from a complete one
# without parsing stderr; not 1, because the masks that were written are good ones.
EXIT_OK = 0  # every input has its mask
EXIT_SKIPPED = 3  # some inputs could not be read: skipped (listed on stderr), the rest written


@dataclasses.dataclass(frozen=True)
class Predictor:
    """A restored model and what is needed to feed it raw images.

    Attributes:
      predict: jitted fn(variables, images [B, H, W, C] float32) -> logits [B, H, W, K], the
        whole-image forward pass (sharded over the batch; B a multiple of the device count).
      variables: {"params": ..., optionally "batch_stats": ...}, replicated on every device.
      mean, std: per-channel normalisation, [0, 1] image units (config.data.mean/std).
      channels: 1 (greyscale) or 3 (RGB), the data set's image_channels.
      palette: RGB per class id.
      bucket: padded sides are multiples of this (px).
      step: the training step of the restored checkpoint.
      intensity_range: (low, high) of 16-bit inputs, the run's recorded range; () = 0..65535.
      class_names: one name per class id.
      model: the Linen module.
      engine: the inference modes on host images (tiled_inference.Engine).
      settings: the default inference mode and TTA (the run's config.eval).
    """

    predict: Callable
    variables: dict
    mean: np.ndarray
    std: np.ndarray
    channels: int
    palette: tuple[tuple[int, int, int], ...]
    bucket: int
    step: int
    intensity_range: tuple = ()
    class_names: tuple[str, ...] = ()
    model: nn.Module | None = None
    engine: tiled_inference.Engine | None = None
    settings: inference.InferenceSettings = inference.InferenceSettings()


@dataclasses.dataclass(frozen=True)
class Predictions:
    """What `predict_files` (and `predict`) wrote.

    Attributes:
      masks: the paths of the masks written, in input order.
      skipped: (path, reason) of each input that could not be read, in input order.
    """

    masks: list[str]
    skipped: list[tuple[str, str]]

    @property
    def exit_status(self) -> int:
        """predict.py's: EXIT_OK (0) if nothing was skipped, else EXIT_SKIPPED (3)."""
        return EXIT_SKIPPED if self.skipped else EXIT_OK


@dataclasses.dataclass(frozen=True)
class Segmentation:
    """One image's result at its own size.

    Attributes:
      labels: uint8 class ids [H, W].
      probs: float32 softmax of the (TTA-averaged) logits [H, W, K], or None if not asked for.
      variance: float32 [H, W] TTA variance (see `tiled_inference.Engine.predict`), or None.
    """

    labels: np.ndarray
    probs: np.ndarray | None = None
    variance: np.ndarray | None = None


def load_predictor(
    workdir: str,
    checkpoint: str | int = "best",
    *,
    batch_size_per_device: int = 1,
    max_tile: int = 1024,
) -> Predictor:
    """Restores checkpoint "best", "latest" or a step number of the run in `workdir`.

    "best" falls back to "latest" when no evaluation has ranked a checkpoint yet.

    Args:
      batch_size_per_device: images (whole_image mode) or tiles per device per forward pass;
        with the tile size this bounds device memory.
      max_tile: whole_image mode segments images with a side above this (px) by a sliding
        window of max_tile crops (0 = never).
    """
    config = workdir_lib.read_config(workdir)
    spec = datasets.dataset_spec(config.data)
    channels = spec.image_channels
    mean, std = (np.asarray(v, np.float32) for v in (config.data.mean, config.data.std))
    for key, v in (("mean", mean), ("std", std)):
        if v.shape != (channels,):
            raise ValueError(
                f"config.data.{key} in {workdir}/config.json has {v.size} values but data set "
                f"{spec.name!r} has {channels}-channel images"
            )
    # Inference replicates the parameters (no fsdp) and shards images/tiles over all devices.
    mesh = sharding.make_mesh()
    model, state = train_state.restore_checkpoint(
        config, workdir, checkpoint, mesh, spec=spec, params_only=True
    )
    variables = train_state.variables_of(state)
    engine = tiled_inference.Engine.create(
        model,
        variables,
        mesh,
        batch_size=tiled_inference.batch_size_for(mesh, batch_size_per_device),
        max_tile=max_tile,
    )
    # Buckets are multiples of the model's size step, so a padded U-Net takes a bucket as it is,
    # with the pipeline's zero border, instead of whole_image_logits mirror-padding it further.
    bucket = math.lcm(BUCKET, model.size_step)
    return Predictor(
        predict=engine.whole.fn,
        variables=engine.whole.variables,
        mean=mean,
        std=std,
        channels=channels,
        palette=tuple(tuple(int(v) for v in c) for c in spec.palette),
        bucket=bucket,
        step=int(jax.device_get(state.step)),
        intensity_range=_intensity_range(config),
        class_names=tuple(spec.class_names),
        model=model,
        engine=engine,
        settings=inference.InferenceSettings.from_eval_config(config.eval),
    )


def _intensity_range(config) -> tuple:
    """The run's recorded 16-bit range; config.json files from before it existed lack the key."""
    folder = config.data.folder
    return tuple(float(v) for v in folder.intensity_range) if "intensity_range" in folder else ()


def read_image(path: str, channels: int, intensity_range=()) -> np.ndarray:
    """Reads an image file as float32 [H, W, channels] in [0, 1] (first frame of a multi-page
    file), by `jaxseg.data.images.decode`'s rule: 16-bit images are mapped from
    `intensity_range` (the run's recorded range; () = 0..65535) exactly as when building.

    Raises:
      ValueError naming `path` if PIL cannot read it.
    """
    try:
        pixels = image_decoding.decode(path, channels=channels, intensity_range=intensity_range)
    except ValueError as e:
        raise ValueError(f"cannot read image {path}: {e.__cause__ or e}") from e
    return pixels.astype(np.float32) / 255.0


def bucket_shape(height: int, width: int, multiple: int = BUCKET) -> tuple[int, int]:
    """(H, W) rounded up to multiples of `multiple`."""
    return -(-height // multiple) * multiple, -(-width // multiple) * multiple


def pad_to_bucket(x: np.ndarray, multiple: int) -> np.ndarray:
    """[H, W, C] normalised image padded at the bottom/right to multiples of `multiple`, with the
    pipeline's border (`loading.pad_image`: 0 after normalisation)."""
    h, w, _ = x.shape
    return loading.pad_image(x, *bucket_shape(h, w, multiple))


def segment_batch(
    predictor: Predictor,
    images: Sequence[np.ndarray],
    settings: inference.InferenceSettings | None = None,
    *,
    with_probs: bool = False,
    with_variance: bool = False,
) -> list[Segmentation]:
    """Segments images float32 [H, W, C] in [0, 1] by `settings` (default: predictor.settings).

    In whole_image mode the images must share one bucket shape (they are padded to it and run
    as one sharded batch); the tiled modes run each image on its own, tiles batched.
    """
    settings = settings or predictor.settings
    normalised = [(im - predictor.mean) / predictor.std for im in images]
    if settings.mode == "whole_image":
        padded = [pad_to_bucket(x, predictor.bucket) for x in normalised]
        shapes = {x.shape for x in padded}
        if len(shapes) != 1:
            raise ValueError(f"segment_batch: whole_image batch mixes bucket shapes {shapes}")
        groups = [np.stack(padded)]
    else:
        groups = [x[None] for x in normalised]
    logits, variance = [], []
    for group in groups:
        lg, var = predictor.engine.predict(group, settings, with_variance=with_variance)
        logits += list(lg)
        variance += list(var) if var is not None else [None] * len(lg)
    out = []
    for im, lg, var in zip(images, logits, variance, strict=True):
        h, w = im.shape[:2]
        lg = lg[:h, :w]
        out.append(
            Segmentation(
                labels=lg.argmax(-1).astype(np.uint8),
                probs=tiled_inference.softmax(lg) if with_probs else None,
                variance=None if var is None else var[:h, :w],
            )
        )
    return out


# Every file predict writes says so (PNG "Software" text chunk, npz `written_by` entry): an
# existing file is replaced only when it carries this mark and --force is given (`check_outputs`).
WRITTEN_BY = "jaxseg predict"


def _save_png(image: Image.Image, path: str, **options) -> None:
    info = PngImagePlugin.PngInfo()
    info.add_text("Software", WRITTEN_BY)
    image.save(path, format="PNG", pnginfo=info, **options)


def written_by_predict(path: str) -> bool:
    """Whether the file at `path` is one predict wrote (its mark), not a user's file."""
    try:
        if path.endswith(".npz"):
            with np.load(path) as data:
                return "written_by" in data.files and str(data["written_by"]) == WRITTEN_BY
        with Image.open(path) as img:
            return img.format == "PNG" and img.text.get("Software") == WRITTEN_BY
    except (OSError, ValueError, UnidentifiedImageError):
        return False


def save_unit_png(values: np.ndarray, path: str) -> None:
    """Writes a float map [H, W] in [0, 1] as a 16-bit greyscale PNG (pixel = value * 65535)."""
    data = np.rint(np.clip(values, 0.0, 1.0) * 65535).astype(np.uint16)
    # Level 1: smooth probability maps compress almost as well as at PIL's default 6, far faster.
    _save_png(Image.fromarray(data), path, compress_level=1)


def save_probabilities(
    probs: np.ndarray, output_dir: str, stem: str, fmt: str, class_names: Sequence[str]
) -> list[str]:
    """Writes probs float32 [H, W, K] as `<stem>_probs.npz` ("npz": float16 `probabilities`
    [H, W, K] and `class_names`, compressed) or `<stem>_prob_<k>.png` per class ("png16")."""
    if fmt == "npz":
        path = os.path.join(output_dir, f"{stem}_probs.npz")
        np.savez_compressed(
            path,
            probabilities=probs.astype(np.float16),
            class_names=np.asarray(class_names),
            written_by=np.asarray(WRITTEN_BY),
        )
        return [path]
    if fmt == "png16":
        paths = [os.path.join(output_dir, f"{stem}_prob_{k}.png") for k in range(probs.shape[-1])]
        for k, path in enumerate(paths):
            save_unit_png(probs[..., k], path)
        return paths
    raise ValueError(f"--save_probs must be one of {PROBABILITY_FORMATS}, got {fmt!r}")


def batch_plan(
    shapes: Sequence[tuple[int, int] | None],
    settings: inference.InferenceSettings,
    predictor: Predictor,
) -> list[list[int]]:
    """The one rule for which images run together: indices of `shapes` ((H, W) per image, None
    if unknown) in batches of one bucket shape, up to the engine's batch size, in whole_image
    mode; an image alone in the tiled modes, above the engine's `max_tile`, or of unknown size.
    Used by predict.py (`predict_files`) and the notebook API (`Segmenter.predict`)."""
    if settings.mode != "whole_image":
        return [[i] for i in range(len(shapes))]
    groups: dict = {}
    limit = predictor.engine.max_tile
    for i, hw in enumerate(shapes):
        key = None if hw is None else bucket_shape(*hw, predictor.bucket)
        if key is None or (limit and max(key) > limit):
            key = ("alone", i)  # tiled (or unreadable): on its own
        groups.setdefault(key, []).append(i)
    size = predictor.engine.whole.batch_size
    return [g[j : j + size] for g in groups.values() for j in range(0, len(g), size)]


def save_mask(labels: np.ndarray, palette: visualize.Palette, path: str) -> None:
    """Writes uint8 class ids [H, W] as a PIL mode "P" PNG whose palette is the data set's."""
    img = Image.fromarray(np.asarray(labels, np.uint8))  # mode "L"; putpalette makes it "P".
    flat = np.zeros((256, 3), np.uint8)
    flat[: len(palette)] = np.asarray(palette, np.uint8)
    img.putpalette(flat.reshape(-1).tolist())
    _save_png(img, path)


def list_inputs(inputs: str) -> list[str]:
    """A folder (its image files, sorted) or a comma-separated list of files -> paths."""
    if os.path.isdir(inputs):
        paths = sorted(
            os.path.join(inputs, f)
            for f in os.listdir(inputs)
            if f.lower().endswith(IMAGE_EXTENSIONS)
        )
        if not paths:
            raise FileNotFoundError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) in {inputs}")
        return paths
    paths = [p.strip() for p in inputs.split(",") if p.strip()]
    missing = [p for p in paths if not os.path.isfile(p)]
    if not paths or missing:
        raise FileNotFoundError(f"--input: no such file(s): {missing or inputs!r}")
    return paths


def _stem(path: str) -> str:
    """The name predict's outputs for `path` start with: its file name without extension."""
    return os.path.splitext(os.path.basename(path))[0]


def output_names(stem: str, *, overlay: bool, save_probs: str, confidence: bool) -> list[str]:
    """Glob patterns (in the output folder) of what predict may write for one input stem."""
    names = [f"{stem}.png"]
    if overlay:
        names.append(f"{stem}_overlay.png")
    if save_probs == "npz":
        names.append(f"{stem}_probs.npz")
    elif save_probs == "png16":
        names.append(f"{stem}_prob_[0-9]*.png")
    if confidence:
        names += [f"{stem}_maxprob.png", f"{stem}_entropy.png", f"{stem}_tta_variance.png"]
    return names


def check_outputs(paths: Sequence[str], output_dir: str, names: Sequence[str], force: bool) -> None:
    """Refuses, before any model is loaded, every write that could destroy a user's file.

    - The output folder may not be an input's folder or lie inside one: masks would mix with
      the images (and be read as images by the next run over that folder).
    - No planned output may be an input file.
    - An existing file at a planned output path is replaced only with `force`, and only if
      predict wrote it (`written_by_predict`); a user's file of the same name is never replaced.
    """
    out = os.path.realpath(output_dir)
    for folder in sorted({os.path.realpath(os.path.dirname(os.path.abspath(p))) for p in paths}):
        if out == folder or out.startswith(folder + os.sep):
            raise ValueError(
                f"--output {output_dir} is {'the' if out == folder else 'inside the'} input "
                f"folder {folder}: masks would be written among the images (and could replace "
                "them); give a separate folder"
            )
    if not os.path.isdir(out):
        return
    inputs = {os.path.realpath(p) for p in paths}
    existing = sorted(
        {
            os.path.realpath(hit)
            for pattern in names
            for hit in glob.glob(os.path.join(out, pattern))
        }
    )
    clobbered = [p for p in existing if p in inputs]
    if clobbered:
        raise ValueError(f"--output would replace input file(s) {clobbered}")
    foreign = [p for p in existing if not written_by_predict(p)]
    if foreign:
        raise ValueError(
            f"--output {output_dir} already holds {len(foreign)} file(s) predict did not write, "
            f"at the names it would write (e.g. {foreign[0]}); they are never replaced: give "
            "another folder or move them"
        )
    if existing and not force:
        raise ValueError(
            f"--output {output_dir} already holds {len(existing)} output(s) of an earlier "
            f"predict (e.g. {existing[0]}); pass --force to replace them, or give another folder"
        )


def _read_batch(paths, channels, intensity_range, batch: list[int]) -> list:
    """The images of `paths[i]` for i in `batch` (`read_image`), or the ValueError naming a file
    that cannot be read (predict_files skips it, or raises it when strict)."""
    out = []
    for i in batch:
        try:
            out.append(read_image(paths[i], channels, intensity_range))
        except ValueError as e:
            out.append(e)
    return out


def predict_files(
    predictor: Predictor,
    paths: Sequence[str],
    output_dir: str,
    *,
    save_overlay: bool = False,
    alpha: float = 0.5,
    strict: bool = False,
    settings: inference.InferenceSettings | None = None,
    save_probs: str = "",
    confidence: bool = False,
) -> Predictions:
    """Segments each file into `<output_dir>/<stem>.png` (palette mask at the image's size).

    Also, per image: with `save_overlay` `<stem>_overlay.png`; with `save_probs` the class
    probabilities (`save_probabilities`); with `confidence` `<stem>_maxprob.png` and
    `<stem>_entropy.png` (entropy / log K), and when `settings` has TTA `<stem>_tta_variance.png`
    (16-bit PNGs of values in [0, 1], `save_unit_png`). Returns the masks written and the
    files skipped (`Predictions`).

    A file that cannot be read is skipped (logged, and all skipped files are listed on stderr
    at the end) so one bad file does not stop a batch; with `strict` its ValueError is raised.

    Raises:
      ValueError if no mask was written: no input could be read (or `paths` is empty).
    """
    settings = settings or predictor.settings
    if save_probs not in PROBABILITY_FORMATS:
        raise ValueError(f"save_probs must be one of {PROBABILITY_FORMATS}, got {save_probs!r}")
    if not paths:
        raise ValueError("no input files: nothing to segment")
    stems = [_stem(p) for p in paths]
    clashes = sorted({s for s in stems if stems.count(s) > 1})
    if clashes:
        raise ValueError(f"inputs share file stems {clashes}: their masks would overwrite")
    os.makedirs(output_dir, exist_ok=True)
    with_tta = len(settings.augmentations) > 1
    written, skipped = [None] * len(paths), []
    logging.info("predict: %s, %d images", settings, len(paths))
    # tqdm shows images/s and the ETA; it advances by a whole batch at a time.
    with tqdm.tqdm(total=len(paths), desc="predict", unit="img") as bar:
        plan = batch_plan([image_decoding.upright_size(p) for p in paths], settings, predictor)
        read = functools.partial(_read_batch, paths, predictor.channels, predictor.intensity_range)
        for batch, loaded in zip(plan, loading.read_in_order(plan, read), strict=True):
            readable, images = [], []
            for i, image in zip(batch, loaded, strict=True):
                if isinstance(image, ValueError):
                    if strict:
                        raise image
                    logging.warning("Skipping %s", image)
                    skipped.append((paths[i], str(image)))
                else:
                    images.append(image)
                    readable.append(i)
            results = segment_batch(
                predictor,
                images,
                settings,
                with_probs=bool(save_probs) or confidence,
                with_variance=confidence and with_tta,
            ) if images else []  # fmt: skip
            for i, image, result in zip(readable, images, results, strict=True):
                stem = stems[i]
                written[i] = os.path.join(output_dir, f"{stem}.png")
                save_mask(result.labels, predictor.palette, written[i])
                if save_overlay:
                    pixels = np.rint(image * 255).astype(np.uint8)
                    blended = visualize.overlay(pixels, result.labels, predictor.palette, alpha)
                    _save_png(
                        Image.fromarray(blended), os.path.join(output_dir, f"{stem}_overlay.png")
                    )
                if save_probs:
                    save_probabilities(
                        result.probs, output_dir, stem, save_probs, predictor.class_names
                    )
                if confidence:
                    max_prob, entropy = tiled_inference.confidence_maps(result.probs)
                    save_unit_png(max_prob, os.path.join(output_dir, f"{stem}_maxprob.png"))
                    save_unit_png(entropy, os.path.join(output_dir, f"{stem}_entropy.png"))
                    if result.variance is not None:
                        path = os.path.join(output_dir, f"{stem}_tta_variance.png")
                        save_unit_png(result.variance, path)
            bar.update(len(batch))
    if skipped:
        print(
            f"skipped {len(skipped)} unreadable file(s) (--strict stops at the first):",
            file=sys.stderr,
        )
        for _, reason in skipped:
            print(f"  {reason}", file=sys.stderr)
    masks = [w for w in written if w is not None]
    if not masks:
        raise ValueError(
            f"no mask written: none of the {len(paths)} input file(s) could be read "
            f"(e.g. {skipped[0][1]})"
        )
    return Predictions(masks=masks, skipped=skipped)


def predict(
    workdir: str,
    inputs: str,
    output_dir: str,
    checkpoint: str = "best",
    overlay: bool = False,
    strict: bool = False,
    *,
    mode: str | None = None,
    crop: Sequence[int] | None = None,
    stride: Sequence[int] | None = None,
    tile_in: Sequence[int] | None = None,
    flip: bool | None = None,
    scales: Sequence[float] | None = None,
    batch_size_per_device: int = 1,
    max_tile: int = 1024,
    save_probs: str = "",
    confidence: bool = False,
    force: bool = False,
) -> Predictions:
    """predict.py's one call: restore `checkpoint` of `workdir`, segment `inputs` (a folder or a
    comma-separated list of files) into `output_dir`. Returns the masks written and the files
    skipped as unreadable (`strict`: the first one raises); raises if no mask was written.

    mode, crop, stride, tile_in, flip, scales: the inference mode and TTA; None = the run's
    config.eval field. See `predict_files` for the outputs, `load_predictor` for the rest;
    `check_outputs` for what is refused (`force`: replace outputs of an earlier predict).
    """
    paths = list_inputs(inputs)
    # Errors that need no model should surface before a restore and compile, not after.
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise ValueError(f"--output {output_dir} is a file; give a folder for the masks")
    stems = [_stem(p) for p in paths]
    names = [
        n
        for stem in stems
        for n in output_names(stem, overlay=overlay, save_probs=save_probs, confidence=confidence)
    ]
    check_outputs(paths, output_dir, names, force)
    if strict:
        for p in paths:
            if not os.access(p, os.R_OK):
                raise ValueError(f"cannot read image {p}: permission denied")
    predictor = load_predictor(
        workdir, checkpoint, batch_size_per_device=batch_size_per_device, max_tile=max_tile
    )
    settings = predictor.settings.override(
        mode=mode, crop=crop, stride=stride, tile_in=tile_in, flip=flip, scales=scales or None
    )
    return predict_files(
        predictor,
        paths,
        output_dir,
        save_overlay=overlay,
        strict=strict,
        settings=settings,
        save_probs=save_probs,
        confidence=confidence,
    )
