"""Confusion matrix and FCN scores against independent numpy oracles and hand-computed values."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jaxseg import metrics

NUM_CLASSES = 5
SHAPE = (8, 6, 5)  # [N, H, W]; N = 8 so the batch splits over the 8 fake devices


@pytest.fixture(scope="module")
def cm_fn():
    """One compiled confusion matrix for the whole module (inputs always have SHAPE)."""
    return jax.jit(metrics.confusion_matrix, static_argnames="num_classes")


def random_batch(seed):
    """Labels with ignore pixels, class 3 absent from truth, and out-of-range ids 7 and -1."""
    rng = np.random.default_rng(seed)
    labels = rng.choice(np.array([0, 1, 2, 4, 255, 7, -1], np.int32), size=SHAPE)
    preds = rng.integers(0, NUM_CLASSES, size=SHAPE).astype(np.int32)
    valid = np.ones(SHAPE[0], bool)
    valid[[2, 5]] = False
    return labels, preds, valid


def oracle_confusion(labels, preds, valid):
    """Pixel-by-pixel count, skipping padding examples and labels outside [0, C)."""
    cm = np.zeros((NUM_CLASSES, NUM_CLASSES), np.int64)
    for n in range(labels.shape[0]):
        if not valid[n]:
            continue
        for t, p in zip(labels[n].ravel(), preds[n].ravel(), strict=True):
            if 0 <= t < NUM_CLASSES:
                cm[t, p] += 1
    return cm


def oracle_scores(cm):
    """FCN section 5 with explicit per-class loops; skipped classes are simply not appended."""
    n = cm.shape[0]
    t = [sum(cm[i, j] for j in range(n)) for i in range(n)]
    p = [sum(cm[j, i] for j in range(n)) for i in range(n)]
    accs, ious, fw = [], [], 0.0
    for i in range(n):
        if t[i] > 0:
            accs.append(cm[i, i] / t[i])
        union = t[i] + p[i] - cm[i, i]
        if union > 0:
            ious.append(cm[i, i] / union)
            fw += t[i] * cm[i, i] / union
    return {
        "pixel_accuracy": sum(cm[i, i] for i in range(n)) / sum(t),
        "mean_accuracy": sum(accs) / len(accs),
        "mean_iou": sum(ious) / len(ious),
        "frequency_weighted_iou": fw / sum(t),
    }


def test_confusion_matrix_matches_oracle(cm_fn):
    labels, preds, valid = random_batch(0)
    expected = oracle_confusion(labels, preds, valid)
    cm = cm_fn(labels, preds, num_classes=NUM_CLASSES, valid=valid)
    assert cm.dtype == jnp.int32 and cm.shape == (NUM_CLASSES, NUM_CLASSES)
    np.testing.assert_array_equal(np.asarray(cm), expected)
    # The out-of-range ids were dropped, not folded into other cells: every count is accounted
    # for by a truly scored pixel.
    scored = valid[:, None, None] & (labels >= 0) & (labels < NUM_CLASSES)
    assert int(cm.sum()) == int(scored.sum())
    assert int(cm[3].sum()) == 0  # class 3 never appears in truth


def test_confusion_matrix_without_valid_counts_every_example(cm_fn):
    labels, preds, _ = random_batch(1)
    cm = cm_fn(labels, preds, num_classes=NUM_CLASSES)
    np.testing.assert_array_equal(
        np.asarray(cm), oracle_confusion(labels, preds, np.ones(SHAPE[0], bool))
    )


def test_confusion_matrix_uint8_labels_do_not_wrap(cm_fn):
    # C * label overflows uint8 for C = 21; the index must be formed in int32.
    labels = np.array([[[20, 255], [3, 20]]], np.uint8)
    preds = np.array([[[19, 0], [3, 20]]], np.int32)
    cm = np.asarray(cm_fn(labels, preds, num_classes=21))
    expected = np.zeros((21, 21), np.int64)
    expected[20, 19] = expected[3, 3] = expected[20, 20] = 1
    np.testing.assert_array_equal(cm, expected)


def test_sharded_confusion_matrix_equals_unsharded(cm_fn):
    assert jax.device_count() == 8, "tests/conftest.py should provide 8 fake CPU devices"
    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    sharding = NamedSharding(mesh, P("data"))
    labels, preds, valid = random_batch(2)
    sharded = [jax.device_put(x, sharding) for x in (labels, preds, valid)]
    assert len(sharded[0].sharding.device_set) == 8
    cm_sharded = cm_fn(*sharded[:2], num_classes=NUM_CLASSES, valid=sharded[2])
    cm_single = cm_fn(labels, preds, num_classes=NUM_CLASSES, valid=valid)
    np.testing.assert_array_equal(np.asarray(cm_sharded), np.asarray(cm_single))
    np.testing.assert_array_equal(np.asarray(cm_sharded), oracle_confusion(labels, preds, valid))


def test_accumulate_sums_into_int64_beyond_int32_range():
    step = np.full((2, 2), 2**30, np.int32)
    total = None
    for _ in range(4):
        total = metrics.accumulate(total, jnp.asarray(step))
    assert total.dtype == np.int64
    np.testing.assert_array_equal(total, np.full((2, 2), 2**32, np.int64))
    with pytest.raises(ValueError, match=r"cannot add a \(3, 3\)"):
        metrics.accumulate(total, np.zeros((3, 3), np.int32))


def test_compute_metrics_hand_values():
    # Class 0: 3 right, 1 taken for class 2. Class 1: 2 right. Class 2: never in truth but
    # predicted once. Class 3: absent from truth and prediction.
    cm = np.array(
        [
            [3, 0, 1, 0],
            [0, 2, 0, 0],
            [0, 0, 0, 0],
            [0, 0, 0, 0],
        ]
    )
    m = metrics.compute_metrics(cm, class_names=["sky", "road", "car", "bike"])
    assert m["pixel_accuracy"] == pytest.approx(5 / 6)
    assert m["mean_accuracy"] == pytest.approx((3 / 4 + 1) / 2)  # classes in truth only
    # IoU: sky 3 / (4 + 3 - 3), road 1, car 0 / (0 + 1 - 0); bike left out.
    assert m["mean_iou"] == pytest.approx((3 / 4 + 1 + 0) / 3)
    assert m["frequency_weighted_iou"] == pytest.approx((4 * 3 / 4 + 2 * 1) / 6)
    assert m["num_pixels"] == 6
    sky, car, bike = m["per_class"]["sky"], m["per_class"]["car"], m["per_class"]["bike"]
    assert sky["dice"] == pytest.approx(2 * 3 / (4 + 3))
    assert sky["accuracy"] == pytest.approx(3 / 4)
    assert (car["iou"], car["dice"], car["accuracy"]) == (0.0, 0.0, None)
    assert car["predicted_pixels"] == 1 and car["truth_pixels"] == 0
    assert (bike["iou"], bike["dice"], bike["accuracy"]) == (None, None, None)


def test_compute_metrics_matches_oracle_on_random_data(cm_fn):
    total = None
    for seed in range(3):
        labels, preds, valid = random_batch(10 + seed)
        # Predictions that are mostly right, so the scores are not all near chance.
        preds = np.where((labels >= 0) & (labels < NUM_CLASSES) & (preds % 2 == 0), labels, preds)
        total = metrics.accumulate(
            total, cm_fn(labels, preds, num_classes=NUM_CLASSES, valid=valid)
        )
    m = metrics.compute_metrics(total)
    expected = oracle_scores(total)
    for key, value in expected.items():
        assert m[key] == pytest.approx(value, rel=1e-12), key
        assert np.isfinite(m[key])
    # Class 3 is absent from truth but predicted: IoU 0, accuracy undefined.
    assert m["per_class"]["3"]["iou"] == 0.0 and m["per_class"]["3"]["accuracy"] is None


@pytest.mark.parametrize(
    ("cm", "class_names", "message"),
    [
        (np.zeros((3, 3), np.int64), None, "empty"),
        (np.ones((2, 3), np.int64), None, "square"),
        (np.ones((2, 2), np.float32), None, "integer"),
        (np.ones((2, 2), np.int64), ["a"], "1 class names for a 2-class"),
    ],
)
def test_compute_metrics_rejects_bad_input(cm, class_names, message):
    with pytest.raises(ValueError, match=message):
        metrics.compute_metrics(cm, class_names)


# ISBI 2012 foreground-restricted Rand error: class 1 = cell, class 0 = membrane.


def test_rand_statistics_hand_values():
    # Two 2-px truth cells; the prediction merges them: F = 2*8 / (8 + 16).
    merged = metrics.rand_error(
        metrics.rand_statistics(np.array([[[1, 1, 0, 1, 1]]]), np.ones((1, 1, 5), int))
    )
    assert merged["rand_f_score"] == pytest.approx(2 / 3)
    assert merged["rand_error"] == pytest.approx(1 / 3)
    assert (merged["rand_split"], merged["rand_merge"]) == (1.0, 0.5)
    # One truth pixel predicted as membrane is a singleton: n_ij^2 = 1 + 4, +1; a^2 = 8;
    # b^2 = 1 + 4, +1 -> F = 2 * 6 / (8 + 6) = 6/7.
    split = metrics.rand_statistics(np.array([[[1, 1, 0, 1, 1]]]), np.array([[[0, 1, 0, 1, 1]]]))
    np.testing.assert_array_equal(split, [6, 8, 6])
    assert metrics.rand_error(split)["rand_f_score"] == pytest.approx(6 / 7)
    # Diagonal neighbours are two cells (4-connectivity, as Fiji's), merged by the prediction.
    diag = metrics.rand_statistics(np.array([[[1, 0], [0, 1]]]), np.ones((1, 2, 2), int))
    np.testing.assert_array_equal(diag, [2, 2, 4])
    # A perfect prediction scores 0; membrane-only truth gives no score at all.
    truth = np.array([[[1, 1, 0, 1], [0, 0, 0, 1]]])
    assert metrics.rand_error(metrics.rand_statistics(truth, truth))["rand_error"] == 0.0
    assert metrics.rand_error(metrics.rand_statistics(0 * truth, truth))["rand_error"] is None


def _fiji_rand_f_score(labels, preds):
    """Oracle after Fiji's RandError.foregroundRestrictedStatsN2 on a stack whose per-slice
    4-connected components get distinct ids: normalised contingency p_ij over all pixels,
    rows = truth (0 = membrane, pruned), columns = prediction (0 = membrane: singletons)."""
    four = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]])
    truth, pred = np.zeros(labels.shape, int), np.zeros(labels.shape, int)
    t_next = p_next = 0
    for k in range(labels.shape[0]):
        t, nt = scipy.ndimage.label(labels[k] == 1, structure=four)
        p, npred = scipy.ndimage.label((preds[k] == 1) & (labels[k] != 255), structure=four)
        truth[k] = np.where(t > 0, t + t_next, 0)
        pred[k] = np.where(p > 0, p + p_next, 0)
        t_next, p_next = t_next + nt, p_next + npred
    n = np.count_nonzero(truth)
    pij = np.zeros((t_next + 1, p_next + 1))
    np.add.at(pij, (truth.ravel(), pred.ravel()), 1.0)
    pij /= n
    a = pij[1:, :].sum(axis=1)
    b = pij[1:, 1:].sum(axis=0)
    aux = pij[1:, 0].sum()
    sum_a2 = np.sum(a**2)
    sum_b2 = np.sum(b**2) + aux / n
    sum_ab2 = np.sum(pij[1:, 1:] ** 2) + aux / n
    precision, recall = sum_ab2 / sum_b2, sum_ab2 / sum_a2
    return 2 * precision * recall / (precision + recall)


def test_rand_statistics_sum_over_slices_to_the_fiji_oracle():
    rng = np.random.default_rng(0)
    # Membrane-like truth: a random grid of walls; predictions flip a few pixels.
    labels = np.ones((4, 24, 20), np.int32)
    for k in range(4):
        labels[k, rng.choice(24, 4, replace=False), :] = 0
        labels[k, :, rng.choice(20, 3, replace=False)] = 0
    preds = np.where(rng.random(labels.shape) < 0.08, 1 - labels, labels)
    labels[0, :3, :3] = 255  # ignored pixels count for neither side
    valid = np.array([True, True, True, False])
    total = np.zeros(3, np.int64)
    for k in range(0, 4, 2):  # two batches of two: the statistics add up
        total += metrics.rand_statistics(labels[k : k + 2], preds[k : k + 2], valid[k : k + 2])
    want = _fiji_rand_f_score(labels[:3], preds[:3])
    assert metrics.rand_error(total)["rand_f_score"] == pytest.approx(want, rel=1e-12)
    assert 0.05 < 1 - want < 0.95  # a case with both splits and merges
