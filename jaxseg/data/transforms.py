"""Joint image/mask transforms, as TensorFlow ops inside tf.data.

An example is `{"image": float32 [H, W, C] in [0, 1] (normalised after `normalize`),
"label": int32 [H, W], 255 = ignore}`. A transform is `fn(example, seed) -> example` where `seed`
is an int64 [2] stateless-RNG seed: every random draw is a pure function of the seed, and image
and mask share it, so they stay aligned and a given (data seed, stream position) always gets the
same augmentation (which is what makes the pipeline resumable). Geometry uses bilinear (bicubic
for elastic, rotation and shift) interpolation for the image and nearest neighbour for the mask;
pixels that come from outside the source image get label 255 (rotation and shift mirror it).
An optional "weight" [H, W] float32 pixel-weight map (the U-Net's eq. 2) is cropped, flipped and
padded (with 0) along with the label.

Borders follow one rule on every path (training, evaluation, predict.py): images are padded at
the bottom and right with 0 *after* normalisation (`pad_image`), i.e. with the data set's mean,
as the FCN release's conv1_1 zero padding after mean subtraction; labels with 255.
"""

import functools
import math
from collections.abc import Callable, Sequence

import ml_collections
import numpy as np
import tensorflow as tf

from jaxseg import losses
from jaxseg.labels import IGNORE_ID

Example = dict[str, tf.Tensor]
Transform = Callable[[Example, tf.Tensor], Example]
# Per-pixel maps that every geometric crop/flip/pad applies to alike.
_SPATIAL_KEYS = ("image", "label", "weight")


def _sub_seed(seed: tf.Tensor, k: int) -> tf.Tensor:
    return tf.random.experimental.stateless_fold_in(seed, k)


def apply(transforms: Sequence[Transform], example: Example, seed: tf.Tensor) -> Example:
    """Applies `transforms` in order, giving transform k the seed fold_in(seed, k)."""
    for k, transform in enumerate(transforms):
        example = transform(example, _sub_seed(seed, k))
    return example


def random_scale(
    example: Example, seed: tf.Tensor, *, min_scale: float, max_scale: float
) -> Example:
    """Resizes by a factor drawn uniformly from [min_scale, max_scale] (both sides alike)."""
    image, label = example["image"], example["label"]
    scale = tf.random.stateless_uniform([], seed, min_scale, max_scale)
    size = tf.cast(tf.shape(label), tf.float32) * scale
    size = tf.maximum(tf.cast(tf.round(size), tf.int32), 1)
    image = tf.image.resize(image, size, method="bilinear")
    label = tf.image.resize(label[..., None], size, method="nearest")[..., 0]
    return {**example, "image": image, "label": label}


def random_crop(
    example: Example, seed: tf.Tensor, *, height: int, width: int, pad: bool = True
) -> Example:
    """Crops a random [height, width] window (of the image, label and any "weight").

    Sides shorter than the window are kept whole (offset 0). With `pad`, the result is then
    padded at the bottom and right to exactly [height, width] (`pad_to`: image 0, label 255);
    the training chain passes pad=False and pads after normalisation instead, so the band is 0
    in normalised units on every path.
    """
    shape = tf.shape(example["label"])
    room = tf.cast(tf.maximum(shape - [height, width], 0) + 1, tf.float32)
    offset = tf.cast(tf.floor(tf.random.stateless_uniform([2], seed) * room), tf.int32)
    offset = tf.minimum(offset, tf.cast(room, tf.int32) - 1)  # u may round up to 1.0 in float32
    end = offset + tf.minimum(shape, [height, width])
    out = dict(example)
    for key in _SPATIAL_KEYS:
        if key in example:
            out[key] = example[key][offset[0] : end[0], offset[1] : end[1]]
    if pad:
        out = pad_to(out, seed, height=height, width=width)
    return out


def random_flip(example: Example, seed: tf.Tensor) -> Example:
    """Mirrors left-right (image, label and any "weight") with probability 1/2."""
    flip = tf.random.stateless_uniform([], seed) < 0.5
    out = dict(example)
    for key in _SPATIAL_KEYS:
        if key in example:
            x = example[key]
            out[key] = tf.cond(flip, lambda x=x: tf.reverse(x, [1]), lambda x=x: x)
    return out


