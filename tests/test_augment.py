"""Device augmentation (jaxseg/data/augment.py) against numpy oracles: one grid per example keeps
image, label and weight map aligned, pads with 255 / weight 0 / image 0, and is a pure function
of (seed, position)."""

import colorsys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage

from configs.base import data_config
from jaxseg.data import augment, loading, weight_maps
from jaxseg.labels import IGNORE_ID as IGNORE
from jaxseg.models import build_model, input_context, output_size

# Compiled once per (cfg, shapes): cfg is a frozen dataclass, hashable, so it is static; the
# seed is traced (fold_in takes it), so other seeds reuse the compilation.
_warp = jax.jit(augment.warp, static_argnums=2)
_augment = jax.jit(augment.augment, static_argnums=2)
_sample_many = jax.jit(jax.vmap(augment.sample_params, in_axes=(0, None, None)), static_argnums=1)
_sample_at = jax.jit(augment._sample, static_argnums=4)
_rgb_to_hsv = jax.jit(augment._rgb_to_hsv)
_hsv_to_rgb = jax.jit(augment._hsv_to_rgb)

IMAGENET = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}


def _cfg(crop, context=(0, 0), **overrides) -> augment.AugmentConfig:
    """A recipe through the user's path (`config.data` -> `augment_config`): everything random
    off and identity normalisation unless overridden."""
    data = data_config()
    data.crop_size = tuple(crop)
    data.min_scale = data.max_scale = 1.0
    data.hflip = False
    data.brightness = data.contrast = data.saturation = data.hue = 0.0
    data.mean, data.std = (0.0,), (1.0,)
    for name, value in overrides.items():
        setattr(data, name, value)
    return augment.augment_config(data, context)


def _identity_params(cfg: augment.AugmentConfig, **overrides) -> dict:
    """Parameters that change nothing (the coarse grid shaped for `cfg`), but `overrides`."""
    grid = cfg.elastic_grid if cfg.elastic else 1
    params = {
        "scale": np.ones(2, np.float32),
        "offset": np.zeros(2, np.int32),
        "flip": np.bool_(False),
        "angle": np.float32(0.0),
        "shift": np.zeros(2, np.float32),
        "coarse": np.zeros((grid, grid, 2), np.float32),
        "brightness": np.float32(0.0),
        "contrast": np.float32(1.0),
        "saturation": np.float32(1.0),
        "hue": np.float32(0.0),
    }
    params.update({k: np.asarray(v, params[k].dtype) for k, v in overrides.items()})
    return params


