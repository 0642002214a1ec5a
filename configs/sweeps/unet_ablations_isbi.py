r"""The U-Net ablations at the paper's scale: ISBI 2012 EM slices, 572 px tiles (accelerators).

  python sweep.py --sweep configs/sweeps/unet_ablations_isbi.py --workdir runs/unet_isbi_abl \
      --config.data.folder.root=/path/to/isbi2012

Base: configs/unet_isbi.py, the paper's recipe (valid convolutions, no BatchNorm, transposed
up-convolutions, elastic deformation, batch 1, SGD momentum 0.99, 20k steps). "paper" adds the
border weight map; every other variant changes one thing. 6 variants x 2 seeds = 12 runs of
about 20k steps of the 31 M-parameter net; `--slurm-array` spreads them over a cluster.
"""

from jaxseg.sweeps import Sweep


def get_sweep():
    return Sweep(
        base="configs/unet_isbi.py",
        description="U-Net ablations (Ronneberger et al. 2015) on ISBI 2012, the paper's recipe.",
        # The paper's eq. 2 border weights (config key from issue 12) in every variant but one.
        common={"data.weight_map": True},
        variants={
            "paper": {},
            "no_weight_map": {"data.weight_map": False},
            "no_elastic": {"data.elastic": False},
            "padded": {
                "model.name": "unet_padded",
                "data.crop_size": (512, 512),  # A multiple of 2**depth, as padded nets need.
                "eval.mode": "whole_image",
            },
            "bilinear": {"model.upsampling": "bilinear"},
            "batchnorm": {"model.use_batchnorm": True},
        },
        seeds=(0, 1),
    )
