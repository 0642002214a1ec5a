"""Visual reports: colours and blends against hand-computed pixels; PNGs of the right size that
actually show something. Host-only, no jax."""

import numpy as np
import pytest
from PIL import Image

from jaxseg import visualize

PALETTE = ((10, 20, 30), (200, 100, 0), (0, 255, 0))


def _png(path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


def test_colorize_maps_ids_to_palette_and_ignore_to_cream():
    label = np.array([[0, 1], [2, 255]])
    got = visualize.colorize(label, PALETTE)
    want = np.array([[[10, 20, 30], [200, 100, 0]], [[0, 255, 0], [224, 224, 192]]], np.uint8)
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, want)


def test_colorize_rejects_ids_outside_the_palette():
    with pytest.raises(ValueError, match=r"ids \[3\] outside"):
        visualize.colorize(np.array([[0, 3]]), PALETTE)


def test_overlay_blends_by_alpha_and_leaves_ignore_pixels_bare():
    image = np.array([[[100, 100, 100], [0, 50, 255]]], np.uint8)
    label = np.array([[1, 255]])
    got = visualize.overlay(image, label, PALETTE, alpha=0.25)
    # 0.75 * 100 + 0.25 * (200, 100, 0) = (125, 100, 75); the ignore pixel keeps the image.
    np.testing.assert_array_equal(got, [[[125, 100, 75], [0, 50, 255]]])
    # Greyscale input is broadcast to RGB: 0.5 * 9 + 0.5 * (10, 20, 30) = (9.5, 14.5, 19.5),
    # which rounds half to even.
    grey = visualize.overlay(np.full((1, 1), 9, np.uint8), np.zeros((1, 1), int), PALETTE, 0.5)
    np.testing.assert_array_equal(grey, [[[10, 14, 20]]])


def test_overlay_checks_sizes():
    with pytest.raises(ValueError, match="sizes differ"):
        visualize.overlay(np.zeros((2, 3, 3), np.uint8), np.zeros((3, 2), int), PALETTE)


def test_row_normalize_matches_hand_values_and_keeps_empty_rows_zero():
    cm = np.array([[3, 1, 0], [0, 0, 0], [2, 2, 4]])
    want = [[0.75, 0.25, 0.0], [0.0, 0.0, 0.0], [0.25, 0.25, 0.5]]
    np.testing.assert_allclose(visualize.row_normalize(cm), want)


def test_confusion_matrix_png(tmp_path):
    cm = np.array([[50, 5, 0], [10, 40, 0], [0, 0, 0]])
    path = visualize.save_confusion_matrix_png(cm, ["sky", "road", "car"], str(tmp_path / "cm.png"))
    pixels = _png(path)
    # figsize (4 + 0.45 * 3 + 1.5, 4 + 0.45 * 3) inches at 100 dpi.
    assert pixels.shape == (535, 685, 3)
    assert pixels.std() > 0
    with pytest.raises(ValueError, match="does not match 2 class names"):
        visualize.save_confusion_matrix_png(cm, ["a", "b"], str(tmp_path / "bad.png"))


def test_error_map_marks_wrong_pixels_only():
    image = np.array([[[100, 100, 100], [200, 0, 100], [30, 60, 90]]], np.uint8)
    truth = np.array([[1, 2, 255]])
    pred = np.array([[1, 0, 0]])  # right, wrong, ignored
    got = visualize.error_map(image, truth, pred)
    dim = visualize._ERROR_DIM
    np.testing.assert_array_equal(got[0, 1], visualize.ERROR_COLOR)
    np.testing.assert_array_equal(got[0, 0], [round(100 * dim)] * 3)  # grey(100) dimmed
    np.testing.assert_array_equal(got[0, 2], [round(60 * dim)] * 3)  # ignore is never wrong


def test_prediction_grid_png_has_four_panels_and_a_class_legend(tmp_path):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (16, 24, 3), np.uint8), rng.integers(0, 256, (20, 20), np.uint8)]
    truths = [rng.integers(0, 3, (16, 24)), np.full((20, 20), 255)]
    preds = [rng.integers(0, 3, (16, 24)), np.zeros((20, 20), int)]
    names = ["sky", "road", "car"]
    fig = visualize.prediction_grid_figure(images, truths, preds, PALETTE, names)
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == [
        *names,
        "ignore (255)",
        "wrong (errors panel)",
    ]
    colours = [
        tuple(np.rint(np.asarray(h.get_facecolor()[:3]) * 255)) for h in legend.legend_handles
    ]
    assert colours[:3] == [tuple(map(float, c)) for c in PALETTE]
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[:3] == ["image", "truth", "prediction"]
    acc = np.mean(truths[0] == preds[0])
    assert titles[3] == f"errors (pixel acc. {acc:.1%})" and titles[7] == "errors (pixel acc. -)"
    # Plain masks: the truth panel shows exactly the colourised labels.
    np.testing.assert_array_equal(
        fig.axes[1].get_images()[0].get_array(), visualize.colorize(truths[0], PALETTE)
    )
    path = visualize.save_prediction_grid(
        images, truths, preds, PALETTE, names, str(tmp_path / "g.png")
    )
    pixels = _png(path)
    # 2 rows x 4 panels, (12, 3 * 2 + legend) inches at 100 dpi: one legend row of 4, one of 1.
    assert pixels.shape == (600 + 90, 1200, 3)
    assert pixels.std() > 0
    with pytest.raises(ValueError, match="2 class names for 3"):
        visualize.prediction_grid_figure(images, truths, preds, PALETTE, names[:2])


def test_metric_series_sorts_and_lets_a_resumed_step_win():
    records = [
        {"step": 4, "split": "train", "loss": 2.0},
        {"step": 2, "split": "train", "loss": 3.0},
        {"step": 4, "split": "train", "loss": 1.5},  # a resumed run logging step 4 again
        {"step": 4, "split": "eval", "loss": 9.0},
    ]
    assert visualize.metric_series(records, "train", "loss") == ([2, 4], [3.0, 1.5])


def test_training_curves_png(tmp_path):
    records = [
        {"step": s, "split": "train", "loss": 2.0 / s, "learning_rate": 1e-3 * (1 - s / 10)}
        for s in range(1, 10)
    ] + [{"step": s, "split": "eval", "mean_iou": 0.1 * s} for s in (3, 6, 9)]
    path = visualize.save_training_curves(records, str(tmp_path / "c.png"))
    pixels = _png(path)
    assert pixels.shape == (400, 1500, 3)
    assert pixels.std() > 0
    # The three panels each drew a line: every third of the picture has non-white pixels.
    for third in np.array_split(pixels, 3, axis=1):
        assert (third < 200).any()


def test_training_curves_of_no_records_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="no metrics records"):
        visualize.save_training_curves([], str(tmp_path / "c.png"))
