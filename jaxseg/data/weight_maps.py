"""The U-Net paper's eq. 2 weight maps, precomputed once per ground-truth example.

"We pre-compute the weight map for each ground truth segmentation" (Ronneberger et al. 2015,
sec. 3): the map of every example of a split is computed once, with
`binary_weight_map` (below), when the split is first trained on, and stored beside the data
set's own files (`jaxseg.data.precomputed`: one ArrayRecord file per split, w0 and sigma,
index-aligned with the split's examples). Training then reads it like the example itself, and the
device augmentation warps it with the example's sampling grid (`jaxseg.data.augment.warp`),
nearest neighbour like the label.
"""

import os
from collections.abc import Callable

import ml_collections
import numpy as np
from array_record.python import array_record_data_source, array_record_module
from scipy import ndimage

from jaxseg.data import datasets, precomputed
from jaxseg.labels import IGNORE_ID


def unet_weight_map(
    instances: np.ndarray,
    *,
    w0: float = 10.0,
    sigma: float = 5.0,
    class_weights: tuple[float, float] | None = None,
    truncate: float = 6.0,
) -> np.ndarray:
    """The U-Net paper's pixel weight map (Ronneberger et al. 2015, eq. 2), on the host.

      w(x) = w_c(x) + w0 * exp(-(d1(x) + d2(x))^2 / (2 sigma^2))

    d1 / d2 are the distances from pixel x to the nearest / second-nearest cell, in pixels,
    measured as the Euclidean distance from x's centre to the nearest pixel centre of that cell
    (so 1 for a background pixel touching a cell). Choices the paper leaves open:
      - The border term is added only on background pixels (instance 0): it exists to make the
        network learn the thin background gaps separating touching cells, and a pixel inside a
        cell has d1 = 0 to its own cell, not a gap. It needs two cells; with fewer it is 0.
      - w_c balances the two classes (background, cell). By default from this map's own
        frequencies: w_c = num_pixels / (num_classes_present * class_pixels), so w_c averages to
        1 over the image. Pass `class_weights=(background, cell)` to use data-set-wide values.
      - The distance to a cell is computed only within ceil(truncate * sigma) pixels of it (a
        window around the cell instead of a whole-image distance transform per cell, which is
        slow with hundreds of cells). Beyond that the border term is below
        w0 * exp(-truncate^2 / 2) (1.5e-7 at the defaults) and is set to 0.

    Args:
      instances: [H, W] int, 0 = background, k > 0 = cell k (ids need not be contiguous).
      w0: border weight (paper: 10).
      sigma: border width in pixels (paper: about 5).
      class_weights: optional (w_c background, w_c cell); see above.
      truncate: window radius in units of sigma.

    Returns:
      [H, W] float32 weight map, for `jaxseg.losses.cross_entropy(pixel_weights=...)`.
    """
    instances = np.asarray(instances)
    if instances.ndim != 2 or not np.issubdtype(instances.dtype, np.integer):
        raise ValueError(
            f"instances must be an [H, W] integer instance map, got shape {instances.shape} "
            f"and dtype {instances.dtype}"
        )
    if (instances < 0).any():
        raise ValueError("instances must be >= 0 (0 = background, k > 0 = cell k)")

    is_cell = instances > 0
    if class_weights is None:
        counts = np.array([np.sum(~is_cell), np.sum(is_cell)], np.float64)
        present = counts > 0
        w_class = np.divide(instances.size, present.sum() * counts, out=np.ones(2), where=present)
    else:
        w_class = np.asarray(class_weights, np.float64)
    weights = np.where(is_cell, w_class[1], w_class[0])

    radius = int(np.ceil(truncate * sigma))
    height, width = instances.shape
    d1 = np.full(instances.shape, np.inf)
    d2 = np.full(instances.shape, np.inf)
    # find_objects gives each cell's bounding box in one pass; entry k - 1 is cell k.
    for index, box in enumerate(ndimage.find_objects(instances)):
        if box is None:
            continue
        rows = slice(max(box[0].start - radius, 0), min(box[0].stop + radius, height))
        cols = slice(max(box[1].start - radius, 0), min(box[1].stop + radius, width))
        # The window holds the whole cell, so distances inside it are exact.
        dist = ndimage.distance_transform_edt(instances[rows, cols] != index + 1)
        near, second = d1[rows, cols], d2[rows, cols]
        d2[rows, cols] = np.minimum(second, np.maximum(near, dist))
        d1[rows, cols] = np.minimum(near, dist)

    border = w0 * np.exp(-((d1 + d2) ** 2) / (2.0 * sigma**2))
    return (weights + np.where(is_cell, 0.0, border)).astype(np.float32)


