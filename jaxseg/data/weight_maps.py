"""The U-Net paper's eq. 2 weight maps, precomputed once per ground-truth example.

"We pre-compute the weight map for each ground truth segmentation" (Ronneberger et al. 2015,
sec. 3): the map of every example of a split is computed once, with
`jaxseg.losses.binary_weight_map`, when the split is first trained on, and stored beside the data
set's own files (`jaxseg.data.precomputed`: one ArrayRecord file per split, w0 and sigma,
index-aligned with the split's examples). Training then reads it like the example itself, and the
device augmentation warps it with the example's sampling grid (`jaxseg.data.augment.warp`), nearest neighbour like the label.
"""

from collections.abc import Callable

import ml_collections
import numpy as np
from array_record.python import array_record_data_source, array_record_module

from jaxseg import losses
from jaxseg.data import datasets, precomputed


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

    def write(tmp: str) -> None:
        writer = array_record_module.ArrayRecordWriter(tmp, "group_size:1,uncompressed")
        for index in range(count):
            weight = losses.binary_weight_map(label_of(index), w0=w0, sigma=sigma)
            header = np.asarray(weight.shape, np.int32).tobytes()
            writer.write(header + np.ascontiguousarray(weight, np.float32).tobytes())
        writer.close()

    precomputed.computed_once(path, write, f"weight maps of {split}")
    maps = WeightMaps(path)
    if len(maps) != count:
        raise ValueError(
            f"{path} holds {len(maps)} weight maps but split {split!r} has {count} "
            "examples; delete it to have it recomputed"
        )
    return maps
