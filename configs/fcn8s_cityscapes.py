r"""FCN-8s (padded alignment) on Cityscapes fine annotations, 19 train ids.

  python train.py --config configs/fcn8s_cityscapes.py --workdir runs/fcn8s_cityscapes \
      --config.data.manual_dir=/path/to/cityscapes_zips

Needs the manual download (leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip) and the
ImageNet VGG16 Keras weights (see configs/fcn32s_voc.py). A practical recipe: SGD with momentum,
pixel-mean loss, poly schedule, random scale 0.5-2 and 512 x 1024 crops, batch 8; the FCN paper
reports 65.3 class IoU on Cityscapes test for FCN-8s, a figure to measure against.
"""

from configs import base, fcn_voc_common
from jaxseg.models import pretrained


def get_config():
    config = fcn_voc_common.fcn_config("fcn8s", normalized_loss=True)
    config.model.num_classes = 19
    config.model.alignment = "padded"
    config.model.learnable_upsampling = True
    config.init_from = f"vgg16:{pretrained.keras_cache_path()}"
    config.total_steps = 80_000
    config.eval_every_steps = 5_000
    config.checkpoint_every_steps = 5_000
    config.batch_size = 8
    config.eval_batch_size = 8

    o = config.optim
    o.learning_rate = 0.01
    o.momentum = 0.9
    o.schedule = "poly"
    o.poly_power = 0.9
    o.warmup_steps = 1_000

    d = config.data
    defaults = base.get_config().data  # Its photometric jitter, which the VOC recipe turns off.
    d.name = "cityscapes"
    d.train_split = "train"
    d.eval_split = "validation"
    d.crop_size = (512, 1024)
    d.min_scale, d.max_scale = 0.5, 2.0
    d.hflip = True
    d.brightness, d.contrast, d.saturation, d.hue = (
        defaults.brightness,
        defaults.contrast,
        defaults.saturation,
        defaults.hue,
    )
    d.eval_pad_size = (1024, 2048)
    return config
