r"""Tiny and fast, for tests: a 2-level U-Net of width 4 on 32 px synthetic scenes.

  python train.py --config configs/smoke.py --workdir /tmp/smoke

Runs 6 steps in well under a minute on a CPU; its numbers mean nothing beyond "it trains".
"""

from configs import base


def get_config():
    config = base.get_config()
    config.total_steps = 6
    config.log_every_steps = 2
    config.eval_every_steps = 3
    config.checkpoint_every_steps = 3
    config.batch_size = 8
    config.eval_batch_size = 8
    config.model.base_width = 4
    config.model.depth = 2
    config.model.dropout_rate = 0.0  # None in the tiny 2-level net.
    config.optim.learning_rate = 3e-3
    config.optim.warmup_steps = 0
    config.data.synthetic.image_size = 32
    config.data.synthetic.num_train = 16
    config.data.synthetic.num_validation = 8
    config.data.crop_size = (32, 32)
    config.data.eval_pad_size = (32, 32)
    return config