def reflect_pad(example: Example, seed: tf.Tensor, *, height: int, width: int) -> Example:
    """Mirror-pads image and label by `height` px above and below and `width` px left and right.

    The U-Net paper's border extrapolation (Fig. 2), applied in training as well as in
    overlap-tile inference: a valid U-Net scores only the centre of its input tile, so padding
    every image by the network's context (`jaxseg.models.input_context`, 92 px for the paper's
    572 -> 388 net) lets each labelled pixel land in the scored centre, seeing mirrored context
    at the image border exactly as at test time. Labels are mirrored too (255 stays 255).
    """
    del seed
    shape = tf.shape(example["label"])
    # Any pad width works: the indices reflect back and forth (numpy's "reflect"); 1 px repeats.
    rows = _reflect(tf.range(-height, shape[0] + height), shape[0])
    cols = _reflect(tf.range(-width, shape[1] + width), shape[1])
    out = dict(example)
    for key in _SPATIAL_KEYS:
        if key in example:
            out[key] = tf.gather(tf.gather(example[key], rows, axis=0), cols, axis=1)
    return out


def random_rotate_shift(
    example: Example, seed: tf.Tensor, *, max_degrees: float, max_shift: float
) -> Example:
    """Random rotation about the centre, uniform in [-max_degrees, max_degrees], and shift,
    uniform in [-max_shift, max_shift] px per axis (the U-Net paper's shift and rotation
    invariance, sec. 3.1). Bicubic image, nearest-neighbour mask; both are mirrored where the
    rotated frame reaches outside the image, so no 255 band appears."""
    image, label = example["image"], example["label"]
    shape = tf.shape(label)
    angle = tf.random.stateless_uniform([], _sub_seed(seed, 0), -1.0, 1.0) * max_degrees
    angle = angle * (math.pi / 180.0)
    shift = tf.random.stateless_uniform([2], _sub_seed(seed, 1), -1.0, 1.0) * max_shift
    cy = (tf.cast(shape[0], tf.float32) - 1) / 2
    cx = (tf.cast(shape[1], tf.float32) - 1) / 2
    y = tf.cast(tf.range(shape[0]), tf.float32)[:, None] - cy
    x = tf.cast(tf.range(shape[1]), tf.float32)[None, :] - cx
    cos, sin = tf.cos(angle), tf.sin(angle)
    # Output pixel p shows source pixel R(angle) p - shift (about the centre).
    rows = cos * y - sin * x + cy - shift[0]
    cols = sin * y + cos * x + cx - shift[1]
    image = _sample_bicubic(image, rows, cols, reflect=True)
    label = _sample_nearest(label, rows, cols, fill=IGNORE_ID, reflect=True)
    return {**example, "image": image, "label": label}


def border_weight_map(example: Example, seed: tf.Tensor, *, w0: float, sigma: float) -> Example:
    """Adds "weight": float32 [H, W], the U-Net paper's eq. 2 map of the (augmented) label
    (`jaxseg.losses.binary_weight_map`: class 1 = cell, connected components = cells).

    Runs after the geometric augmentation, so distances are those of the deformed cells, and
    before the crop, so cells just outside the crop still count.
    """
    del seed
    fn = functools.partial(losses.binary_weight_map, w0=w0, sigma=sigma)
    weight = tf.numpy_function(fn, [example["label"]], tf.float32)
    weight = tf.ensure_shape(weight, example["label"].shape)
    return {**example, "weight": weight}


def photometric_jitter(
    example: Example,
    seed: tf.Tensor,
    *,
    brightness: float,
    contrast: float,
    saturation: float,
    hue: float,
) -> Example:
    """Random brightness (+-brightness), contrast and saturation (x[1-v, 1+v]) and hue (+-hue
    turns); image only, clipped to [0, 1]. Saturation and hue need RGB and skip greyscale."""
    image = example["image"]
    if brightness > 0:
        image = tf.image.stateless_random_brightness(image, brightness, _sub_seed(seed, 0))
    if contrast > 0:
        image = tf.image.stateless_random_contrast(
            image, 1 - contrast, 1 + contrast, _sub_seed(seed, 1)
        )
    if image.shape[-1] == 3:
        if saturation > 0:
            image = tf.image.stateless_random_saturation(
                image, 1 - saturation, 1 + saturation, _sub_seed(seed, 2)
            )
        if hue > 0:
            image = tf.image.stateless_random_hue(image, hue, _sub_seed(seed, 3))
    return {**example, "image": tf.clip_by_value(image, 0.0, 1.0)}


