r"""Input pipeline throughput: host loading (images/s per core) and device augmentation (ms).

  python -m benchmarks.bench_pipeline                          # isbi, voc and default recipes
  python -m benchmarks.bench_pipeline --recipes isbi --workers 0 1 2 --batches 20 --repeats 3

For each recipe, writes a small data set in a temporary folder the way users bring theirs (an
image folder: PNG/JPEG images, PNG masks) and builds it with tfds, then times:

1. host loading: `jaxseg.data.loading.host_batches` (random-access ArrayRecord read, decode, pad
   to the fixed shape, the precomputed weight map where the recipe has one) with 0 loader
   workers (threads of this process) and with 1 and 2 worker processes; images/s, median of
   --repeats runs of --batches batches after a warm-up batch, and per core (the worker count;
   0 workers counts as one core: the threads share this process);
2. device augmentation: the jitted `jaxseg.data.augment.augment` of one loaded batch on this
   process's first device (the CPU here), median of 10 calls after compiling; divide by the
   recipe's train step (benchmarks/bench_train_step.py) for its share.

Recipes:
  isbi     configs/unet_isbi.py: 512 x 512 greyscale PNG slices, 0/255 masks, 572 px tiles with
           92 px mirrored context, rotation, shift, elastic, flip, grey-value jitter, weight map;
  voc      configs/fcn8s_voc.py's data: 500 x 375 RGB JPEG, palette-index PNG masks, 512 px
           padded whole images;
  default  configs/default.py: the synthetic scenes, 128 px, 96 px crops, scale, flip, jitter.
"""

import argparse
import os
import shlex
import statistics
import sys
import tempfile
import time

import jax
import numpy as np
from PIL import Image

from benchmarks import common, presets
from jaxseg.data import augment, loading
from jaxseg.models import build_model, input_context


