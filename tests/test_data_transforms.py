"""Joint transforms keep image and mask aligned, pad with 255, and match numpy oracles."""

import functools

import numpy as np
import pytest
import scipy.ndimage
import tensorflow as tf

from configs.default import data_config
from jaxseg.data import transforms

IGNORE = transforms.IGNORE_ID


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
    assert len(chain) == 6  # scale, elastic, crop, flip, jitter, normalise
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
