r"""FCN-32s on PASCAL VOC 2012 + SBD, the reference release's recipe (Long et al. 2015, Table 1).

  python train.py --config configs/fcn32s_voc.py --workdir runs/fcn32s_voc

Starts from ImageNet VGG16 (Keras cache file; fetch it once on a machine with internet:
`python -c "import keras; keras.applications.VGG16(weights='imagenet')"`). Expected: about
63.6 mean IU on seg11valid (the paper's FCN-32s figure is 59.4 on VOC2011 test; the release
reports 63.6 on seg11valid). `--config.loss.normalize=True` switches to the pixel-mean loss with an
equivalent learning rate (see configs/fcn_voc_common.py).
"""

from configs import fcn_voc_common
from jaxseg.models import pretrained


def get_config():
    config = fcn_voc_common.fcn_config("fcn32s")
    config.init_from = f"vgg16:{pretrained.keras_cache_path()}"
    return config