def _blocks(shape, block, classes=6, channels=3, seed=0) -> dict:
    """A label of random constant-class blocks and a uint8 image = class * 40 in every channel,
    so wherever the warped label is one class over a neighbourhood, the image must show it."""
    rng = np.random.default_rng(seed)
    cells = rng.integers(0, classes, (-(-shape[0] // block), -(-shape[1] // block)))
    label = np.kron(cells, np.ones((block, block), np.int32))[: shape[0], : shape[1]]
    image = np.repeat((label * 40).astype(np.uint8)[..., None], channels, -1)
    return {"image": image, "label": label.astype(np.int32), "size": np.array(shape, np.int32)}


def _random_example(shape, channels=3, seed=0) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "image": rng.integers(0, 256, (*shape, channels), np.uint8),
        "label": rng.integers(0, 4, shape).astype(np.int32),
        "size": np.array(shape, np.int32),
    }


def _as_float(example: dict) -> dict:
    """The example with its uint8 image as float32 in [0, 1]: warp takes it as is, so an exact
    geometry gives exactly these values back."""
    return {**example, "image": example["image"] / np.float32(255)}


def _reflect(v, n):
    period = 2 * (n - 1)
    return np.minimum(np.mod(v, period), period - np.mod(v, period))


def _assert_aligned(image, label, neighbourhood, min_fraction):
    """Where the label is one class over `neighbourhood`^2, the image is class * 40 / 255."""
    uniform = scipy.ndimage.minimum_filter(
        label, neighbourhood, mode="nearest"
    ) == scipy.ndimage.maximum_filter(label, neighbourhood, mode="nearest")
    checked = uniform & (label != IGNORE)
    assert checked.mean() > min_fraction, f"only {checked.mean():.2f} of pixels checked"
    want = np.broadcast_to((label[checked] * 40 / 255.0)[:, None], image[checked].shape)
    np.testing.assert_allclose(image[checked], want, atol=1e-5)
    return checked


# Tests share recipes and shapes, so each of these compiles warp once: float32 images in [0, 1]
# with a weight map, `_HW` through a bilinear recipe and `_SQUARE` through a bicubic one.
_HW = (24, 30)
_FLIP_CFG = _cfg(_HW, hflip=True)  # hflip only lets sample_params draw flips
_SQUARE = (32, 32)
_WARP_CFG = _cfg(_SQUARE, rotation_degrees=90.0, shift_px=6.0, elastic=True, elastic_sigma=3.0)


def _with_weight(example: dict, seed=0) -> dict:
    rng = np.random.default_rng(seed)
    weight = rng.uniform(0.5, 5.0, example["label"].shape).astype(np.float32)
    return {**example, "weight": weight}


@pytest.mark.parametrize(
    "cfg, shape", [(_FLIP_CFG, _HW), (_WARP_CFG, _SQUARE)], ids=["bilinear", "bicubic"]
)
def test_identity_parameters_give_the_input_back_exactly(cfg, shape):
    assert cfg.bicubic == (cfg is _WARP_CFG)
    params = _identity_params(cfg)
    example = _with_weight(_random_example(shape))
    out = _warp(_as_float(example), params, cfg)
    np.testing.assert_array_equal(out["image"], example["image"] / np.float32(255))
    np.testing.assert_array_equal(out["label"], example["label"])
    np.testing.assert_array_equal(out["weight"], example["weight"])
    assert out["image"].dtype == jnp.float32 and out["label"].dtype == jnp.int32
    if not cfg.bicubic:
        # uint8 in: XLA turns "/ 255" into "* (1 / 255)", one ulp from numpy's quotient (see
        # test_uint8_normalisation_is_bit_identical_to_the_host).
        out = _warp(example, params, cfg)
        np.testing.assert_array_max_ulp(out["image"], example["image"] / np.float32(255), 1)
        np.testing.assert_array_equal(out["label"], example["label"])


def test_flip_mirrors_image_label_and_weight_exactly():
    example = _as_float(_with_weight(_random_example(_HW)))
    params = _identity_params(_FLIP_CFG, flip=True)
    out = _warp(example, params, _FLIP_CFG)
    for name in ("image", "label", "weight"):
        np.testing.assert_array_equal(out[name], example[name][:, ::-1], err_msg=name)
    # A 20 x 25 image in the same arrays, smaller than the crop: it is flipped in place, the
    # band past it stays 255 / weight 0 / image 0 (flip within the image, then pad).
    out = _warp({**example, "size": np.array((20, 25), np.int32)}, params, _FLIP_CFG)
    out = jax.tree.map(np.asarray, out)
    for name, pad in (("image", 0.0), ("label", IGNORE), ("weight", 0.0)):
        np.testing.assert_array_equal(out[name][:20, :25], example[name][:20, 24::-1])
        assert (out[name][20:] == pad).all() and (out[name][:, 25:] == pad).all(), name


_ALL_ON_CFG = _cfg(
    (28, 28),
    min_scale=0.75,
    max_scale=1.25,
    rotation_degrees=15.0,
    shift_px=3.0,
    elastic=True,
    elastic_sigma=4.0,
    hflip=True,
    brightness=0.1,
    contrast=0.1,
    saturation=0.1,
    hue=0.02,
    **IMAGENET,
)


def _mixed_batch(positions, pad=(32, 32), seed=0) -> dict:
    """Examples of different real sizes (some smaller than the 28 x 28 crop) in one padded
    batch; the padding holds label 99 and white pixels, which must never be read."""
    rng = np.random.default_rng(seed)
    sizes = [(16, 20), (32, 32), (24, 17), (32, 26), (18, 31), (27, 23)]
    n = len(positions)
    image = np.full((n, *pad, 3), 255, np.uint8)
    label = np.full((n, *pad), 99, np.int32)
    size = np.zeros((n, 2), np.int32)
    for i in range(n):
        h, w = sizes[i % len(sizes)]
        image[i, :h, :w] = rng.integers(0, 256, (h, w, 3))
        label[i, :h, :w] = rng.integers(0, 4, (h, w))
        size[i] = h, w
    position = augment.position_words(positions)
    return {"image": image, "label": label, "size": size, "position": position}


def test_labels_stay_in_the_classes_and_ignore_with_every_feature_on():
    out = _augment(_mixed_batch(np.arange(6)), 3, _ALL_ON_CFG)
    label, image = np.asarray(out["label"]), np.asarray(out["image"])
    assert label.shape == (6, 28, 28) and image.shape == (6, 28, 28, 3)
    assert set(np.unique(label)) <= {0, 1, 2, 3, IGNORE}  # nearest: no blends, no padding 99
    assert (label == IGNORE).any() and (label != IGNORE).mean() > 0.5
    assert np.isfinite(image).all() and (image[label == IGNORE] == 0).all()


def test_an_example_is_a_pure_function_of_seed_and_position():
    # Rows 1, 4 and 5 hold one example; 4 differs from 1 only in the position's high word.
    batch = _mixed_batch(np.array([0, 1, 2, 3, 2**32 + 1, 1]))
    for name in ("image", "label", "size"):
        batch[name] = batch[name][np.array([0, 1, 2, 3, 1, 1])]
    whole = jax.tree.map(np.asarray, _augment(batch, 3, _ALL_ON_CFG))
    for name in whole:
        np.testing.assert_array_equal(whole[name][1], whole[name][5], err_msg=name)
    assert not np.array_equal(whole["image"][1], whole["image"][4])
    # Neither the row nor the other examples matter: a rolled batch gives rolled outputs.
    rolled = _augment(jax.tree.map(lambda x: np.roll(x, 2, 0), batch), 3, _ALL_ON_CFG)
    for name in whole:
        np.testing.assert_array_equal(rolled[name], np.roll(whole[name], 2, 0), err_msg=name)
    other_seed = np.asarray(_augment(batch, 4, _ALL_ON_CFG)["image"])
    assert all(not np.array_equal(a, b) for a, b in zip(other_seed, whole["image"], strict=True))


def _cells_label(shape, band, seed=0):
    """Binary 0/1 cells (class 1) well inside an all-background (class 0) band of `band` px."""
    rng = np.random.default_rng(seed)
    label = np.zeros(shape, np.int32)
    for _ in range(6):
        r = rng.integers(band, shape[0] - band - 4)
        c = rng.integers(band, shape[1] - band - 4)
        label[r : r + rng.integers(2, 5), c : c + rng.integers(2, 5)] = 1
    return label


def _weighted(label, sigma=5.0) -> dict:
    return {
        "image": np.zeros((*label.shape, 3), np.float32),
        "label": label,
        "size": np.array(label.shape, np.int32),
        "weight": weight_maps.binary_weight_map(label, sigma=sigma),
    }


def test_warped_weight_map_equals_the_map_of_the_warped_label_under_a_flip():
    label = _cells_label(_HW, band=2)
    label[0, 0] = IGNORE
    out = _warp(_weighted(label), _identity_params(_FLIP_CFG, flip=True), _FLIP_CFG)
    warped = np.asarray(out["label"])
    np.testing.assert_array_equal(warped, label[:, ::-1])
    np.testing.assert_array_equal(out["weight"], weight_maps.binary_weight_map(warped))


def test_warped_weight_map_equals_the_map_of_the_warped_label_under_an_integer_shift():
    sigma, shift = 2.0, (3, -4)
    label = _cells_label(_SQUARE, band=6)
    out = _warp(_weighted(label, sigma), _identity_params(_WARP_CFG, shift=shift), _WARP_CFG)
    warped = np.asarray(out["label"])
    # The cells moved whole; the band mirrored in is background: class counts are unchanged.
    np.testing.assert_array_equal(np.bincount(warped.ravel()), np.bincount(label.ravel()))
    np.testing.assert_array_equal(warped[6:-6, 6:-6], np.roll(label, shift, (0, 1))[6:-6, 6:-6])
    want = weight_maps.binary_weight_map(warped, sigma=sigma)
    edge = int(3 * sigma)
    interior = np.zeros_like(warped, bool)
    interior[edge:-edge, edge:-edge] = True
    interior &= warped != IGNORE
    got = np.asarray(out["weight"])
    np.testing.assert_allclose(got[interior], want[interior], rtol=1e-6)
    assert (got[interior] > want[interior].min() + 1).any()  # border terms are checked too


def test_right_angle_rotation_and_integer_shift_match_numpy():
    n = _SQUARE[0]
    example = _with_weight(_blocks(_SQUARE, 4))
    example["image"] = np.random.default_rng(1).uniform(0, 1, (n, n, 3)).astype(np.float32)
    label, image, weight = example["label"], example["image"], example["weight"]

    out = _warp(example, _identity_params(_WARP_CFG, angle=np.pi / 2), _WARP_CFG)
    # Output (r, c) shows source R(+90) (r, c) about the centre = (n - 1 - c, r): clockwise.
    np.testing.assert_array_equal(out["label"], np.rot90(label, -1))
    np.testing.assert_array_equal(out["weight"], np.rot90(weight, -1))
    # cos(pi / 2) is -4e-8 in float32: the bicubic taps are off integers by ~1e-6 px.
    np.testing.assert_allclose(out["image"], np.rot90(image, -1), atol=1e-5)

    # A pure shift is a mirrored roll: output (r, c) shows source (r - dy, c - dx), reflected.
    dy, dx = 5, -3
    out = _warp(example, _identity_params(_WARP_CFG, shift=(dy, dx)), _WARP_CFG)
    r = _reflect(np.arange(n)[:, None] - dy, n)
    c = _reflect(np.arange(n)[None, :] - dx, n)
    np.testing.assert_array_equal(out["label"], label[r, c])
    np.testing.assert_array_equal(out["weight"], weight[r, c])
    np.testing.assert_array_equal(out["image"], image[r, c])  # t = 0: bicubic is exact
    assert (np.asarray(out["label"]) != IGNORE).all()  # mirrored, never a 255 band


def test_context_mirror_pads_like_numpy_for_any_width():
    cfg = _cfg((8 + 40, 10 + 18), context=(20, 9))  # 20 > 8: reflects back and forth
    example = _as_float(_random_example((8, 10)))
    out = _warp(example, _identity_params(cfg), cfg)
    want = np.pad(example["label"], ((20, 20), (9, 9)), mode="reflect")
    np.testing.assert_array_equal(out["label"], want)
    want = np.pad(example["image"], ((20, 20), (9, 9), (0, 0)), mode="reflect")
    np.testing.assert_array_equal(out["image"], want)
    # A 1 x 1 image (same arrays, real size 1 x 1): its frame is 41 x 19 copies of the pixel.
    out = _warp({**example, "size": np.array((1, 1), np.int32)}, _identity_params(cfg), cfg)
    label = np.asarray(out["label"])
    assert (label[:41, :19] == example["label"][0, 0]).all()
    assert (label[41:] == IGNORE).all() and (label[:, 19:] == IGNORE).all()


@pytest.mark.parametrize("bicubic", [True, False], ids=["bicubic", "bilinear"])
def test_sampling_reproduces_a_linear_ramp(bicubic):
    # Keys' cubic kernel (and the bilinear one) reproduce degree-1 polynomials exactly.
    ramp = np.add.outer(np.arange(16.0) * 0.5, np.arange(12.0) * 0.25)[..., None]
    rows = np.array([[3.3, 7.75], [10.5, 5.0]], np.float32)
    cols = np.array([[4.6, 2.25], [8.1, 9.9]], np.float32)
    size = np.array((16, 12), np.int32)
    sampled = _sample_at(ramp.astype(np.float32), rows, cols, size, bicubic)
    np.testing.assert_allclose(sampled[..., 0], rows * 0.5 + cols * 0.25, atol=1e-5)


@pytest.fixture(scope="module")
def padded_by_the_crop():
    """A 20 x 25 example (loaded padded to 24 x 30) augmented to a 32 x 36 crop, no randomness."""
    cfg = _cfg((32, 36), **IMAGENET)
    example = _with_weight(_random_example((20, 25)), seed=2)
    batch = {  # the loaded batch: label 255 and weight 0 in the loader's padding
        "image": np.pad(example["image"], ((0, 4), (0, 5), (0, 0)))[None],
        "label": np.pad(example["label"], ((0, 4), (0, 5)), constant_values=IGNORE)[None],
        "weight": np.pad(example["weight"], ((0, 4), (0, 5)))[None],
        "size": example["size"][None],
        "position": augment.position_words([7]),
    }
    out = jax.tree.map(lambda x: np.asarray(x[0]), _augment(batch, 0, cfg))
    evaluated = loading.pad_image(loading.normalize(example["image"], **IMAGENET), 32, 36)
    return example, out, evaluated


def test_crop_larger_than_the_image_pads_like_evaluation(padded_by_the_crop):
    example, out, evaluated = padded_by_the_crop
    h, w = example["size"]
    assert (out["image"][h:] == 0).all() and (out["image"][:, w:] == 0).all()
    np.testing.assert_allclose(out["image"], evaluated, rtol=0, atol=1e-6)
    want = np.full((32, 36), IGNORE)
    want[:h, :w] = example["label"]
    np.testing.assert_array_equal(out["label"], want)
    want = np.zeros((32, 36), np.float32)
    want[:h, :w] = example["weight"]
    np.testing.assert_array_equal(out["weight"], want)


def _stacked(examples, positions) -> dict:
    batch = {k: np.stack([e[k] for e in examples]) for k in examples[0]}
    return {**batch, "position": augment.position_words(positions)}


def test_random_scale_keeps_image_and_label_aligned():
    cfg = _cfg((32, 32), min_scale=0.75, max_scale=1.25)
    assert not cfg.bicubic
    examples = [_blocks((32, 32), 8, seed=s) for s in range(6)]
    out = _augment(_stacked(examples, np.arange(6)), 1, cfg)
    shrunk = 0
    for image, label in zip(np.asarray(out["image"]), np.asarray(out["label"]), strict=True):
        assert set(np.unique(label)) <= set(range(6)) | {IGNORE}
        _assert_aligned(image, label, 3, min_fraction=0.3)
        shrunk += (label == IGNORE).any()  # scale < 1: the 32 px image no longer fills the crop
    assert 0 < shrunk < 6


def test_a_batch_equals_its_two_halves_augmented_apart():
    """A host's share of a global batch is augmented as it would be in the whole batch."""
    cfg = _cfg((32, 32), min_scale=0.75, max_scale=1.25)
    batch = _stacked([_blocks((32, 32), 8, seed=s) for s in range(6)], np.arange(6) + 2**33)
    whole = _augment(batch, 1, cfg)
    halves = [
        _augment(jax.tree.map(lambda x, s=s: x[s], batch), 1, cfg)
        for s in (slice(0, 3), slice(3, 6))
    ]
    for name in whole:
        joined = np.concatenate([np.asarray(h[name]) for h in halves])
        np.testing.assert_array_equal(whole[name], joined, err_msg=name)


def test_scale_draws_lie_in_the_range_and_share_one_factor():
    cfg = _cfg((32, 32), min_scale=0.75, max_scale=1.25)
    size = np.array((22, 37), np.int32)
    keys = jax.random.split(jax.random.key(0), 200)
    scale = np.asarray(_sample_many(keys, cfg, size)["scale"])
    scaled = scale * size
    np.testing.assert_allclose(scaled, np.round(scaled), atol=1e-4)  # whole pixels
    # Rounding to whole pixels moves a ratio by at most half a pixel over the size.
    slack = 0.5 / size + 1e-6
    assert (scale >= 0.75 - slack).all() and (scale <= 1.25 + slack).all()
    assert np.abs(scale[:, 0] - scale[:, 1]).max() <= slack.sum()  # one factor, both axes
    assert scale.min() < 0.8 and scale.max() > 1.2


def test_scale_resamples_with_half_pixel_centres():
    """Scale 2 of a 16 px ramp: output r shows source (r + 0.5) / 2 - 0.5 (an image resize's
    half-pixel centres), clamped to the image; the label repeats each pixel twice."""
    cfg = _cfg((32, 32), min_scale=0.75, max_scale=1.25)
    ramp = np.add.outer(np.arange(16.0) * 0.5, np.arange(16.0) * 0.25).astype(np.float32)
    example = _with_weight(_random_example((16, 16), channels=1))
    example["image"] = ramp[..., None]
    out = _warp(example, _identity_params(cfg, scale=(2.0, 2.0)), cfg)
    src = np.clip((np.arange(32) + 0.5) / 2 - 0.5, 0, 15)
    np.testing.assert_allclose(out["image"][..., 0], np.add.outer(src * 0.5, src * 0.25), atol=1e-6)
    twice = np.ones((2, 2), np.int32)
    np.testing.assert_array_equal(out["label"], np.kron(example["label"], twice))
    np.testing.assert_array_equal(out["weight"], np.kron(example["weight"], twice))


def test_elastic_deformation_keeps_image_and_label_aligned():
    rng = np.random.default_rng(0)
    for seed in range(4):
        example = _as_float(_with_weight(_blocks(_SQUARE, 16, seed=seed)))
        coarse = rng.normal(0, _WARP_CFG.elastic_sigma, (3, 3, 2))
        out = _warp(example, _identity_params(_WARP_CFG, coarse=coarse), _WARP_CFG)
        image, label = np.asarray(out["image"]), np.asarray(out["label"])
        assert not np.array_equal(label, example["label"]), "no deformation happened"
        assert set(np.unique(label)) <= set(range(6)) | {IGNORE}
        # Bicubic taps reach 2 px: check where the label is one class 3 px around.
        _assert_aligned(image, label, 7, min_fraction=0.15)


def test_elastic_deformation_marks_pixels_sampled_past_the_frame_255():
    example = _as_float(_with_weight(_blocks(_SQUARE, 8)))
    label, image, weight = example["label"], example["image"], example["weight"]
    # A constant displacement (+12 rows, -7 cols): output (r, c) shows (r + 12, c - 7), and
    # exactly the pixels that fall past the frame are 255, weight 0, image 0.
    coarse = np.broadcast_to(np.array([12.0, -7.0], np.float32), (3, 3, 2))
    params = _identity_params(_WARP_CFG, coarse=coarse)
    out = jax.tree.map(np.asarray, _warp(example, params, _WARP_CFG))
    inside = np.zeros(_SQUARE, bool)
    inside[:20, 7:] = True
    np.testing.assert_array_equal(out["label"][inside], label[12:, :25].ravel())
    np.testing.assert_array_equal(out["weight"][inside], weight[12:, :25].ravel())
    np.testing.assert_allclose(out["image"][inside], image[12:, :25].reshape(-1, 3), atol=1e-5)
    assert (out["label"][~inside] == IGNORE).all()
    assert (out["weight"][~inside] == 0).all() and (out["image"][~inside] == 0).all()

    # sigma = 40 px on a 32 px frame: many samples land outside.
    coarse = np.random.default_rng(0).normal(0, 40.0, (3, 3, 2))
    params = _identity_params(_WARP_CFG, coarse=coarse)
    out = jax.tree.map(np.asarray, _warp(example, params, _WARP_CFG))
    outside = out["label"] == IGNORE
    assert 0.05 < outside.mean() < 0.95
    assert set(np.unique(out["label"])) <= set(range(6)) | {IGNORE}
    assert (out["weight"][outside] == 0).all() and (out["weight"][~outside] > 0).all()
    assert (out["image"][outside] == 0).all()


def test_valid_unet_training_tiles_score_every_labelled_pixel():
    """Over many draws the scored centre of the training tile reaches every pixel of the image,
    and each draw scores an unmirrored window of it (mirrored copies are context only)."""
    model = build_model({"name": "unet", "num_classes": 2, "base_width": 4, "depth": 2})
    tile = (56, 56)
    context, out_hw = input_context(model, tile), output_size(model, tile)
    assert context == (20, 20) and out_hw == (16, 16)
    # 9 x 13 crop offsets; a corner pixel is scored by one of them only: 1000 draws miss one of
    # the four with probability 4 (116/117)^1000 < 1e-3.
    height, width, n = 24, 28, 1000
    index = np.arange(height * width, dtype=np.float32).reshape(height, width)
    batch = {  # a float image passes through as is; mean 0, std 1: the values are the indices
        "image": np.broadcast_to(index[None, ..., None], (n, height, width, 1)),
        "label": np.ones((n, height, width), np.int32),
        "size": np.broadcast_to(np.array((height, width), np.int32), (n, 2)),
        "position": augment.position_words(np.arange(n)),
    }
    out = _augment(batch, 0, _cfg(tile, context))
    m = (tile[0] - out_hw[0]) // 2, (tile[1] - out_hw[1]) // 2
    centre = (slice(None), slice(m[0], m[0] + out_hw[0]), slice(m[1], m[1] + out_hw[1]))
    values, scored = np.asarray(out["image"])[centre][..., 0], np.asarray(out["label"])[centre]
    assert (scored != IGNORE).all()  # the scored centre lies inside the mirror-padded image
    r0, c0 = np.divmod(values[:, 0, 0].astype(int), width)
    rows = r0[:, None, None] + np.arange(out_hw[0])[None, :, None]
    cols = c0[:, None, None] + np.arange(out_hw[1])[None, None, :]
    assert rows.max() < height and cols.max() < width
    np.testing.assert_array_equal(values, index[rows, cols])  # unmirrored windows
    seen = np.zeros(height * width, bool)
    seen[values.astype(int).ravel()] = True
    assert seen.all(), f"scored coverage {seen.mean():.3f}"


_JITTER = dict(brightness=0.2, contrast=0.3, saturation=0.4, hue=0.1)
_JITTER_PARAMS = dict(brightness=0.15, contrast=1.3, saturation=0.7, hue=0.08)


def _jitter_oracle(x, channels):
    """Brightness, contrast about each channel's mean, then saturation and hue via colorsys."""
    x = x + _JITTER_PARAMS["brightness"]
    mean = x.reshape(-1, channels).mean(0)
    x = np.clip((x - mean) * _JITTER_PARAMS["contrast"] + mean, 0, 1)
    if channels == 3:
        out = np.empty_like(x)
        for idx in np.ndindex(x.shape[:2]):
            h, s, v = colorsys.rgb_to_hsv(*x[idx])
            h = (h + _JITTER_PARAMS["hue"]) % 1.0
            s = min(s * _JITTER_PARAMS["saturation"], 1.0)
            out[idx] = colorsys.hsv_to_rgb(h, s, v)
        x = out
    return np.clip(x, 0, 1)


@pytest.mark.parametrize("channels", [3, 1], ids=["rgb", "greyscale"])
def test_photometric_jitter_matches_numpy_and_changes_the_image_only(channels):
    cfg = _cfg((16, 20), **_JITTER)
    example = _random_example((16, 20), channels=channels, seed=channels)
    params = _identity_params(cfg, **_JITTER_PARAMS)
    out = _warp(example, params, cfg)
    image = np.asarray(out["image"])
    np.testing.assert_array_equal(out["label"], example["label"])
    assert image.min() >= 0.0 and image.max() <= 1.0  # mean 0, std 1: the jittered [0, 1] image
    assert image.min() == 0.0 or image.max() == 1.0  # the clip was needed
    x = example["image"].astype(np.float64) / 255
    assert np.abs(image - x).mean() > 0.02
    # Greyscale: brightness and contrast only (saturation and hue need RGB).
    np.testing.assert_allclose(image, _jitter_oracle(x, channels), atol=1e-5)
    # A 12 x 15 image in the same arrays: the contrast mean is over its pixels, not the band.
    out = _warp({**example, "size": np.array((12, 15), np.int32)}, params, cfg)
    image = np.asarray(out["image"])
    np.testing.assert_allclose(image[:12, :15], _jitter_oracle(x[:12, :15], channels), atol=1e-5)
    assert (image[12:] == 0).all() and (image[:, 15:] == 0).all()


def test_hsv_conversions_match_colorsys():
    rng = np.random.default_rng(0)
    rgb = rng.uniform(0, 1, (300, 3)).astype(np.float32)
    rgb[:10] = rng.uniform(0, 1, (10, 1))  # greys: no hue
    rgb[10] = 0.0
    rgb[11] = (1.0, 0.0, 0.0)
    rgb[12] = (1.0, 0.0, 1e-3)  # hue just below 1: wraps
    hsv = np.asarray(_rgb_to_hsv(rgb))
    want = np.array([colorsys.rgb_to_hsv(*c) for c in rgb.astype(np.float64)])
    hue_error = np.abs(hsv[:, 0] - want[:, 0])
    assert np.minimum(hue_error, 1 - hue_error).max() < 1e-5
    np.testing.assert_allclose(hsv[:, 1:], want[:, 1:], atol=1e-5)
    assert ((hsv[:, 0] >= 0) & (hsv[:, 0] < 1)).all()
    back = np.asarray(_hsv_to_rgb(want.astype(np.float32)))
    np.testing.assert_allclose(back, [colorsys.hsv_to_rgb(*c) for c in want], atol=1e-5)
    np.testing.assert_allclose(np.asarray(_hsv_to_rgb(hsv)), rgb, atol=1e-5)
