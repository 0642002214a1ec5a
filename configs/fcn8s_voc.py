r"""FCN-8s on VOC 2012 + SBD, initialised from a trained FCN-16s run (the paper's staging).

  python train.py --config configs/fcn8s_voc.py --workdir runs/fcn8s_voc \
      --config.init_from=runs/fcn16s_voc

Expected: about 65.5 mean IU on seg11valid (release figure; paper: 62.7 on VOC2011 test).
For the "at-once" variant trained straight from VGG16 with its own solver (lr 1e-10, 300k
steps), use configs/fcn8s_atonce_voc.py.
"""

from configs import fcn_voc_common


def get_config():
    config = fcn_voc_common.fcn_config("fcn8s")
    config.init_from = "runs/fcn16s_voc"  # Layers both nets share are copied; score_pool3 is new.
    return config
