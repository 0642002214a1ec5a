r"""The FCN paper's ablations on the embedded synthetic scenes, shrunk to run on a CPU.

  python sweep.py --sweep configs/sweeps/fcn_ablations.py --workdir runs/fcn_ablations

Three comparisons of Long et al. (2015) in one sweep (base configs/fcn_scenes.py: VGG16 FCN,
padded alignment, 32 px crops, 30 steps a stage, from random init):
- skip layers (the paper's Table 2): fcn32s -> fcn16s -> fcn8s, each stage initialised from the
  previous one's run of the same seed, as the paper trains them ("staged");
- staged vs at-once: fcn8s (staged, 3 x 30 steps in all) vs fcn8s_at_once (pool4 x 0.01,
  pool3 x 1e-4, trained in one go for the same 90 steps);
- frozen vs learned bilinear up-sampling: fcn32s vs fcn32s_learned_upsampling.
On a CPU the VGG16 trunk from scratch learns little in this budget: read RESULTS.md for what
this run can and cannot tell. The paper's setting is configs/sweeps/fcn_ablations_voc.py.
"""

from jaxseg.sweeps import Sweep, run_dir


def get_sweep():
    return Sweep(
        base="configs/fcn_scenes.py",
        description=(
            "FCN ablations (Long et al. 2015) on synthetic_scenes: skip layers (staged), "
            "staged vs at-once, frozen vs learned bilinear up-sampling."
        ),
        variants={
            "fcn32s": {},
            "fcn16s": {"model.name": "fcn16s", "init_from": run_dir("fcn32s")},
            "fcn8s": {"model.name": "fcn8s", "init_from": run_dir("fcn16s")},
            "fcn8s_at_once": {
                "model.name": "fcn8s",
                "model.at_once": True,
                "total_steps": 90,  # The staged chain's 3 x 30 steps.
                "checkpoint_every_steps": 90,
                "eval_every_steps": 30,
            },
            "fcn32s_learned_upsampling": {"model.learnable_upsampling": True},
        },
        seeds=(0, 1),
    )
