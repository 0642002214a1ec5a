"""Joint image/mask transforms, as TensorFlow ops inside tf.data.

An example is `{"image": float32 [H, W, C] in [0, 1] (normalised after `normalize`),
"label": int32 [H, W], 255 = ignore}`. A transform is `fn(example, seed) -> example` where `seed`
is an int64 [2] stateless-RNG seed: every random draw is a pure function of the seed, and image
and mask share it, so they stay aligned and a given (data seed, stream position) always gets the
same augmentation (which is what makes the pipeline resumable). Geometry uses bilinear (bicubic
for elastic) interpolation for the image and nearest neighbour for the mask; pixels that come
from outside the source image get label 255.
"""

import functools
from collections.abc import Callable, Sequence

import ml_collections
import tensorflow as tf

IGNORE_ID = 255

Example = dict[str, tf.Tensor]
Transform = Callable[[Example, tf.Tensor], Example]


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


def random_crop(example: Example, seed: tf.Tensor, *, height: int, width: int) -> Example:
    """Crops a random [height, width] window; smaller images are first padded at the bottom and
    right, the image with 0 and the label with 255 (ignored)."""
    image, label = example["image"], example["label"]
    shape = tf.shape(label)
    pad_h = tf.maximum(height - shape[0], 0)
    pad_w = tf.maximum(width - shape[1], 0)
    image = tf.pad(image, [[0, pad_h], [0, pad_w], [0, 0]])
    label = tf.pad(label, [[0, pad_h], [0, pad_w]], constant_values=IGNORE_ID)
    room = tf.cast(tf.shape(label) - [height, width] + 1, tf.float32)
    offset = tf.cast(tf.floor(tf.random.stateless_uniform([2], seed) * room), tf.int32)
    offset = tf.minimum(offset, tf.cast(room, tf.int32) - 1)  # u may round up to 1.0 in float32
    image = image[offset[0] : offset[0] + height, offset[1] : offset[1] + width]
    label = label[offset[0] : offset[0] + height, offset[1] : offset[1] + width]
    image = tf.ensure_shape(image, [height, width, example["image"].shape[-1]])
    label = tf.ensure_shape(label, [height, width])
    return {**example, "image": image, "label": label}


def random_flip(example: Example, seed: tf.Tensor) -> Example:
    """Mirrors left-right with probability 1/2."""
    flip = tf.random.stateless_uniform([], seed) < 0.5
    image = tf.cond(flip, lambda: tf.reverse(example["image"], [1]), lambda: example["image"])
    label = tf.cond(flip, lambda: tf.reverse(example["label"], [1]), lambda: example["label"])
    return {**example, "image": image, "label": label}


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


def _sample_bicubic(image: tf.Tensor, rows: tf.Tensor, cols: tf.Tensor) -> tf.Tensor:
    """Samples image [H, W, C] at fractional (rows, cols) [H', W'] -> [H', W', C]."""
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    flat = tf.reshape(image, [height * width, -1])
    r0, c0 = tf.floor(rows), tf.floor(cols)
    wr, wc = _cubic_weights(rows - r0), _cubic_weights(cols - c0)
    r0, c0 = tf.cast(r0, tf.int32), tf.cast(c0, tf.int32)
    out = 0.0
    for i in range(4):
        r = tf.clip_by_value(r0 + i - 1, 0, height - 1)
        for j in range(4):
            c = tf.clip_by_value(c0 + j - 1, 0, width - 1)
            out += (wr[i] * wc[j])[..., None] * tf.gather(flat, r * width + c)
    return tf.ensure_shape(out, [None, None, image.shape[-1]])


def _sample_nearest(label: tf.Tensor, rows: tf.Tensor, cols: tf.Tensor, fill: int) -> tf.Tensor:
    height, width = tf.shape(label)[0], tf.shape(label)[1]
    r = tf.cast(tf.round(rows), tf.int32)
    c = tf.cast(tf.round(cols), tf.int32)
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


def pad_to(example: Example, seed: tf.Tensor, *, height: int, width: int) -> Example:
    """Pads at the bottom and right to exactly [height, width]: image with 0, label with 255.

    The caller checks that the example fits; pixel (y, x) stays at (y, x), so predictions can be
    cropped back to the native size.
    """
    del seed
    shape = tf.shape(example["label"])
    pad_h, pad_w = height - shape[0], width - shape[1]
    image = tf.pad(example["image"], [[0, pad_h], [0, pad_w], [0, 0]])
    label = tf.pad(example["label"], [[0, pad_h], [0, pad_w]], constant_values=IGNORE_ID)
    image = tf.ensure_shape(image, [height, width, example["image"].shape[-1]])
    label = tf.ensure_shape(label, [height, width])
    return {**example, "image": image, "label": label}


def train_transforms(data_cfg: ml_collections.ConfigDict) -> list[Transform]:
    """The training augmentation chain configured by `config.data`.

    Order: scale, elastic, crop, flip, photometric jitter, normalise. Elastic deformation runs
    before the crop so the crop rarely sees its out-of-image border.
    """
    transforms: list[Transform] = []
    if (data_cfg.min_scale, data_cfg.max_scale) != (1.0, 1.0):
        transforms.append(
            functools.partial(
                random_scale, min_scale=data_cfg.min_scale, max_scale=data_cfg.max_scale
            )
        )
    if data_cfg.elastic:
        transforms.append(
            functools.partial(
                elastic_deform, grid_size=data_cfg.elastic_grid, sigma=data_cfg.elastic_sigma
            )
        )
    height, width = data_cfg.crop_size
    transforms.append(functools.partial(random_crop, height=height, width=width))
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
    return transforms


def eval_transforms(data_cfg: ml_collections.ConfigDict) -> list[Transform]:
    """Native resolution: normalise, then pad to `config.data.eval_pad_size`."""
    height, width = data_cfg.eval_pad_size
    return [
        functools.partial(normalize, mean=data_cfg.mean, std=data_cfg.std),
        functools.partial(pad_to, height=height, width=width),
    ]
