r"""The FCN paper's ablations on the embedded synthetic scenes, shrunk to run on a CPU.

  python sweep.py --sweep configs/sweeps/fcn_ablations.py --workdir runs/fcn_ablations

Three comparisons of Long et al. (2015) in one sweep (base configs/fcn_scenes.py: VGG16 FCN,
padded alignment, 32 px crops, 10 steps a stage, from random init):
- skip layers (the paper's Table 2): fcn32s -> fcn16s -> fcn8s, each stage initialised from the
  previous one's run of the same seed, as the paper trains them ("staged");
- staged vs at-once: fcn8s (staged, 3 x 10 steps in all) vs fcn8s_at_once (pool4 x 0.01,
  pool3 x 1e-4, trained in one go for the same 30 steps);
- frozen vs learned bilinear up-sampling: fcn32s vs fcn32s_learned_upsampling.
For a longer CPU run, `--config.*` on the command line changes every variant (e.g.
`--config.optim.learning_rate=3e-4`); step counts live here and in configs/fcn_scenes.py. On a
CPU the VGG16 trunk from scratch learns next to nothing in this budget: RESULTS.md says what
the run can and cannot tell. The paper's setting is configs/sweeps/fcn_ablations_voc.py.
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
                "total_steps": 30,  # The staged chain's 3 x 10 steps.
                "checkpoint_every_steps": 30,
                "eval_every_steps": 15,
            },
            "fcn32s_learned_upsampling": {"model.learnable_upsampling": True},
        },
        seeds=(0, 1),
    )
