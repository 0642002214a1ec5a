r"""The README default's time budget: its recipe against cheaper models given more steps, x seeds.

  python sweep.py --sweep configs/sweeps/default_budget.py --workdir runs/default_budget

The study that made configs/default.py a depth-3 U-Net trained 1600 steps. Its baseline,
"depth4_1400", is the default as it was before (width 16, depth 4, 96 px crops, 1400 steps,
about 6 minutes on a 2-core CPU); `common` pins it, so the sweep replays the study whatever
the default becomes. Each variant spends about the same CPU time differently:
a narrower U-Net (1.29x faster steps) or a shallower one (1.15x) trained for more steps, smaller
crops (1.37x) for more steps, or bilinear up-sampling (its decoder trains faster in short runs,
RESULTS.md's U-Net ablation) at the same length. The step-time ratios are XLA:CPU's on an
AVX-512 host (jax 0.12, benchmarks/ab_overrides.py); "width12" and "depth3" at 1400 steps show
what the extra steps buy. Each run is a full README-sized run (about 5-7 minutes on 2 cores);
four seeds, since the baseline's own mIoU moves by about 0.03 between seeds. Results:
RESULTS.md, section "The default recipe's budget"; "depth3_1600" is configs/default.py now.
"""

from jaxseg.sweeps import Sweep


def _steps(n: int) -> dict:
    """A run of n steps that evaluates once, at its end (as configs/default.py does)."""
    return {"total_steps": n, "eval_every_steps": n}


def get_sweep():
    return Sweep(
        base="configs/default.py",
        description=(
            "the README default's old 1400 steps of a depth-4 U-Net against cheaper U-Nets "
            "(narrower, shallower, smaller crops) given the steps their speed buys, and bilinear "
            "up-sampling; depth3_1600 became configs/default.py."
        ),
        # The baseline: configs/default.py before this study.
        common={"model.depth": 4, **_steps(1400)},
        variants={
            "depth4_1400": {},
            "bilinear": {"model.upsampling": "bilinear"},
            "width12": {"model.base_width": 12},
            "width12_1800": {"model.base_width": 12, **_steps(1800)},
            "depth3": {"model.depth": 3},
            "depth3_1600": {"model.depth": 3, **_steps(1600)},
            "crop80_1800": {"data.crop_size": (80, 80), **_steps(1800)},
        },
        seeds=(0, 1, 2, 3),
    )