def elastic_deform(
    example: Example, seed: tf.Tensor, *, grid_size: int = 3, sigma: float = 10.0
) -> Example:
    """The U-Net paper's elastic deformation (Ronneberger et al. 2015, sec. 3.1).

    Random displacement vectors on a coarse grid_size x grid_size grid, each component drawn
    from N(0, sigma px), are interpolated bicubically to a per-pixel displacement field; the
    image is resampled with bicubic interpolation (edge pixels repeat outside the image) and the
    mask with nearest neighbour (255 outside the image).
    """
    image, label = example["image"], example["label"]
    shape = tf.shape(label)
    coarse = tf.random.stateless_normal([1, grid_size, grid_size, 2], seed, stddev=sigma)
    field = tf.image.resize(coarse, shape, method="bicubic")[0]
    rows = tf.cast(tf.range(shape[0]), tf.float32)[:, None] + field[..., 0]
    cols = tf.cast(tf.range(shape[1]), tf.float32)[None, :] + field[..., 1]
    image = _sample_bicubic(image, rows, cols)
    label = _sample_nearest(label, rows, cols, fill=IGNORE_ID)
    return {**example, "image": image, "label": label}


def _cubic_weights(t: tf.Tensor) -> list[tf.Tensor]:
    """Keys' cubic convolution weights (a = -0.5) for taps at offsets -1, 0, 1, 2."""
    a = -0.5

    def near(x):  # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x):  # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    return [far(t + 1), near(t), near(1 - t), far(2 - t)]


def _sample_bicubic(
    image: tf.Tensor, rows: tf.Tensor, cols: tf.Tensor, *, reflect: bool = False
) -> tf.Tensor:
    """Samples image [H, W, C] at fractional (rows, cols) [H', W'] -> [H', W', C]; taps outside
    the image repeat the edge pixel, or mirror the image with `reflect`."""
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    flat = tf.reshape(image, [height * width, -1])
    r0, c0 = tf.floor(rows), tf.floor(cols)
    wr, wc = _cubic_weights(rows - r0), _cubic_weights(cols - c0)
    r0, c0 = tf.cast(r0, tf.int32), tf.cast(c0, tf.int32)
    bound = _reflect if reflect else lambda v, n: tf.clip_by_value(v, 0, n - 1)
    out = 0.0
    for i in range(4):
        r = bound(r0 + i - 1, height)
        for j in range(4):
            c = bound(c0 + j - 1, width)
            out += (wr[i] * wc[j])[..., None] * tf.gather(flat, r * width + c)
    return tf.ensure_shape(out, [None, None, image.shape[-1]])


def _reflect(v: tf.Tensor, n: tf.Tensor) -> tf.Tensor:
    """Integer indices v mirrored into [0, n) ("reflect": the edge pixel is not repeated)."""
    period = tf.maximum(2 * (n - 1), 1)
    j = tf.math.floormod(v, period)
    return tf.minimum(j, period - j)


def _sample_nearest(
    label: tf.Tensor, rows: tf.Tensor, cols: tf.Tensor, fill: int, *, reflect: bool = False
) -> tf.Tensor:
    height, width = tf.shape(label)[0], tf.shape(label)[1]
    r = tf.cast(tf.round(rows), tf.int32)
    c = tf.cast(tf.round(cols), tf.int32)
    if reflect:
        r, c = _reflect(r, height), _reflect(c, width)
    inside = (r >= 0) & (r < height) & (c >= 0) & (c < width)
    index = tf.clip_by_value(r, 0, height - 1) * width + tf.clip_by_value(c, 0, width - 1)
    values = tf.gather(tf.reshape(label, [-1]), index)
    return tf.where(inside, values, tf.cast(fill, label.dtype))


def normalize(
    example: Example, seed: tf.Tensor, *, mean: Sequence[float], std: Sequence[float]
) -> Example:
    """(image - mean) / std per channel; mean and std are in [0, 1] image units."""
    del seed  # Deterministic; takes a seed only to fit the Transform signature.
    mean = tf.constant(mean, tf.float32)
    std = tf.constant(std, tf.float32)
    return {**example, "image": (example["image"] - mean) / std}


