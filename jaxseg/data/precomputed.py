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
from jax.experimental import multihost_utils

from jaxseg.data import datasets


def path_beside(
    data_cfg: ml_collections.ConfigDict, spec: datasets.DatasetSpec, kind: str, name: str
) -> str:
    """`<the data set's data dir>/<kind>/<name>`, `name`'s characters made file-name safe."""
    builder = spec.make_builder(data_cfg)
    slug = re.sub(r"[^A-Za-z0-9_.%-]+", "_", name)
    return os.path.join(os.fspath(builder.data_dir), kind, slug)


def computed_once(path: str, write: Callable[[str], None], what: str) -> str:
    """Makes sure `path` exists: process 0 calls `write(temporary path)` if it does not, and
    renames the result to `path`; every process returns once it is there. `what` names the
    file in the barrier."""
    if jax.process_index() == 0 and not os.path.exists(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.tmp{os.getpid()}"
        try:
            write(tmp)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
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

    def write(tmp: str) -> None:
        sizes = np.asarray([size_of(i) for i in range(count)], np.int32).reshape(count, 2)
        with open(tmp, "wb") as f:
            np.save(f, sizes)

    path = path_beside(data_cfg, spec, "example_sizes", f"{split}.npy")
    sizes = np.load(computed_once(path, write, f"example sizes of {split}"))
    if sizes.shape != (count, 2):
        raise ValueError(
            f"{path} holds {sizes.shape[0]} example sizes but split {split!r} has {count} "
            "examples; delete it to have it recomputed"
        )
    return sizes
