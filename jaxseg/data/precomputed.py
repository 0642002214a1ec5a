"""Files computed once per split and stored beside the data set's own files.

Two things are derived from a split's examples once and then read like the examples themselves:
the U-Net paper's eq. 2 weight maps (`jaxseg.data.weight_maps`) and the examples' sizes, which
the training loader needs to group examples of similar size when `config.data.pad_buckets` > 1
(`example_sizes`). Both live under the tfds builder's data dir, keyed by the split (and their
parameters), so every run on that copy of the data set shares them.

Writing: process 0 of a job computes the file under a temporary name and renames it, so a killed
computation leaves nothing half-done; the other processes wait at a barrier, then read it.
"""

import os
import re
from collections.abc import Callable

import jax
import ml_collections
import numpy as np
from etils import epath
from jax.experimental import multihost_utils

from jaxseg.data import datasets


def path_beside(
    data_cfg: ml_collections.ConfigDict, spec: datasets.DatasetSpec, kind: str, name: str
) -> epath.Path:
    """`<the data set's data dir>/<kind>/<name>`, `name`'s characters made file-name safe (a
    gs:// data dir included: through etils.epath)."""
    builder = spec.make_builder(data_cfg)
    slug = re.sub(r"[^A-Za-z0-9_.%-]+", "_", name)
    return epath.Path(builder.data_dir) / kind / slug


def computed_once(path: epath.Path, write: Callable[[epath.Path], None], what: str) -> epath.Path:
    """Makes sure `path` exists: process 0 calls `write(temporary path)` if it does not, and
    renames the result to `path`; every process returns once it is there. `what` names the
    file in the barrier."""
    path = epath.Path(path)
    if jax.process_index() == 0 and not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.parent / f"{path.name}.tmp{os.getpid()}"
        try:
            write(tmp)
            tmp.rename(path)
        finally:
            if tmp.exists():
                tmp.unlink()
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(f"jaxseg: {what} written")
    return path


def example_sizes(
    data_cfg: ml_collections.ConfigDict,
    spec: datasets.DatasetSpec,
    split: str,
    size_of: Callable[[int], tuple[int, int]],
    count: int,
) -> np.ndarray:
    """int32 [count, 2]: (height, width) of every example of `split`, computed once by
    `size_of(index)` (a decode) and stored as `<data dir>/example_sizes/<split>.npy`."""

    def write(tmp: epath.Path) -> None:
        sizes = np.asarray([size_of(i) for i in range(count)], np.int32).reshape(count, 2)
        with tmp.open("wb") as f:
            np.save(f, sizes)

    path = path_beside(data_cfg, spec, "example_sizes", f"{split}.npy")
    with computed_once(path, write, f"example sizes of {split}").open("rb") as f:
        sizes = np.load(f)
    if sizes.shape != (count, 2):
        raise ValueError(
            f"{path} holds {sizes.shape[0]} example sizes but split {split!r} has {count} "
            "examples; delete it to have it recomputed"
        )
    return sizes
