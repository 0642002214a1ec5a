"""Shared FCN-on-VOC recipe (the reference release's solvers); see fcn{32,16,8}s_voc.py."""

import ml_collections

from configs import base
from jaxseg.models import pretrained

# Caffe's preprocessing, which the ImageNet VGG16 weights expect: 0..255 pixels minus the
# per-channel mean, no scaling. Our images arrive in [0, 1]: mean/255 and std 1/255 are the same.


def fcn_config(variant: str, *, normalized_loss: bool = False) -> ml_collections.ConfigDict:
    """The reference release's solver for `variant` ("fcn32s", "fcn16s" or "fcn8s") on VOC.

    normalized_loss=False is the release's exact recipe: batch 1, the loss summed over pixels,
    SGD momentum 0.99 at lr 1e-10 / 1e-12 / 1e-14. normalized_loss=True is the equivalent with
    the loss averaged over pixels: the gradient is ~1/(pixels per image) smaller (VOC images are
    ~500 x 375 = 1.9e5 px), so the learning rate is scaled up by that factor (1e-10 -> ~2e-5).
    """
    config = base.get_config()
    config.total_steps = 100_000  # The release's max_iter for each stage.
    config.log_every_steps = 100
    config.eval_every_steps = 4_000  # The release scored seg11valid every 4000 iterations.
    config.checkpoint_every_steps = 4_000
    config.batch_size = 1  # One whole image per step, as in the release.
    config.eval_batch_size = 8

    # The release's network is base.py's FCN: reference alignment (pad 100 + published crop
    # offsets), fixed bilinear deconvolutions, dropout 0.5.
    config.model.name = variant
    config.model.num_classes = 21

    config.loss.normalize = normalized_loss

    lr = {"fcn32s": 1e-10, "fcn16s": 1e-12, "fcn8s": 1e-14}[variant]
    pixels_per_image = 500 * 375
    o = config.optim
    o.optimizer = "sgd"
    o.learning_rate = lr * pixels_per_image if normalized_loss else lr
    o.momentum = 0.99
    o.nesterov = False
    o.weight_decay = 5e-4
    o.weight_decay_mode = "coupled"  # Caffe adds wd * w to the gradient.
    o.grad_clip_norm = 0.0  # Caffe did not clip.
    o.schedule = "constant"  # Caffe "fixed".
    o.warmup_steps = 0
    o.lr_multipliers = ((r"(^|/)bias$", 2.0),)  # Biases at lr_mult 2 (and decay_mult 0).

    d = config.data
    d.name = "voc_sbd"
    d.train_split = "train"  # SBD train minus seg11valid (8498 images).
    d.eval_split = "seg11valid"  # The 736 VOC2011 val images not in SBD train.
    d.crop_size = (512, 512)  # Whole images (<= 500 px) padded with label 255: no cropping.
    d.min_scale = d.max_scale = 1.0  # No augmentation in the release.
    d.hflip = False
    d.brightness = d.contrast = d.saturation = d.hue = 0.0
    d.mean = tuple(m / 255 for m in reversed(pretrained.IMAGENET_BGR_MEAN))  # RGB order
    d.std = (1 / 255,) * 3
    d.eval_pad_size = (512, 512)
    return config
