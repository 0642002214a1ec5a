r"""The U-Net paper's design choices, one at a time, on the embedded synthetic scenes (CPU).

  python sweep.py --sweep configs/sweeps/unet_ablations.py --workdir runs/unet_ablations

Base: configs/default.py's padded U-Net, made small enough for a 2-core CPU (width 8, depth 3,
64 px images, batch 8, 150 steps). Each variant flips one choice of Ronneberger et al. (2015):
the border weight map of eq. 2, elastic deformation (sec. 3.1), valid vs padded convolutions,
transposed vs bilinear up-sampling, and BatchNorm (absent from the paper) vs none. Results of
one run of this sweep are in RESULTS.md; on accelerators and the paper's data use
configs/sweeps/unet_ablations_isbi.py.

Valid convolutions lose 88 px per side at depth 3, so the "valid" variant trains on 148 px
tiles (zero-padded around the 64 px images, label 255 outside) whose 60 px centre is scored, and
evaluates with the paper's overlap-tile strategy; its steps cost several times more (measured
images/s: RESULTS.md, section "U-Net").
"""

from jaxseg.sweeps import Sweep


def get_sweep():
    return Sweep(
        base="configs/default.py",
        description=(
            "U-Net ablations (Ronneberger et al. 2015) on synthetic_scenes: one change each "
            "against a small padded U-Net with BatchNorm and transposed up-convolutions."
        ),
        common={
            "total_steps": 150,
            "log_every_steps": 25,
            "eval_every_steps": 50,
            "checkpoint_every_steps": 50,
            "batch_size": 8,
            "eval_batch_size": 20,
            "model.base_width": 8,
            "model.depth": 3,
            "optim.warmup_steps": 10,
            "data.synthetic.image_size": 64,
            "data.synthetic.num_train": 600,
            "data.synthetic.num_validation": 100,
            "data.crop_size": (64, 64),
            "data.eval_pad_size": (64, 64),
        },
        variants={
            "baseline": {},
            # The paper's eq. 2 border weights (issue 12 adds the config key).
            "weight_map": {"data.weight_map": True},
            "elastic": {"data.elastic": True},
            "valid": {
                "model.name": "unet",
                "data.crop_size": (148, 148),
                "eval.mode": "overlap_tile",
                "eval.tile_in": (148, 148),
            },
            "bilinear": {"model.upsampling": "bilinear"},
            "no_batchnorm": {"model.use_batchnorm": False},
        },
        seeds=(0, 1),
    )
