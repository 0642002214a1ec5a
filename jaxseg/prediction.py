"""Segments image files with a trained run: palette PNG masks (and overlays) at each image's size.

Used by predict.py. Images are decoded by `jaxseg.data.images.decode`, the decoder that built the
training data (16-bit images by the run's recorded `config.data.folder.intensity_range`), scaled
to [0, 1] and normalised exactly like the input pipeline (`(x - config.data.mean) /
config.data.std`), so a file gives the model the same pixels here as in training and eval.
Files that cannot be read are skipped and listed at the end, unless `strict`.

Each image is padded up to a multiple of `BUCKET` px per side before the jitted forward pass, so a
folder of photos of many sizes compiles once per bucket shape rather than once per image; the
labels are cropped back. The padding is the pipeline's own (`transforms.pad_image`: 0 after
normalisation, bottom/right), so predict.py sees exactly the borders that training and
evaluation saw.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import sys
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import tqdm
from PIL import Image

from jaxseg import inference, visualize
from jaxseg.data import images as image_decoding
from jaxseg.data import transforms

BUCKET = 32  # px; FCN's coarsest stride, and a multiple of 2**depth for U-Nets up to depth 5.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp")


def predict_step(variables, images: jax.Array, *, model: nn.Module) -> jax.Array:
    """images: float32 [N, H, W, C] normalised -> class ids int32 [N, H, W]; pure, jit-able."""
    return jnp.argmax(inference.whole_image_logits(model, variables, images), axis=-1)


@dataclasses.dataclass(frozen=True)
class Predictor:
    """A restored model and what is needed to feed it raw images.

    Attributes:
      predict: jitted fn(variables, images [1, H, W, C] float32) -> int32 [1, H, W].
      variables: {"params": ..., optionally "batch_stats": ...} on one device.
      mean, std: per-channel normalisation, [0, 1] image units (config.data.mean/std).
      channels: 1 (greyscale) or 3 (RGB), the data set's image_channels.
      palette: RGB per class id.
      bucket: padded sides are multiples of this (px).
      step: the training step of the restored checkpoint.
      intensity_range: (low, high) of 16-bit inputs, the run's recorded range; () = 0..65535.
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


def load_predictor(workdir: str, checkpoint: str | int = "best") -> Predictor:
    """Restores checkpoint "best", "latest" or a step number of the run in `workdir`.

    "best" falls back to "latest" when no evaluation has ranked a checkpoint yet.
    """
    from jaxseg import checkpointing, evaluation, train_lib
    from jaxseg.data import datasets
    from jaxseg.models import UNet

    config = checkpointing.read_config(workdir)
    spec = datasets.dataset_spec(config.data)
    channels = spec.image_channels
    mean, std = (np.asarray(v, np.float32) for v in (config.data.mean, config.data.std))
    for key, v in (("mean", mean), ("std", std)):
        if v.shape != (channels,):
            raise ValueError(
                f"config.data.{key} in {workdir}/config.json has {v.size} values but data set "
                f"{spec.name!r} has {channels}-channel images"
            )
    model, state = train_lib.restore_checkpoint(config, workdir, checkpoint)
    # One image at a time does not shard; a single device avoids 8x redundant compute on a mesh.
    variables = jax.device_put(evaluation.variables_of(state), jax.local_devices()[0])
    bucket = BUCKET
    if isinstance(model, UNet) and model.padding == "SAME":
        bucket = max(bucket, 2**model.depth)  # Both powers of two: max is the lcm.
    return Predictor(
        predict=jax.jit(functools.partial(predict_step, model=model)),
        variables=variables,
        mean=mean,
        std=std,
        channels=channels,
        palette=tuple(tuple(int(v) for v in c) for c in spec.palette),
        bucket=bucket,
        step=int(jax.device_get(state.step)),
        intensity_range=_intensity_range(config),
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


def predict_image(predictor: Predictor, image: np.ndarray) -> np.ndarray:
    """image: float32 [H, W, C] in [0, 1] -> uint8 class ids [H, W]."""
    h, w, _ = image.shape
    x = (image - predictor.mean) / predictor.std
    ph, pw = bucket_shape(h, w, predictor.bucket)
    x = transforms.pad_image(x, ph, pw)
    labels = predictor.predict(predictor.variables, x[None])
    return np.asarray(jax.device_get(labels))[0, :h, :w].astype(np.uint8)


def save_mask(labels: np.ndarray, palette: visualize.Palette, path: str) -> None:
    """Writes uint8 class ids [H, W] as a PIL mode "P" PNG whose palette is the data set's."""
    img = Image.fromarray(np.asarray(labels, np.uint8))  # mode "L"; putpalette makes it "P".
    flat = np.zeros((256, 3), np.uint8)
    flat[: len(palette)] = np.asarray(palette, np.uint8)
    img.putpalette(flat.reshape(-1).tolist())
    img.save(path)


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


def predict_files(
    predictor: Predictor,
    paths: Sequence[str],
    output_dir: str,
    *,
    save_overlay: bool = False,
    alpha: float = 0.5,
    strict: bool = False,
) -> list[str]:
    """Segments each file into `<output_dir>/<stem>.png` (palette mask at the image's size) and,
    with `save_overlay`, `<stem>_overlay.png`. Returns the mask paths in input order.

    A file that cannot be read is skipped (logged, and all skipped files are listed on stderr
    at the end) so one bad file does not stop a batch; with `strict` its ValueError is raised.
    """
    stems = [os.path.splitext(os.path.basename(p))[0] for p in paths]
    clashes = sorted({s for s in stems if stems.count(s) > 1})
    if clashes:
        raise ValueError(f"inputs share file stems {clashes}: their masks would overwrite")
    os.makedirs(output_dir, exist_ok=True)
    written, skipped = [], []
    for path, stem in zip(tqdm.tqdm(paths, desc="predict", unit="img"), stems, strict=True):
        try:
            image = read_image(path, predictor.channels, predictor.intensity_range)
        except ValueError as e:
            if strict:
                raise
            logging.warning("Skipping %s", e)
            skipped.append((path, str(e)))
            continue
        labels = predict_image(predictor, image)
        mask_path = os.path.join(output_dir, f"{stem}.png")
        save_mask(labels, predictor.palette, mask_path)
        if save_overlay:
            pixels = np.rint(image * 255).astype(np.uint8)
            blended = visualize.overlay(pixels, labels, predictor.palette, alpha)
            Image.fromarray(blended).save(os.path.join(output_dir, f"{stem}_overlay.png"))
        written.append(mask_path)
    if skipped:
        print(
            f"skipped {len(skipped)} unreadable file(s) (--strict stops at the first):",
            file=sys.stderr,
        )
        for _, reason in skipped:
            print(f"  {reason}", file=sys.stderr)
    return written


def predict(
    workdir: str,
    inputs: str,
    output_dir: str,
    checkpoint: str = "best",
    overlay: bool = False,
    strict: bool = False,
) -> list[str]:
    """predict.py's one call: restore `checkpoint` of `workdir`, segment `inputs` (a folder or a
    comma-separated list of files) into `output_dir`. Returns the mask paths (unreadable files
    are skipped and listed, unless `strict`)."""
    paths = list_inputs(inputs)
    # Errors that need no model should surface before a restore and compile, not after.
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise ValueError(f"--output {output_dir} is a file; give a folder for the masks")
    if strict:
        for p in paths:
            if not os.access(p, os.R_OK):
                raise ValueError(f"cannot read image {p}: permission denied")
    predictor = load_predictor(workdir, checkpoint)
    return predict_files(predictor, paths, output_dir, save_overlay=overlay, strict=strict)
