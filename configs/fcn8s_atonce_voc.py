r"""FCN-8s "at-once" on VOC 2012 + SBD: trained in one stage straight from VGG16 (the reference
release's voc-fcn8s-atonce: pool4 scaled by 0.01 and pool3 by 1e-4 before scoring).

  python train.py --config configs/fcn8s_atonce_voc.py --workdir runs/fcn8s_atonce_voc

Starts from ImageNet VGG16 as configs/fcn32s_voc.py does (Keras cache file). The release's solver:
batch 1, summed loss, SGD momentum 0.99 at a fixed lr 1e-10 (not the staged FCN-8s's 1e-14),
weight decay 5e-4, 300,000 iterations. Expected: about 65.4 mean IU on seg11valid (release
figure; the staged FCN-8s of configs/fcn8s_voc.py reaches 65.5).
"""

from configs import fcn_voc_common
from jaxseg.models import pretrained


def get_config():
    config = fcn_voc_common.fcn_config("fcn8s")
    config.model.at_once = True
    config.optim.learning_rate = 1e-10  # voc-fcn8s-atonce/solver.prototxt base_lr.
    config.total_steps = 300_000  # Its max_iter: one stage three times as long as each staged one.
    config.init_from = f"vgg16:{pretrained.keras_cache_path()}"
    return config
