"""The U-Net paper's eq. 2 weight map (host side, computed once per ground-truth example)."""

import math

import numpy as np
import pytest
from scipy import ndimage

from jaxseg.data import weight_maps

TWO_CELLS = np.zeros((7, 12), np.int32)
TWO_CELLS[2:5, 1:4] = 1
TWO_CELLS[2:5, 6:9] = 2


def test_weight_map_two_cells_by_hand():
    w = weight_maps.unet_weight_map(TWO_CELLS, w0=10.0, sigma=5.0)
    assert w.dtype == np.float32 and w.shape == TWO_CELLS.shape
    # w_c: 84 pixels, 18 in cells, 66 background -> 84 / (2 * 18) and 84 / (2 * 66).
    w_cell, w_bg = 84 / 36, 84 / 132
    # In the gap at (3, 4): d1 = 1 (cell 1 at column 3), d2 = 2 (cell 2 at column 6).
    assert w[3, 4] == pytest.approx(w_bg + 10 * math.exp(-((1 + 2) ** 2) / (2 * 25)), rel=1e-6)
    assert w[3, 5] == pytest.approx(w[3, 4], rel=1e-6)  # mirror image
    # Corner (0, 0): nearest pixels (2, 1) of cell 1 and (2, 6) of cell 2.
    d1, d2 = math.sqrt(2**2 + 1**2), math.sqrt(2**2 + 6**2)
    assert w[0, 0] == pytest.approx(w_bg + 10 * math.exp(-((d1 + d2) ** 2) / 50), rel=1e-6)
    # Inside a cell: class weight only, no border term.
    np.testing.assert_allclose(w[TWO_CELLS > 0], w_cell, rtol=1e-6)
    # The gap weighs most: it is what the border term is for.
    assert w[3, 4] == w[TWO_CELLS == 0].max()


def test_weight_map_needs_two_cells_and_takes_fixed_class_weights():
    one_cell = np.where(TWO_CELLS == 2, 0, TWO_CELLS)
    w = weight_maps.unet_weight_map(one_cell, class_weights=(1.0, 3.0))
    np.testing.assert_array_equal(w, np.where(one_cell > 0, 3.0, 1.0).astype(np.float32))
    np.testing.assert_array_equal(weight_maps.unet_weight_map(np.zeros((4, 4), np.int64)), 1.0)


def test_weight_map_window_matches_whole_image_oracle():
    """The windowed distances agree with a whole-image distance transform per cell."""
    rng = np.random.default_rng(0)
    instances = np.zeros((60, 70), np.int32)
    for k in (3, 5, 9, 12, 20):  # non-contiguous ids
        r, c = rng.integers(0, 50), rng.integers(0, 60)
        instances[r : r + rng.integers(2, 10), c : c + rng.integers(2, 10)] = k
    sigma, w0 = 2.0, 10.0
    w = weight_maps.unet_weight_map(instances, w0=w0, sigma=sigma)

    ids = [k for k in np.unique(instances) if k > 0]
    dists = np.sort([ndimage.distance_transform_edt(instances != k) for k in ids], axis=0)
    border = w0 * np.exp(-((dists[0] + dists[1]) ** 2) / (2 * sigma**2))
    counts = np.array([(instances == 0).sum(), (instances > 0).sum()])
    w_c = np.where(
        instances > 0, instances.size / (2 * counts[1]), instances.size / (2 * counts[0])
    )
    expected = w_c + np.where(instances > 0, 0.0, border)
    np.testing.assert_allclose(w, expected, rtol=1e-6, atol=w0 * math.exp(-(6.0**2) / 2))


def test_weight_map_rejects_non_instance_maps():
    with pytest.raises(ValueError, match="integer instance map"):
        weight_maps.unet_weight_map(np.zeros((2, 4, 4), np.int32))
    with pytest.raises(ValueError, match=">= 0"):
        weight_maps.unet_weight_map(-np.ones((4, 4), np.int32))
