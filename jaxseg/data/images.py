"""Image files -> uint8 pixels: the one decoder used by the folder builder, eval and predict.

Training and evaluation read pixels that the image-folder builder decoded with `decode` and
stored as 8-bit PNGs; predict.py (and export) decode raw files with the same `decode`, so a file
gives the model the same pixels whichever path it takes.

The rule for 16-bit images (PIL modes "I;16*" and "I", e.g. 12-bit EM / microscopy TIFFs): raw
values are mapped linearly from one *data-set-wide* range (low, high) to 0..255, clipped and
rounded, never by each image's own maximum (which would give the model different brightnesses
for the same tissue in different images, and different ones again at predict time):

  uint8 = round(clip((v - low) / (high - low), 0, 1) * 255)

The range is `config.data.folder.intensity_range` when set; when it is () the folder builder uses
the min and max over all 16-bit pages of the folder, found once while building, records them in
the built data set, and train.py writes them into the run's config.json, where eval.py and
predict.py read them. Data sets without a recorded range (the built-in ones) use the full
16-bit range (0, 65535). 8-bit images are converted to the requested channels by PIL.

Orientation: a file's EXIF / TIFF Orientation tag is applied (`upright`), so a phone photo gives
the pixels a viewer shows, the view its mask was drawn on. Masks (`image_folder`) and the sizes
predict.py plans its batches by (`upright_size`) follow the same rule.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

FULL_16BIT_RANGE = (0.0, 65535.0)
_WIDE_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
# PIL raises SyntaxError for some corrupt headers (e.g. broken PNG chunks), EOFError for
# truncated frames.
_READ_ERRORS = (OSError, UnidentifiedImageError, ValueError, SyntaxError, EOFError)


_ORIENTATION = 0x0112  # the EXIF / TIFF tag; values 5-8 turn the image by 90 degrees
_QUARTER_TURNS = (5, 6, 7, 8)


def upright(img: Image.Image) -> Image.Image:
    """`img` as a viewer shows it: its EXIF / TIFF Orientation applied (`img` itself if none)."""
    return ImageOps.exif_transpose(img) or img


def upright_size(path: str) -> tuple[int, int] | None:
    """(height, width) of `path` as a viewer shows it (Orientation applied), from the header
    only; None if PIL cannot tell (`decode` then names the file)."""
    try:
        with Image.open(path) as img:
            width, height = img.size
            if img.getexif().get(_ORIENTATION) in _QUARTER_TURNS:
                width, height = height, width
    except _READ_ERRORS:
        return None
    return height, width


def is_wide(img: Image.Image) -> bool:
    """Whether a PIL image holds more than 8 bits per pixel (16-bit or 32-bit integer greys)."""
    return img.mode in _WIDE_MODES


def wide_value_range(path: str, page: int = 0) -> tuple[float, float] | None:
    """(min, max) raw value of page `page` of a 16-bit image, None for an 8-bit one.

    Raises:
      ValueError naming `path` if it cannot be read.
    """
    try:
        with Image.open(path) as img:
            img.seek(page)
            if not is_wide(img):
                return None
            values = np.asarray(img)
    except _READ_ERRORS as e:
        raise ValueError(f"{path}: cannot read image (page {page}): {e}") from e
    return float(values.min()), float(values.max())


def scale_wide(values: np.ndarray, intensity_range) -> np.ndarray:
    """Raw 16-bit values [H, W] -> uint8 [H, W] by the module's rule for the range (low, high)."""
    low, high = (float(v) for v in (intensity_range or FULL_16BIT_RANGE))
    span = max(high - low, 1.0)  # A constant data set maps to 0 rather than dividing by zero.
    scaled = np.clip((values.astype(np.float64) - low) / span, 0.0, 1.0) * 255.0
    return np.round(scaled).astype(np.uint8)


def decode(path: str, *, channels: int, page: int = 0, intensity_range=None) -> np.ndarray:
    """Reads page `page` of an image file as uint8 [H, W, channels].

    Args:
      path: any file PIL reads (PNG, JPEG, TIFF incl. multi-page stacks, ...).
      channels: 1 (greyscale) or 3 (RGB); colour images are converted by PIL, greyscale 16-bit
        images are scaled (see the module docstring) and repeated over the channels.
      page: frame of a multi-page file.
      intensity_range: (low, high) raw values for 16-bit images; None or () = (0, 65535).

    Raises:
      ValueError naming `path` if it cannot be read.
    """
    try:
        with Image.open(path) as img:
            img.seek(page)
            img = upright(img)
            if is_wide(img):
                array = scale_wide(np.asarray(img), intensity_range)
                array = np.repeat(array[..., None], channels, -1)
            else:
                array = np.asarray(img.convert("L" if channels == 1 else "RGB"))
    except _READ_ERRORS as e:
        raise ValueError(f"{path}: cannot read image (page {page}): {e}") from e
    return array.reshape(array.shape[0], array.shape[1], channels)
