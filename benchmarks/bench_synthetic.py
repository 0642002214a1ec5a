r"""Where the synthetic data set's build time goes, and the two choices that cut it.

  python -m benchmarks.bench_synthetic                  # one chunk of 64 scenes at 128 px
  python -m benchmarks.bench_synthetic --size 256 --repeats 5

Times, median of --repeats after one warm-up: rendering one chunk of `synthetic_scenes`
(`render_scenes`, 64 scenes); encoding its images as JPEG q95 (what the builder stores) vs PNG,
per image, with the mean encoded size; and the sensor noise drawn as windows of one shared
[2S, 2S, 3] field (the builder's way) vs fresh per-pixel draws for the whole chunk. The full
default build (3000 + 300 images) is timed by `python -m benchmarks.bench_pipeline
--build-default`.
"""

import argparse
import io
import statistics
import time

import numpy as np
from PIL import Image

from benchmarks import common
from jaxseg.data.builders import synthetic_scenes

CHUNK = 64  # scenes per chunk, as the builder renders them


def _median_s(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _encode(images: np.ndarray, image_format: str, **options) -> int:
    """Total bytes of `images` [n, S, S, 3] uint8 encoded one by one."""
    total = 0
    for image in images:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format=image_format, **options)
        total += buffer.tell()
    return total


def _noise_windows(rng: np.random.Generator, image: np.ndarray, sigma: np.ndarray) -> None:
    n, size = image.shape[:2]
    field = rng.standard_normal((2 * size, 2 * size, 3), np.float32)
    for i, (oy, ox) in enumerate(rng.integers(0, size, (n, 2))):
        image[i] += field[oy : oy + size, ox : ox + size] * sigma[i]


def _noise_fresh(rng: np.random.Generator, image: np.ndarray, sigma: np.ndarray) -> None:
    image += rng.standard_normal(image.shape, np.float32) * sigma[:, None, None, None]


def main():
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_synthetic", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--size", type=int, default=128, help="image side, px")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    size, repeats = args.size, args.repeats

    render_s = _median_s(lambda: synthetic_scenes.render_scenes(0, 0, 0, CHUNK, size), repeats)
    images, _ = synthetic_scenes.render_scenes(0, 0, 0, CHUNK, size)
    jpeg_s = _median_s(lambda: _encode(images, "JPEG", quality=95), repeats) / CHUNK
    png_s = _median_s(lambda: _encode(images, "PNG"), repeats) / CHUNK
    jpeg_kb = _encode(images, "JPEG", quality=95) / CHUNK / 1e3
    png_kb = _encode(images, "PNG") / CHUNK / 1e3

    rng = np.random.default_rng(0)
    canvas = np.zeros((CHUNK, size, size, 3), np.float32)
    sigma = rng.uniform(2.0, 10.0, CHUNK).astype(np.float32)
    windows_s = _median_s(lambda: _noise_windows(rng, canvas, sigma), repeats)
    fresh_s = _median_s(lambda: _noise_fresh(rng, canvas, sigma), repeats)

    print("machine:", common.machine())
    common.emit(
        {
            "size": size,
            "chunk": CHUNK,
            "render_chunk_s": render_s,
            "jpeg_q95_ms_per_image": 1e3 * jpeg_s,
            "png_ms_per_image": 1e3 * png_s,
            "jpeg_q95_kb_per_image": jpeg_kb,
            "png_kb_per_image": png_kb,
            "noise_windows_chunk_s": windows_s,
            "noise_fresh_chunk_s": fresh_s,
        },
        f"{CHUNK} scenes at {size} px: render {render_s:.3f} s; encode per image JPEG q95 "
        f"{1e3 * jpeg_s:.2f} ms, {jpeg_kb:.1f} kB vs PNG {1e3 * png_s:.2f} ms, {png_kb:.1f} kB "
        f"({png_s / jpeg_s:.1f}x the time, {png_kb / jpeg_kb:.1f}x the bytes); noise for the "
        f"chunk: windows of one field {windows_s:.4f} s vs fresh draws {fresh_s:.4f} s "
        f"({fresh_s / windows_s:.1f}x)",
    )


if __name__ == "__main__":
    main()