def _smooth(rng, height, width, channels):
    """A photo-like image (smooth field + noise), so PNG/JPEG sizes are realistic."""
    coarse = rng.random((height // 32 + 2, width // 32 + 2, channels))
    field = np.kron(coarse, np.ones((32, 32, 1)))[:height, :width]
    noisy = field * 200 + rng.normal(0, 12, field.shape)
    return np.clip(noisy, 0, 255).astype(np.uint8)


def _write_folder(root, count, size, channels, classes, image_ext):
    """`count` images and masks under root/images and root/masks, and a val.txt naming the last
    sixth of the stems (at least one), as a user's folder has them."""
    rng = np.random.default_rng(0)
    os.makedirs(os.path.join(root, "images"))
    os.makedirs(os.path.join(root, "masks"))
    height, width = size
    stems = [f"{i:04d}" for i in range(count)]
    for stem in stems:
        image = _smooth(rng, height, width, channels)
        image = image[..., 0] if channels == 1 else image
        Image.fromarray(image).save(os.path.join(root, "images", f"{stem}.{image_ext}"))
        mask = np.kron(
            rng.integers(0, classes, (height // 16 + 1, width // 16 + 1)), np.ones((16, 16))
        )
        mask = mask[:height, :width].astype(np.uint8)
        if classes == 2:
            mask = mask * 255  # 0/255 binary masks, as ISBI ships them
        Image.fromarray(mask).save(os.path.join(root, "masks", f"{stem}.png"))
    with open(os.path.join(root, "val.txt"), "w") as f:
        f.write("\n".join(stems[-max(1, count // 6) :]) + "\n")


RECIPES = {
    "isbi": "configs/unet_isbi.py",
    "voc": "configs/fcn8s_voc.py",
    "default": "configs/default.py",
}


def write_recipe(name: str, tmp: str, count: int) -> tuple[str, list[str]]:
    """(config file, "key=value" overrides) of recipe `name`, its data set written under `tmp`.

    The overrides are what a user adds on the command line (`--config.<key>=<value>`) to train
    the recipe on their own folder; `presets.load` applies them in-process.
    """
    root = os.path.join(tmp, name)
    overrides = [f"data.data_dir={os.path.join(tmp, 'tfds')}"]
    if name == "isbi":
        _write_folder(root, count, (512, 512), 1, 2, "png")
        overrides += [f"data.folder.root={root}"]  # the recipe's own val.txt
    elif name == "voc":
        _write_folder(root, count, (375, 500), 3, 21, "jpg")
        names = tuple(f"class{i}" for i in range(21))
        overrides += [
            "data.name=image_folder",
            f"data.folder.root={root}",
            f"data.folder.class_names={names!r}",
            "data.folder.val_list=val.txt",
            "data.eval_split=validation",  # the folder's split names, not VOC's seg11valid
            "data.folder.channels=3",  # the recipe's own RGB mean/std (VGG's) stay
            "init_from=",  # trained from scratch: no FCN-16s run to start from
        ]
    elif name != "default":
        raise ValueError(f"unknown recipe {name!r}: one of {sorted(RECIPES)}")
    return RECIPES[name], overrides


def _recipe(name, tmp, count):
    """(config, context) of a recipe, its data written under `tmp`; evaluated on its train split."""
    path, overrides = write_recipe(name, tmp, count)
    config = presets.load(path, overrides)
    config.data.eval_split = config.data.train_split
    model = build_model(config.model)
    return config, input_context(model, tuple(config.data.crop_size))


def _loader_rate(config, batch, workers, batches, repeats):
    iterator = loading.host_batches(
        config.data, global_batch_size=batch, seed=0, workers=workers, process_count=1,
        process_index=0,
    )  # fmt: skip
    next(iterator)  # warm-up: thread pools, workers starting, first reads
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(batches):
            next(iterator)
        rates.append(batches * batch / (time.perf_counter() - start))
    return rates


def _augment_ms(config, context, batch):
    device = jax.devices()[0]
    mesh = jax.sharding.Mesh(np.asarray([device]), ("data",))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    loaded = next(loading.host_batches(config.data, global_batch_size=batch, seed=0, workers=0))
    fn = augment.make_augment(config.data, seed=0, sharding=sharding, context=context)
    arrays = loading.to_global(loaded, sharding)
    jax.block_until_ready(fn(arrays))  # compile
    times = []
    for _ in range(10):
        start = time.perf_counter()
        jax.block_until_ready(fn(arrays))
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main():
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_pipeline", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--recipes", nargs="+", default=["isbi", "voc", "default"])
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--batch", type=int, default=8, help="loaded batch (one host)")
    parser.add_argument("--batches", type=int, default=20, help="batches per timed run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--num-images", type=int, default=30, help="images per data set")
    args = parser.parse_args()

    print("command:", "python -m benchmarks.bench_pipeline " + shlex.join(sys.argv[1:]))
    print("machine:", common.machine())
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.recipes:
            config, context = _recipe(name, tmp, args.num_images)
            loading.open_split(config.data, config.data.train_split, key="benchmark")
            for workers in args.workers:
                rates = _loader_rate(config, args.batch, workers, args.batches, args.repeats)
                median, cores = statistics.median(rates), max(workers, 1)
                common.emit(
                    {"recipe": name, "workers": workers, "images_per_s": median,
                     "images_per_s_per_core": median / cores, "min": min(rates),
                     "max": max(rates)},
                    f"{name}: host loading, {workers} worker(s): {median:.1f} images/s "
                    f"({median / cores:.1f} per core; min {min(rates):.1f}, max {max(rates):.1f})",
                )  # fmt: skip
            step_batch = config.batch_size
            ms = _augment_ms(config, context, step_batch)
            crop = tuple(config.data.crop_size)
            common.emit(
                {"recipe": name, "augment_ms_per_batch": ms, "batch": step_batch, "crop": crop},
                f"{name}: device augmentation of a batch of {step_batch} ({crop[0]}x{crop[1]}): "
                f"{ms:.1f} ms on {jax.devices()[0].platform}",
            )


if __name__ == "__main__":
    main()
