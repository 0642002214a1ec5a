r"""FCN-8s (padded alignment) on ADE20K / SceneParse150 (tfds `scene_parse150`), 150 classes.

  python train.py --config configs/fcn8s_ade20k.py --workdir runs/fcn8s_ade20k

Label 0 ("other") is ignored and 1..150 become 0..149. A practical recipe (SGD, poly schedule,
512 x 512 crops, random scale 0.5-2, batch 16); FCN-8s is reported at about 29 mean IoU on ADE20K
validation (Zhou et al. 2017), the figure to measure against.
"""

from configs import fcn8s_cityscapes


def get_config():
    config = fcn8s_cityscapes.get_config()
    config.model.num_classes = 150
    config.total_steps = 160_000
    config.batch_size = 16
    config.eval_batch_size = 8
    d = config.data
    d.name = "ade20k"
    d.eval_split = "test"  # tfds "test" is ADE20K's validation set.
    d.crop_size = (512, 512)
    d.eval_pad_size = (2048, 2048)
    # Most images are near 512 x 683 px: training pads them to 512/1024/1536/2048 px per side,
    # not all to 2048 x 2048 (8x less to load, move and resample for a typical batch).
    d.pad_buckets = 4
    return config
