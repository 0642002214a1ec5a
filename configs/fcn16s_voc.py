r"""FCN-16s on VOC 2012 + SBD, initialised from a trained FCN-32s run (the paper's staging).

  python train.py --config configs/fcn16s_voc.py --workdir runs/fcn16s_voc \
      --config.init_from=runs/fcn32s_voc

Expected: about 65.0 mean IU on seg11valid (release figure; paper: 62.4 on VOC2011 test).
"""

from configs import fcn_voc_common


def get_config():
    config = fcn_voc_common.fcn_config("fcn16s")
    config.init_from = "runs/fcn32s_voc"  # Layers both nets share are copied; score_pool4 is new.
    return config
