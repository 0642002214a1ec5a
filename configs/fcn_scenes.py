r"""FCN-32s (padded alignment, from scratch) on the synthetic scenes: the FCN ablations' CPU base.

  python train.py --config configs/fcn_scenes.py --workdir runs/fcn_scenes

Sized so that the VGG16 trunk (134 M parameters at 6 classes) runs at all on a 2-core CPU:
32 px images and crops (pool5 is 1 x 1), batch 4, 10 steps of AdamW from random init (no
ImageNet weights offline). A step is slow whatever the crop (the 134 M-parameter update and
fc6's 102 M-weight gradient dominate; measured images/s: RESULTS.md, section "FCN"), so this
is a smoke-scale run: it learns next to nothing; it exists so that
configs/sweeps/fcn_ablations.py runs end to end here. The paper's setting is
configs/fcn32s_voc.py (and configs/sweeps/fcn_ablations_voc.py).
"""

from configs import default


def get_config():
    # configs/default.py's synthetic-scenes recipe (its loss, class weights and flip-averaged
    # evaluation, which the ablations were measured with) with the FCN for its U-Net.
    config = default.get_config()
    config.total_steps = 10
    config.log_every_steps = 5
    config.eval_every_steps = 5
    # A 1.6 GB checkpoint (params + AdamW moments) at each eval: keep disk use to ~3 GB a run.
    config.checkpoint_every_steps = 10
    config.checkpoint_keep = 1
    config.batch_size = 4
    config.eval_batch_size = 8

    config.model.name = "fcn32s"  # fcn32s, fcn16s or fcn8s
    config.model.alignment = "padded"  # inputs padded to a multiple of 32, any size
    config.model.dropout_rate = 0.5  # The FCN's fc6 / fc7 dropout (the U-Net recipe has none).

    o = config.optim
    o.learning_rate = 1e-4  # VGG16 without BatchNorm diverges at the U-Net's 3e-3.
    o.warmup_steps = 2

    d = config.data
    d.synthetic.image_size = 32
    d.synthetic.num_train = 600
    d.synthetic.num_validation = 100
    d.crop_size = (32, 32)
    d.eval_pad_size = (32, 32)
    return config
