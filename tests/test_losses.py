"""Losses against hand-computed values; the U-Net weight map against eq. 2 worked by hand."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxseg import losses

LN2, LN43 = math.log(2.0), math.log(4.0 / 3.0)


def hand_batch():
    """One image of 1 x 3 pixels, C = 2, whose per-pixel losses are known by hand:
    pixel 0: logits (0, ln 3), label 1 -> p = 3/4, loss ln(4/3);
    pixel 1: logits (0, 0),    label 0 -> p = 1/2, loss ln 2;
    pixel 2: logits (5, -5),   label 255 -> ignored."""
    logits = jnp.array([[[[0.0, math.log(3.0)], [0.0, 0.0], [5.0, -5.0]]]])
    labels = jnp.array([[[1, 0, 255]]], jnp.int32)
    return logits, labels


@pytest.fixture(scope="module")
def ce():
    return jax.jit(losses.cross_entropy, static_argnames="normalize")


def test_cross_entropy_mean_and_sum_by_hand(ce):
    logits, labels = hand_batch()
    loss, normalizer = ce(logits, labels)
    assert loss == pytest.approx((LN43 + LN2) / 2, rel=1e-6)
    assert normalizer == 2  # scored pixels
    loss, normalizer = ce(logits, labels, normalize=False)
    assert loss == pytest.approx(LN43 + LN2, rel=1e-6)  # N = 1: the plain pixel sum
    assert normalizer == 1


def test_cross_entropy_unnormalized_divides_by_valid_images(ce):
    logits, labels = hand_batch()
    # Image 2 = image 1 with the labels swapped on its two scored pixels:
    # logits (0, ln 3) label 0 -> ln 4; logits (0, 0) label 1 -> ln 2.
    logits2 = jnp.concatenate([logits, logits])
    labels2 = jnp.concatenate([labels, jnp.array([[[0, 1, 255]]], jnp.int32)])
    loss, normalizer = ce(logits2, labels2, normalize=False)
    assert loss == pytest.approx((LN43 + LN2 + math.log(4.0) + LN2) / 2, rel=1e-6)
    assert normalizer == 2
    # A padding example adds nothing and does not count as an image.
    loss, normalizer = ce(logits2, labels2, valid=jnp.array([True, False]), normalize=False)
    assert loss == pytest.approx(LN43 + LN2, rel=1e-6)
    assert normalizer == 1


def test_cross_entropy_weights_by_hand(ce):
    logits, labels = hand_batch()
    # Class 0 weighs 2: weighted mean = (1 * ln(4/3) + 2 * ln 2) / (1 + 2).
    loss, normalizer = ce(logits, labels, class_weights=jnp.array([2.0, 1.0]))
    assert loss == pytest.approx((LN43 + 2 * LN2) / 3, rel=1e-6)
    assert normalizer == pytest.approx(3.0)
    # Pixel weights multiply the class weights; the ignored pixel's weight 100 is irrelevant.
    pixel_weights = jnp.array([[[3.0, 0.5, 100.0]]])
    loss, normalizer = ce(
        logits, labels, class_weights=jnp.array([2.0, 1.0]), pixel_weights=pixel_weights
    )
    assert loss == pytest.approx((3 * LN43 + 1 * LN2) / 4, rel=1e-6)
    assert normalizer == pytest.approx(4.0)
    loss, _ = ce(logits, labels, pixel_weights=pixel_weights, normalize=False)
    assert loss == pytest.approx(3 * LN43 + 0.5 * LN2, rel=1e-6)


def test_cross_entropy_bfloat16_logits_computed_in_float32(ce):
    logits, labels = hand_batch()
    loss, _ = ce(logits.astype(jnp.bfloat16), labels)
    assert loss.dtype == jnp.float32
    # ln 3 is not exact in bfloat16; the float32 loss on the rounded logits is the reference.
    reference, _ = ce(logits.astype(jnp.bfloat16).astype(jnp.float32), labels)
    assert loss == pytest.approx(float(reference), rel=1e-6)


def test_cross_entropy_parts_combine_to_the_whole(ce):
    rng = np.random.default_rng(0)
    logits = jnp.asarray(rng.normal(size=(4, 3, 3, 5)), jnp.float32)
    labels = jnp.asarray(rng.choice([0, 1, 2, 3, 4, 255], size=(4, 3, 3)), jnp.int32)
    weights = jnp.asarray(rng.uniform(0.5, 2.0, size=(4, 3, 3)), jnp.float32)
    for normalize in (True, False):
        whole, _ = ce(logits, labels, pixel_weights=weights, normalize=normalize)
        parts = [
            ce(logits[s], labels[s], pixel_weights=weights[s], normalize=normalize)
            for s in (slice(0, 2), slice(2, 4))
        ]
        combined = sum(loss * n for loss, n in parts) / sum(n for _, n in parts)
        assert float(combined) == pytest.approx(float(whole), rel=1e-5), normalize


@pytest.mark.parametrize("normalize", [True, False])
def test_cross_entropy_gradient_is_exactly_zero_at_ignored_pixels(normalize):
    logits, labels = hand_batch()
    grad = jax.jit(jax.grad(lambda x: losses.cross_entropy(x, labels, normalize=normalize)[0]))(
        logits
    )
    assert np.all(np.asarray(grad[0, 0, 2]) == 0.0)
    # d loss / d logits = (softmax - onehot) / normalizer at a scored pixel.
    scale = 2.0 if normalize else 1.0
    np.testing.assert_allclose(grad[0, 0, 0], np.array([0.25, -0.25]) / scale, rtol=1e-6)
    np.testing.assert_allclose(grad[0, 0, 1], np.array([-0.5, 0.5]) / scale, rtol=1e-6)


def test_cross_entropy_with_nothing_scored_is_zero_with_finite_gradient(ce):
    logits, _ = hand_batch()
    labels = jnp.full((1, 1, 3), 255, jnp.int32)
    loss, normalizer = ce(logits, labels)
    assert (float(loss), float(normalizer)) == (0.0, 0.0)
    grad = jax.jit(jax.grad(lambda x: losses.cross_entropy(x, labels)[0]))(logits)
    assert np.all(np.asarray(grad) == 0.0)


def test_cross_entropy_rejects_mismatched_shapes():
    logits, labels = hand_batch()
    # The checks run while tracing, so eval_shape reaches them without computing anything.
    with pytest.raises(ValueError, match=r"labels \(1, 3\)"):
        jax.eval_shape(losses.cross_entropy, logits, labels[0])
    with pytest.raises(ValueError, match="class_weights"):
        jax.eval_shape(
            lambda x, y: losses.cross_entropy(x, y, class_weights=jnp.ones(3)), logits, labels
        )


@pytest.fixture(scope="module")
def dice():
    return jax.jit(losses.dice_loss, static_argnames=("smooth",))


def dice_batch():
    """1 x 3 pixels, C = 3, probabilities chosen exactly (logits = log p):
    pixel 0: p = (1/2, 1/4, 1/4), label 0; pixel 1: p = (1/4, 1/2, 1/4), label 1;
    pixel 2: ignored. Class 2 is absent from the labels."""
    probs = np.array([[0.5, 0.25, 0.25], [0.25, 0.5, 0.25], [0.9, 0.05, 0.05]])
    return jnp.log(jnp.asarray(probs[None, None], jnp.float32)), jnp.array([[[0, 1, 255]]])


def test_dice_by_hand(dice):
    logits, labels = dice_batch()
    # Class 0: (2 * 1/2 + 1) / (3/4 + 1 + 1) = 8/11; class 1 likewise; class 2 (absent):
    # (0 + 1) / (1/2 + 0 + 1) = 2/3.
    loss = dice(logits, labels, smooth=1.0)
    assert float(loss) == pytest.approx(1 - (8 / 11 + 8 / 11 + 2 / 3) / 3, rel=1e-6)
    # A padding example changes nothing.
    both = dice(
        jnp.concatenate([logits, -logits]),
        jnp.concatenate([labels, labels]),
        valid=jnp.array([True, False]),
        smooth=1.0,
    )
    assert float(both) == pytest.approx(1 - (8 / 11 + 8 / 11 + 2 / 3) / 3, rel=1e-6)


def test_dice_gradient_is_zero_at_ignored_pixels():
    logits, labels = dice_batch()
    grad = jax.jit(jax.grad(lambda x: losses.dice_loss(x, labels)))(logits)
    assert np.all(np.asarray(grad[0, 0, 2]) == 0.0)
    assert np.all(np.asarray(grad[0, 0, :2]) != 0.0)


# Two 3 x 3 cells in a 7 x 12 map, separated by a 2-pixel gap (columns 4 and 5).