def binary_weight_map(
    label: np.ndarray, *, w0: float = 10.0, sigma: float = 5.0, cell_class: int = 1
) -> np.ndarray:
    """`unet_weight_map` of a binary class-id label map, as the input pipeline computes it.

    Cells are the 4-connected components of `label == cell_class` (ISBI 2012: class 1 = cell,
    class 0 = membrane); everything else is background for the distances. w_c balances the two
    classes' frequencies among the scored (non-255) pixels of this map, so it averages to 1 over
    them: w_c = scored / (2 * pixels of class c) (1 for a class that is absent). Ignored pixels
    get weight 0 (the loss skips them anyway).

    Args:
      label: [H, W] int class ids in {0, 1}, 255 = ignore.
      w0, sigma: the paper's border weight and width (10 and 5 px).
      cell_class: the class whose connected components are the cells.

    Returns:
      [H, W] float32 weights.
    """
    label = np.asarray(label)
    scored = label != IGNORE_ID
    is_cell = label == cell_class
    instances, _ = ndimage.label(is_cell)  # default structure: 4-connectivity in 2-D
    counts = np.array([np.sum(scored & ~is_cell), np.sum(is_cell)], np.float64)
    present = counts > 0
    w_class = np.divide(scored.sum(), present.sum() * counts, out=np.ones(2), where=present)
    weights = unet_weight_map(
        instances, w0=w0, sigma=sigma, class_weights=(float(w_class[0]), float(w_class[1]))
    )
    return np.where(scored, weights, 0.0).astype(np.float32)


class WeightMaps:
    """Sequence of float32 [H, W] maps, index-aligned with the split's examples. A record is
    int32 (H, W) followed by the H * W float32 weights. Picklable (loader workers)."""

    def __init__(self, path: str):
        self.path = path
        self._source = array_record_data_source.ArrayRecordDataSource(path)

    def __len__(self) -> int:
        return len(self._source)

    def __getstate__(self):
        return {"path": self.path}

    def __setstate__(self, state):
        self.__init__(state["path"])

    def __getitem__(self, index: int) -> np.ndarray:
        record = self._source[int(index)]
        height, width = np.frombuffer(record[:8], np.int32)
        return np.frombuffer(record[8:], np.float32).reshape(height, width)


def open_weight_maps(
    data_cfg: ml_collections.ConfigDict,
    spec: datasets.DatasetSpec,
    split: str,
    label_of: Callable[[int], np.ndarray],
    count: int,
    *,
    w0: float,
    sigma: float,
) -> WeightMaps:
    """The maps of the `count` examples of `split`, computing them first if this data set,
    split, w0 and sigma have none yet (process 0 of a job writes; the file is written under a
    temporary name and renamed, so a killed build leaves nothing half-done).

    Args:
      data_cfg, spec: `config.data` and its DatasetSpec (where the data set lives).
      split: the split as opened (tfds slicing allowed).
      label_of: example index -> its decoded class-id label [H, W] (255 = ignore).
      count: the split's number of examples.
      w0, sigma: eq. 2's border weight and width.
    """
    name = f"{split}-w0_{w0:g}-sigma_{sigma:g}.array_record"
    path = precomputed.path_beside(data_cfg, spec, "weight_maps", name)

    def write(tmp) -> None:
        writer = array_record_module.ArrayRecordWriter(os.fspath(tmp), "group_size:1,uncompressed")
        for index in range(count):
            weight = binary_weight_map(label_of(index), w0=w0, sigma=sigma)
            header = np.asarray(weight.shape, np.int32).tobytes()
            writer.write(header + np.ascontiguousarray(weight, np.float32).tobytes())
        writer.close()

    precomputed.computed_once(path, write, f"weight maps of {split}")
    maps = WeightMaps(os.fspath(path))
    if len(maps) != count:
        raise ValueError(
            f"{path} holds {len(maps)} weight maps but split {split!r} has {count} "
            "examples; delete it to have it recomputed"
        )
    return maps
