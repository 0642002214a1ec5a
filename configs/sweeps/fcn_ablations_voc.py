r"""The FCN ablations at the paper's scale: PASCAL VOC 2012 + SBD from ImageNet VGG16 (GPUs).

  python sweep.py --sweep configs/sweeps/fcn_ablations_voc.py --workdir runs/fcn_voc_abl \
      --config.data.manual_dir=/path/to/voc_and_sbd_tars

Base: configs/fcn32s_voc.py, the reference release's solver (batch 1, summed loss, SGD momentum
0.99, 100k steps a stage, fixed bilinear up-sampling, ImageNet VGG16 from the Keras cache).
fcn16s and fcn8s are staged from the previous stage's run of the same seed with the release's
learning rates (1e-12, 1e-14); fcn8s_at_once trains FCN-8s with the pool scalings in one go for
the staged chain's 300k steps; fcn32s_learned_upsampling learns the deconvolution. Expected
(release, seg11valid mean IU): 63.6 / 65.0 / 65.5 for 32s / 16s / 8s.
With --slurm-array, submit the fcn16s and fcn8s tasks after their sources (the script says so).
"""

from jaxseg.sweeps import Sweep, run_dir


def get_sweep():
    return Sweep(
        base="configs/fcn32s_voc.py",
        description="FCN ablations (Long et al. 2015) on VOC2012+SBD, the reference solvers.",
        variants={
            "fcn32s": {},
            "fcn16s": {
                "model.name": "fcn16s",
                "optim.learning_rate": 1e-12,
                "init_from": run_dir("fcn32s"),
            },
            "fcn8s": {
                "model.name": "fcn8s",
                "optim.learning_rate": 1e-14,
                "init_from": run_dir("fcn16s"),
            },
            "fcn8s_at_once": {
                "model.name": "fcn8s",
                "model.at_once": True,
                "total_steps": 300_000,
            },
            "fcn32s_learned_upsampling": {"model.learnable_upsampling": True},
        },
        seeds=(0, 1),
    )
