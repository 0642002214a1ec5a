r"""Padded U-Net with BatchNorm on Oxford-IIIT Pet (tfds `oxford_iiit_pet`): pet / background /
boundary from the trimaps.

  python train.py --config configs/unet_pets.py --workdir runs/unet_pets

tfds downloads the data set on first use (~800 MB). Expected: validation (tfds "test") mean IoU
should reach roughly 0.75 after 20k steps at batch 32 (a practical recipe, not a paper's;
not yet measured by us).
"""

from configs import base


def get_config():
    config = base.get_config()
    config.total_steps = 20_000
    config.log_every_steps = 100
    config.eval_every_steps = 2_000
    config.checkpoint_every_steps = 2_000
    config.batch_size = 32
    config.eval_batch_size = 16

    config.model.num_classes = 3
    config.model.base_width = 32
    config.model.depth = 4
    config.model.dropout_rate = 0.1

    config.optim.learning_rate = 1e-3
    config.optim.warmup_steps = 500

    d = config.data
    d.name = "oxford_iiit_pet"
    d.eval_split = "test"
    d.crop_size = (256, 256)
    d.min_scale, d.max_scale = 0.5, 1.5
    d.eval_pad_size = (1024, 1024)  # Native resolution; pet images are below 1024 px a side.
    d.pad_buckets = 4  # Most are near 500 x 375 px: training pads them to 512 x 512 or less.
    return config
