r"""predict on one big image: wall time, host peak memory, and the device memory bound.

  python train.py --config configs/smoke.py --workdir runs/smoke
  python -m benchmarks.bench_predict --workdir runs/smoke --height 3000 --width 4000
  python -m benchmarks.bench_predict --workdir runs/smoke --mode sliding_window --crop 512

Writes a smooth random --height x --width RGB PNG, then times `prediction.predict_files` on it
(mask + --confidence maps) in --mode (default whole_image, which tiles an image with a side over
--max_tile px by max_tile crops). Reports: XLA's planned device bytes of one tile batch (the
bound: arguments + outputs + temporaries of the jitted forward pass over --batch_per_device
tiles, per device), the same figure for an unbounded single pass over the whole padded image
(compiled, not run), the device's measured peak where the backend reports one, and the process's
peak RSS (host: image, [H, W, K] logits, probabilities, outputs).
"""

import os

from jaxseg import backend

backend.configure_before_jax()

import argparse  # noqa: E402
import functools  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from benchmarks import common  # noqa: E402
from jaxseg import inference, prediction, sharding  # noqa: E402


def planned_mb(fn, *args) -> float:
    return common.device_peak_mb(fn.lower(*args).compile()).get("xla_planned_mb", float("nan"))


def main():
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_predict", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--height", type=int, default=3000)
    parser.add_argument("--width", type=int, default=4000)
    parser.add_argument("--mode", default="whole_image", choices=inference.MODES)
    parser.add_argument("--crop", type=int, default=512, help="sliding_window crop side (px)")
    parser.add_argument("--batch_per_device", type=int, default=1)
    parser.add_argument("--max_tile", type=int, default=1024)
    args = parser.parse_args()
    backend.configure_jax_for_backend()

    with tempfile.TemporaryDirectory() as tmp:
        rng = np.random.default_rng(0)
        coarse = rng.integers(0, 256, (args.height // 64 + 1, args.width // 64 + 1, 3), np.uint8)
        path = os.path.join(tmp, "big.png")
        Image.fromarray(coarse).resize((args.width, args.height), Image.BILINEAR).save(path)
        rss_start = common.peak_rss_mb()
        predictor = prediction.load_predictor(
            args.workdir,
            "latest",
            batch_size_per_device=args.batch_per_device,
            max_tile=args.max_tile,
        )
        c = args.crop
        window = dict(crop=(c, c), stride=(c * 3 // 4, c * 3 // 4))
        if args.mode == "sliding_window":
            settings = predictor.settings.override(mode=args.mode, **window)
            tile = (c, c)
        else:
            settings = predictor.settings.override(mode=args.mode)
            tile = (args.max_tile, args.max_tile)
        t0 = time.perf_counter()
        prediction.predict_files(
            predictor, [path], os.path.join(tmp, "out"), settings=settings, confidence=True
        )
        wall = time.perf_counter() - t0

        runner = predictor.engine.whole
        mesh = sharding.make_mesh()
        spec = lambda shape: jax.ShapeDtypeStruct(
            shape, np.float32, sharding=sharding.batch_sharding(mesh)
        )
        tile_mb = planned_mb(
            runner.fn, runner.variables, spec((runner.batch_size, *tile, predictor.channels))
        )
        ph, pw = prediction.bucket_shape(args.height, args.width, predictor.bucket)
        whole = jax.jit(functools.partial(inference.whole_image_logits, predictor.model))
        whole_mb = planned_mb(
            whole,
            runner.variables,
            jax.ShapeDtypeStruct((1, ph, pw, predictor.channels), np.float32),
        )
        measured = common.device_peak_mb(
            runner.fn.lower(
                runner.variables, spec((runner.batch_size, *tile, predictor.channels))
            ).compile()
        )
    record = dict(
        bench="predict",
        machine=common.machine(),
        backend=jax.default_backend(),
        devices=jax.device_count(),
        image=[args.height, args.width],
        mode=args.mode,
        settings=str(settings),
        tile=list(tile),
        tile_batch=runner.batch_size,
        wall_s=wall,
        images_per_s=1 / wall,
        tile_batch_planned_mb=tile_mb,
        whole_image_planned_mb=whole_mb,
        peak_rss_mb=common.peak_rss_mb(),
        rss_before_predictor_mb=rss_start,
        device_peak_mb=measured["peak_mem_mb"] if jax.default_backend() != "cpu" else None,
    )
    common.emit(
        record,
        (
            f"{args.height}x{args.width} {args.mode} (tiles {tile[0]}x{tile[1]}, batch "
            f"{runner.batch_size} on {jax.device_count()} {jax.default_backend()} device(s)): "
            f"{wall:.1f} s; device bound {tile_mb:.0f} MB planned per tile batch vs "
            f"{whole_mb:.0f} MB for one whole-image pass; "
            f"host peak RSS {record['peak_rss_mb']:.0f} MB"
        ),
    )


if __name__ == "__main__":
    main()
