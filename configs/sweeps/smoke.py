r"""Tiny sweep for tests and a first try: configs/smoke.py, two variants x two seeds.

  python sweep.py --sweep configs/sweeps/smoke.py --workdir runs/sweep_smoke

Four runs of a few seconds each (after the first compile); the numbers mean nothing beyond
"the sweep tool works": results.md / results.csv / curves.png / bars.png in the workdir.
"""

from jaxseg.sweeps import Sweep


def get_sweep():
    return Sweep(
        base="configs/smoke.py",
        description="Smoke test: transposed vs bilinear upsampling in the tiny U-Net.",
        variants={
            "transpose": {},  # The base config as it is.
            "bilinear": {"model.upsampling": "bilinear"},
        },
        seeds=(0, 1),
    )
