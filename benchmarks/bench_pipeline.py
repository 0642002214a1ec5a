r"""Training input pipeline throughput (images/s) at given image sizes, and data build time.

  python -m benchmarks.bench_pipeline --sizes 256 512 --batch 8 --batches 20 --repeats 3
  python -m benchmarks.bench_pipeline --build-default   # also time building the default data set

For each size, builds a small `synthetic_scenes` split at that size (JPEG images, PNG labels, as
stored for real data sets) in a temporary tfds dir, then times the real training pipeline of
`configs/default.py` (random access read, decode, scale, crop to the full size, flip, jitter,
normalise, batch) after one warm-up batch. Prints the median and spread of --repeats runs of
--batches batches each. Compare with benchmarks/bench_train_step.py on the same machine: the
pipeline should deliver at least 3x the training step's images/s.
"""

import argparse
import os
import shlex
import statistics
import sys
import tempfile
import time

from benchmarks import common
from configs.default import data_config
from jaxseg.data import pipeline


def _time_build(data_dir: str, size: int, num_train: int, num_validation: int) -> float:
    cfg = data_config()
    cfg.data_dir = data_dir
    cfg.synthetic.image_size = size
    cfg.synthetic.num_train = num_train
    cfg.synthetic.num_validation = num_validation
    start = time.perf_counter()
    pipeline.open_split(cfg, "train", key="benchmark")
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_pipeline", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512], help="image side, px")
    parser.add_argument("--batch", type=int, default=8, help="global batch (one host)")
    parser.add_argument("--batches", type=int, default=20, help="batches per timed run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--num-images", type=int, default=64, help="train images per size")
    parser.add_argument(
        "--build-default", action="store_true", help="also time the default 3000/300 128 px build"
    )
    args = parser.parse_args()

    print("command:", "python -m benchmarks.bench_pipeline " + shlex.join(sys.argv[1:]))
    print("machine:", common.machine())
    with tempfile.TemporaryDirectory() as data_dir:
        if args.build_default:
            seconds = _time_build(os.path.join(data_dir, "default"), 128, 3000, 300)
            print(f"default synthetic_scenes (3000 + 300 images, 128 px): built in {seconds:.1f} s")
        for size in args.sizes:
            cfg = data_config()
            cfg.data_dir = os.path.join(data_dir, str(size))
            cfg.synthetic.image_size = size
            cfg.synthetic.num_train = args.num_images
            cfg.synthetic.num_validation = 1
            cfg.crop_size = (size, size)
            build = _time_build(cfg.data_dir, size, args.num_images, 1)
            iterator = pipeline.make_train_iterator(cfg, global_batch_size=args.batch, seed=0)
            next(iterator)  # warm-up: tracing, thread pools, first reads
            rates = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                for _ in range(args.batches):
                    next(iterator)
                rates.append(args.batches * args.batch / (time.perf_counter() - start))
            common.emit(
                {
                    "size": size,
                    "batch": args.batch,
                    "images_per_s": statistics.median(rates),
                    "images_per_s_min": min(rates),
                    "images_per_s_max": max(rates),
                    "peak_mem_mb": common.peak_rss_mb(),
                },
                f"{size}x{size}: {statistics.median(rates):.1f} images/s "
                f"(median of {args.repeats}; min {min(rates):.1f}, max {max(rates):.1f}; "
                f"batch {args.batch}; {args.num_images} images built in {build:.1f} s; "
                f"peak RSS {common.peak_rss_mb():.0f} MB)",
            )


if __name__ == "__main__":
    main()