def pad_image(image, height: int, width: int):
    """The one border rule for images, shared by training, evaluation and predict.py.

    Pads a normalised image [h, w, C] (numpy array or tf.Tensor) at the bottom and right to
    [height, width] with 0, i.e. the data set's mean: what the FCN release's conv1_1 zero padding
    adds after mean subtraction, so a band costs no spurious edge. Pixel (y, x) stays at (y, x).
    """
    if isinstance(image, np.ndarray):
        h, w = image.shape[:2]
        if h > height or w > width:
            raise ValueError(f"image of shape {image.shape} exceeds the pad size {height}x{width}")
        return np.pad(image, ((0, height - h), (0, width - w), (0, 0)))
    shape = tf.shape(image)
    padded = tf.pad(image, [[0, height - shape[0]], [0, width - shape[1]], [0, 0]])
    return tf.ensure_shape(padded, [height, width, image.shape[-1]])


def pad_to(example: Example, seed: tf.Tensor, *, height: int, width: int) -> Example:
    """Pads at the bottom and right to exactly [height, width]: image with 0 (`pad_image`; after
    `normalize` this is the mean), label with 255, a "weight" map with 0.

    The caller checks that the example fits; pixel (y, x) stays at (y, x), so predictions can be
    cropped back to the native size.
    """
    del seed
    shape = tf.shape(example["label"])
    pad_h, pad_w = height - shape[0], width - shape[1]
    out = {**example, "image": pad_image(example["image"], height, width)}
    label = tf.pad(example["label"], [[0, pad_h], [0, pad_w]], constant_values=IGNORE_ID)
    out["label"] = tf.ensure_shape(label, [height, width])
    if "weight" in example:
        weight = tf.pad(example["weight"], [[0, pad_h], [0, pad_w]])
        out["weight"] = tf.ensure_shape(weight, [height, width])
    return out


def train_transforms(
    data_cfg: ml_collections.ConfigDict, *, context: tuple[int, int] = (0, 0)
) -> list[Transform]:
    """The training augmentation chain configured by `config.data`.

    Args:
      data_cfg: `config.data`.
      context: (rows, cols) of input context the model needs around its output
        (`jaxseg.models.input_context`; 92 px for the paper's U-Net, 0 for same-size models).

    Order: scale, mirror-pad by `context`, rotation/shift, elastic, weight map, crop, flip,
    photometric jitter, normalise, pad to the crop size. The geometry runs before the crop so
    the crop rarely sees its out-of-image border, and the weight map after the geometry so it
    matches the deformed cells. With context m, an image of side S padded to S + 2m gives the
    crop (of side T = output + 2m) S - output + 1 positions, so its scored centre covers every
    pixel of the image.
    """
    transforms: list[Transform] = []
    if (data_cfg.min_scale, data_cfg.max_scale) != (1.0, 1.0):
        transforms.append(
            functools.partial(
                random_scale, min_scale=data_cfg.min_scale, max_scale=data_cfg.max_scale
            )
        )
    if any(context):
        transforms.append(functools.partial(reflect_pad, height=context[0], width=context[1]))
    if data_cfg.rotation_degrees > 0 or data_cfg.shift_px > 0:
        transforms.append(
            functools.partial(
                random_rotate_shift,
                max_degrees=data_cfg.rotation_degrees,
                max_shift=data_cfg.shift_px,
            )
        )
    if data_cfg.elastic:
        transforms.append(
            functools.partial(
                elastic_deform, grid_size=data_cfg.elastic_grid, sigma=data_cfg.elastic_sigma
            )
        )
    if data_cfg.weight_map:
        transforms.append(
            functools.partial(
                border_weight_map, w0=data_cfg.weight_map_w0, sigma=data_cfg.weight_map_sigma
            )
        )
    height, width = data_cfg.crop_size
    transforms.append(functools.partial(random_crop, height=height, width=width, pad=False))
    if data_cfg.hflip:
        transforms.append(random_flip)
    if max(data_cfg.brightness, data_cfg.contrast, data_cfg.saturation, data_cfg.hue) > 0:
        transforms.append(
            functools.partial(
                photometric_jitter,
                brightness=data_cfg.brightness,
                contrast=data_cfg.contrast,
                saturation=data_cfg.saturation,
                hue=data_cfg.hue,
            )
        )
    transforms.append(functools.partial(normalize, mean=data_cfg.mean, std=data_cfg.std))
    transforms.append(functools.partial(pad_to, height=height, width=width))
    return transforms


def eval_transforms(data_cfg: ml_collections.ConfigDict) -> list[Transform]:
    """Native resolution: normalise, then pad to `config.data.eval_pad_size`."""
    height, width = data_cfg.eval_pad_size
    return [
        functools.partial(normalize, mean=data_cfg.mean, std=data_cfg.std),
        functools.partial(pad_to, height=height, width=width),
    ]
