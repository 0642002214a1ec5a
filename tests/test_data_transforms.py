"""Joint transforms keep image and mask aligned, pad with 255, and match numpy oracles."""

import functools
import math

import numpy as np
import pytest
import scipy.ndimage
import tensorflow as tf

from configs.default import data_config
from jaxseg import losses
from jaxseg.data import transforms
from jaxseg.labels import IGNORE_ID as IGNORE
from jaxseg.models import build_model, input_context, output_size


def _block_example(size: int = 64, block: int = 16, channels: int = 3, seed: int = 0):
    """A mask of random class blocks and an image whose every channel is class / 10.

    The image encodes the label, so after any geometric transform a pixel whose neighbourhood
    is one class must show that class's value in the image too.
    """
    rng = np.random.default_rng(seed)
    cells = rng.integers(0, 6, (size // block, size // block))
    label = np.kron(cells, np.ones((block, block), np.int64)).astype(np.int32)
    image = np.repeat((label / 10.0)[..., None], channels, -1).astype(np.float32)
    return {"image": tf.constant(image), "label": tf.constant(label)}


def _seed(i: int) -> tf.Tensor:
    return tf.constant([7, i], tf.int64)


def _assert_aligned(out, neighbourhood: int):
    """Where the output mask is one class over a neighbourhood, the image encodes that class."""
    image, label = out["image"].numpy(), out["label"].numpy()
    uniform = scipy.ndimage.minimum_filter(label, neighbourhood) == scipy.ndimage.maximum_filter(
        label, neighbourhood
    )
    inside = uniform & (label != IGNORE)
    assert inside.mean() > 0.3, "too few interior pixels for a meaningful check"
    expected = np.broadcast_to((label[inside] / 10.0)[:, None], image[inside].shape)
    np.testing.assert_allclose(image[inside], expected, atol=1e-4)


@pytest.mark.parametrize("i", range(4))
def test_random_scale_keeps_alignment_and_size(i):
    example = _block_example()
    out = transforms.random_scale(example, _seed(i), min_scale=0.5, max_scale=2.0)
    height, width = out["label"].shape
    assert height == width and 32 <= height <= 128
    assert out["label"].dtype == tf.int32
    assert set(np.unique(out["label"])) <= set(range(6))  # nearest: no blended ids
    _assert_aligned(out, 5)


@pytest.mark.parametrize("i", range(4))
def test_random_crop_keeps_alignment_and_pads_with_255(i):
    example = _block_example(size=32, block=8)
    out = transforms.random_crop(example, _seed(i), height=48, width=40)
    image, label = out["image"].numpy(), out["label"].numpy()
    assert label.shape == (48, 40) and image.shape == (48, 40, 3)
    # The 32x32 input is padded bottom/right: the rest is ignore-labelled zero image.
    np.testing.assert_array_equal(label[:32, :32], example["label"].numpy())
    assert (label[32:] == IGNORE).all() and (label[:, 32:] == IGNORE).all()
    assert (image[32:] == 0).all() and (image[:, 32:] == 0).all()


def test_random_crop_offsets_are_random_and_aligned():
    example = _block_example(size=64, block=8)
    full_label = example["label"].numpy()
    offsets = set()
    for i in range(8):
        out = transforms.random_crop(example, _seed(i), height=24, width=24)
        label = out["label"].numpy()
        # Find the window in the input: crops are exact sub-arrays of image and mask alike.
        matches = [
            (y, x)
            for y in range(41)
            for x in range(41)
            if np.array_equal(full_label[y : y + 24, x : x + 24], label)
            and np.array_equal(example["image"].numpy()[y : y + 24, x : x + 24], out["image"])
        ]
        assert matches, "crop is not a window of the input"
        offsets.add(matches[0])
    assert len(offsets) > 4


def test_random_flip_mirrors_both_or_neither():
    example = _block_example()
    flips = 0
    for i in range(12):
        out = transforms.random_flip(example, _seed(i))
        flipped = np.array_equal(out["label"], np.fliplr(example["label"].numpy()))
        expected_image = np.fliplr(example["image"].numpy()) if flipped else example["image"]
        np.testing.assert_array_equal(out["image"], expected_image)
        if not flipped:
            np.testing.assert_array_equal(out["label"], example["label"])
        flips += flipped
    assert 0 < flips < 12


@pytest.mark.parametrize("i", range(3))
def test_elastic_deformation_keeps_alignment_and_marks_outside_255(i):
    example = _block_example(size=96, block=24)
    out = transforms.elastic_deform(example, _seed(i), grid_size=3, sigma=10.0)
    label = out["label"].numpy()
    assert label.shape == (96, 96)
    assert not np.array_equal(label, example["label"].numpy()), "no deformation happened"
    assert set(np.unique(label)) <= set(range(6)) | {IGNORE}
    _assert_aligned(out, 9)


def test_elastic_deformation_pads_with_255_where_it_samples_outside():
    example = _block_example(size=32, block=8)
    # A huge sigma pulls many samples from outside the image.
    out = transforms.elastic_deform(example, _seed(0), grid_size=3, sigma=40.0)
    assert (out["label"].numpy() == IGNORE).mean() > 0.05


def test_elastic_with_zero_sigma_is_the_identity():
    example = _block_example(size=32, block=8)
    out = transforms.elastic_deform(example, _seed(0), grid_size=3, sigma=0.0)
    np.testing.assert_array_equal(out["label"], example["label"])
    np.testing.assert_allclose(out["image"], example["image"], atol=1e-6)


def test_bicubic_sampling_reproduces_a_linear_ramp():
    # Keys' cubic kernel reproduces polynomials up to degree 2: a ramp is sampled exactly.
    ramp = np.add.outer(np.arange(16.0) * 0.5, np.arange(16.0) * 0.25)[..., None]
    rows = tf.constant([[3.3, 7.75], [10.5, 5.0]], tf.float32)
    cols = tf.constant([[4.6, 2.25], [8.1, 12.9]], tf.float32)
    sampled = transforms._sample_bicubic(tf.constant(ramp, tf.float32), rows, cols)
    expected = rows.numpy() * 0.5 + cols.numpy() * 0.25
    np.testing.assert_allclose(sampled.numpy()[..., 0], expected, atol=1e-4)


def test_photometric_jitter_changes_image_only_and_stays_in_range():
    for channels in (3, 1):  # greyscale flows through, skipping saturation and hue
        example = _block_example(channels=channels)
        out = transforms.photometric_jitter(
            example, _seed(3), brightness=0.2, contrast=0.2, saturation=0.2, hue=0.05
        )
        image = out["image"].numpy()
        assert image.shape == (64, 64, channels)
        assert image.min() >= 0.0 and image.max() <= 1.0
        assert not np.allclose(image, example["image"])
        np.testing.assert_array_equal(out["label"], example["label"])


def test_normalize_matches_numpy():
    example = _block_example()
    mean, std = (0.1, 0.2, 0.3), (0.5, 0.25, 2.0)
    out = transforms.normalize(example, _seed(0), mean=mean, std=std)
    expected = (example["image"].numpy() - np.array(mean)) / np.array(std)
    np.testing.assert_allclose(out["image"], expected, rtol=1e-6, atol=1e-6)


def test_same_seed_same_draws_and_chain_shapes():
    cfg = data_config()
    cfg.crop_size = (40, 48)
    cfg.elastic = True
    cfg.mean, cfg.std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    chain = transforms.train_transforms(cfg)
    assert len(chain) == 7  # scale, elastic, crop, flip, jitter, normalise, pad
    run = functools.partial(transforms.apply, chain, _block_example())
    a, b, c = run(_seed(1)), run(_seed(1)), run(_seed(2))
    assert a["image"].shape == (40, 48, 3) and a["label"].shape == (40, 48)
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["label"], b["label"])
    assert not np.array_equal(a["image"], c["image"])


def test_pad_to_pads_bottom_right_with_255():
    example = _block_example(size=32, block=8)
    out = transforms.pad_to(example, _seed(0), height=40, width=36)
    label = out["label"].numpy()
    np.testing.assert_array_equal(label[:32, :32], example["label"])
    assert (label[32:] == IGNORE).all() and (label[:, 32:] == IGNORE).all()
    assert (out["image"].numpy()[32:] == 0).all()


def _plain_cfg(crop_size):
    """No random augmentation, identity normalisation: the image values pass through."""
    cfg = data_config()
    cfg.crop_size = crop_size
    cfg.min_scale = cfg.max_scale = 1.0
    cfg.hflip = False
    cfg.brightness = cfg.contrast = cfg.saturation = cfg.hue = 0.0
    cfg.mean, cfg.std = (0.0,), (1.0,)
    return cfg


def test_reflect_pad_matches_numpy_for_any_width():
    example = _block_example(size=8, block=2, channels=1)
    for rows, cols in [(3, 5), (20, 9)]:  # 20 > 8: reflects back and forth, like numpy
        out = transforms.reflect_pad(example, _seed(0), height=rows, width=cols)
        want = np.pad(example["label"].numpy(), ((rows, rows), (cols, cols)), mode="reflect")
        np.testing.assert_array_equal(out["label"], want)
        np.testing.assert_array_equal(out["image"][..., 0], (want / 10.0).astype(np.float32))
    one = {"image": tf.ones([1, 1, 1]), "label": tf.ones([1, 1], tf.int32)}
    assert transforms.reflect_pad(one, _seed(0), height=2, width=2)["label"].shape == (5, 5)


def test_valid_unet_training_tiles_score_every_labelled_pixel():
    """Over many draws the scored centre of the training tile reaches every pixel of the image,
    and each draw scores an unmirrored window of it (mirrored copies are context only)."""
    model = build_model({"name": "unet", "num_classes": 2, "base_width": 4, "depth": 2})
    tile = (56, 56)
    context, out = input_context(model, tile), output_size(model, tile)
    assert context == (20, 20) and out == (16, 16)
    height, width = 24, 28
    index = np.arange(height * width, dtype=np.float32).reshape(height, width)
    example = {
        "image": tf.constant(index[..., None]),
        "label": tf.ones([height, width], tf.int32),
    }

    def scored_indices(ctx, seed):
        chain = transforms.train_transforms(_plain_cfg(tile), context=ctx)
        ex = transforms.apply(chain, example, _seed(seed))
        image, label = ex["image"].numpy()[..., 0], ex["label"].numpy()
        m = (tile[0] - out[0]) // 2, (tile[1] - out[1]) // 2
        centre = (slice(m[0], m[0] + out[0]), slice(m[1], m[1] + out[1]))
        return image[centre], label[centre] != IGNORE

    seen = np.zeros(height * width, bool)
    for seed in range(100):
        values, scored = scored_indices(context, seed)
        assert scored.all()  # the scored centre lies inside the mirror-padded image
        r0, c0 = divmod(int(values[0, 0]), width)
        np.testing.assert_array_equal(values, index[r0 : r0 + out[0], c0 : c0 + out[1]])
        seen[values.astype(int).ravel()] = True
    assert seen.all(), f"scored coverage {seen.mean():.3f}"

    # Without the context (the old pipeline) the crop has one position: a fixed window.
    values, scored = scored_indices((0, 0), 0)
    assert scored.sum() < height * width / 2


def test_rotation_by_a_right_angle_and_integer_shift_match_numpy():
    example = _block_example(size=16, block=4, channels=1)
    label = example["label"].numpy()
    # The draw is u * max_degrees with u in [-1, 1]; scale max_degrees so it is exactly +-90.
    seed = _seed(5)
    u = tf.random.stateless_uniform(
        [], tf.random.experimental.stateless_fold_in(seed, 0), -1.0, 1.0
    ).numpy()
    out = transforms.random_rotate_shift(
        example, seed, max_degrees=90.0 / abs(float(u)), max_shift=0.0
    )
    # Output (r, c) shows source R(angle) (r, c) about the centre: +90 is a clockwise turn.
    want = np.rot90(label, -1 if u > 0 else 1)
    np.testing.assert_array_equal(out["label"], want)
    # A pure shift is a mirrored roll: output (r, c) shows source (r - dy, c - dx).
    out = transforms.random_rotate_shift(example, _seed(3), max_degrees=0.0, max_shift=6.0)
    dy, dx = (
        tf.random.stateless_uniform(
            [2], tf.random.experimental.stateless_fold_in(_seed(3), 1), -1.0, 1.0
        ).numpy()
        * 6.0
    )
    r = np.clip(np.round(np.arange(16)[:, None] - dy), -16, 31).astype(int)
    c = np.clip(np.round(np.arange(16)[None, :] - dx), -16, 31).astype(int)
    reflect = lambda v: np.minimum(np.mod(v, 30), 30 - np.mod(v, 30))
    np.testing.assert_array_equal(out["label"], label[reflect(r), reflect(c)])
    assert (out["label"].numpy() != IGNORE).all()  # mirrored, never a 255 band


def test_weight_map_rides_along_and_equals_the_hand_map():
    """Two 2 x 2 cells with a 1 px membrane gap; the pipeline's "weight" = eq. 2 by hand."""
    label = np.zeros((4, 7), np.int32)
    label[1:3, 1:3] = 1
    label[1:3, 4:6] = 1
    label[0, 6] = IGNORE
    cfg = _plain_cfg((4, 7))
    cfg.weight_map = True
    example = {"image": tf.zeros([4, 7, 1]), "label": tf.constant(label)}
    w = transforms.apply(transforms.train_transforms(cfg), example, _seed(0))["weight"].numpy()
    # 27 scored pixels: 8 cell, 19 membrane -> w_c = 27 / (2 * 8), 27 / (2 * 19).
    w_cell, w_bg = 27 / 16, 27 / 38
    border = lambda d1, d2: 10 * math.exp(-((d1 + d2) ** 2) / (2 * 5.0**2))
    assert w[1, 3] == pytest.approx(w_bg + border(1, 1), rel=1e-6)  # the gap between cells
    assert w[0, 0] == pytest.approx(w_bg + border(math.sqrt(2), math.sqrt(1 + 16)), rel=1e-6)
    assert w[0, 3] == pytest.approx(w_bg + border(math.sqrt(2), math.sqrt(2)), rel=1e-6)
    np.testing.assert_allclose(w[label == 1], w_cell, rtol=1e-6)
    assert w[0, 6] == 0  # ignored
    np.testing.assert_allclose(w, losses.binary_weight_map(label), rtol=1e-6)

    # Flip and crop move it with the label; the pad band weighs 0.
    cfg = _plain_cfg((6, 5))
    cfg.weight_map, cfg.hflip = True, True
    for i in range(4):
        out = transforms.apply(transforms.train_transforms(cfg), example, _seed(i))
        lab, wt = out["label"].numpy(), out["weight"].numpy()
        assert wt.shape == (6, 5) and (wt[4:] == 0).all() and (lab[4:] == IGNORE).all()
        np.testing.assert_allclose(wt[lab == 1], w_cell, rtol=1e-6)


def test_train_crop_pads_with_zero_after_normalisation_like_eval():
    """An image smaller than the crop: the training band is 0 in normalised units, as eval's."""
    cfg = _plain_cfg((40, 36))
    cfg.mean, cfg.std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    cfg.eval_pad_size = (40, 36)
    example = _block_example(size=32, block=8)
    train = transforms.apply(transforms.train_transforms(cfg), example, _seed(0))
    evaluated = transforms.apply(transforms.eval_transforms(cfg), example, _seed(0))
    np.testing.assert_array_equal(train["image"], evaluated["image"])
    np.testing.assert_array_equal(train["label"], evaluated["label"])
    assert (train["image"].numpy()[32:] == 0).all()
