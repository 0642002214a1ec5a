r"""The neutral base: every config field, each with its comment, at recipe-free values.

  python train.py --config configs/base.py --workdir runs/base

Every config in configs/ imports this file and overrides only what its recipe changes
(configs/default.py: the README's synthetic-scenes recipe; fcn*_voc.py, unet_isbi.py: the
papers'; unet_pets.py, fcn8s_cityscapes.py, ...: practical recipes). The values here take no side:
uniform class weights, cross-entropy only, plain (unflipped) evaluation, and the papers' dropout
0.5 (both the U-Net and the FCN drop at 0.5). Start here for your own data: nothing in it is
tuned to a data set's classes, so `--config.model.num_classes` and
`--config.data.folder.class_names` are all that must agree (README.md, "Data").

Every field of every model family is defined here (the U-Net's and the FCN's fields side by
side in `config.model`; each model takes the ones it has), and `--config.<key>=<value>`
overrides any of them (a misspelt key is an error). Alone, this file trains the padded U-Net on
the embedded synthetic scenes, offline, on a CPU (1400 steps of batch 16); its result is not
measured: configs/default.py is the measured recipe for that data set.
"""

import ml_collections
from ml_collections import config_dict


def data_config() -> ml_collections.ConfigDict:
    data = ml_collections.ConfigDict()
    # Data set: a key of jaxseg.data.datasets.DATASETS (synthetic_scenes, voc_sbd,
    # oxford_iiit_pet, cityscapes, ade20k, image_folder).
    data.name = "synthetic_scenes"
    # tfds data dir; None = tfds default ($TFDS_DATA_DIR or ~/tensorflow_datasets).
    data.data_dir = config_dict.placeholder(str)
    # Manual downloads (VOC/SBD tars, Cityscapes zips); None = <data_dir>/downloads/manual.
    data.manual_dir = config_dict.placeholder(str)
    # Split to train on (tfds slicing allowed, e.g. "train[:90%]").
    data.train_split = "train"
    # Split to evaluate on.
    data.eval_split = "validation"
    # Training crop (height, width) in px, taken after random scaling; padded with label 255.
    # Augmentation runs on the device (jaxseg/data/augment.py): scale, crop, flip, rotation,
    # shift and elastic deformation as one sampling grid per example (bicubic image when the
    # recipe rotates, shifts or deforms, bilinear otherwise; nearest-neighbour label), then the
    # photometric jitter.
    data.crop_size = (96, 96)
    # Random rescale factor range, drawn uniformly; (1.0, 1.0) turns scaling off.
    data.min_scale = 0.75
    data.max_scale = 1.25
    # Random left-right flip with probability 1/2.
    data.hflip = True
    # Photometric jitter: brightness +-delta, contrast/saturation x[1-v, 1+v], hue +-turns; 0 = off.
    data.brightness = 0.1
    data.contrast = 0.1
    data.saturation = 0.1
    data.hue = 0.02
    # U-Net elastic deformation: coarse grid_size x grid_size displacements, N(0, sigma px).
    data.elastic = False
    data.elastic_grid = 3
    data.elastic_sigma = 10.0
    # Random rotation, uniform in +-rotation_degrees, and shift, uniform in +-shift_px per axis
    # (the U-Net paper's shift/rotation augmentation; mirrored at the borders); 0 = off.
    data.rotation_degrees = 0.0
    data.shift_px = 0.0
    # The U-Net paper's border weight map (eq. 2) as the batch's "weight" key: w_c (class
    # balance) + w0 * exp(-(d1 + d2)^2 / (2 sigma^2)) on background pixels between cells,
    # precomputed once per ground-truth example as in the paper (stored beside the data set,
    # jaxseg/data/weight_maps.py) and warped with the example's sampling grid (nearest
    # neighbour, like the label). Binary data only: class 1 = cell.
    data.weight_map = False
    data.weight_map_w0 = 10.0  # w0, the border weight (paper: 10).
    data.weight_map_sigma = 5.0  # sigma, the border width in px (paper: about 5).
    # Per-channel normalisation, [0, 1] units (ImageNet statistics; match pretrained weights).
    data.mean = (0.485, 0.456, 0.406)
    data.std = (0.229, 0.224, 0.225)
    # The fixed (height, width) every example is padded to on the host (label 255), for
    # evaluation (native resolution, image 0 after normalisation) and as the source array of the
    # training augmentation; a larger example is an error naming it.
    data.eval_pad_size = (128, 128)
    # Pad sizes per axis for training examples: eval_pad_size * k / pad_buckets (k = 1 ..
    # pad_buckets, rounded up to 32 px). Each example goes to its smallest, nearby examples of
    # the shuffled order are batched by size, and a batch takes its largest member's (one
    # compilation of the augmentation per shape met). For data sets whose sizes vary a lot; 1 =
    # every example padded to eval_pad_size. The examples' sizes are read once and stored beside
    # the data set (jaxseg/data/precomputed.py).
    data.pad_buckets = 1
    # Batches loaded, transferred and augmented ahead of the training step.
    data.prefetch_batches = 2
    # Loader worker processes (Grain) that read and decode examples; 0 = two threads of the
    # training process (enough for the small default images on a 2-core CPU). -1 = automatic:
    # 0 where the model runs on the CPU (workers would take the step's cores), else 8 per local
    # accelerator, at most the usable cores minus one (8 feed an H200 2-3x what the paper
    # U-Net and FCN-8s steps consume: BENCHMARKS.md, "H200"). Batches are the same for any value.
    data.loader_workers = -1

    # synthetic_scenes generation (a new combination builds a new copy in seconds).
    data.synthetic = ml_collections.ConfigDict()
    data.synthetic.image_size = 128  # square images, px
    data.synthetic.num_train = 3000  # train split size
    data.synthetic.num_validation = 300  # validation split size
    data.synthetic.seed = 0  # generation seed; same values -> identical data

    # image_folder: a folder of images + masks paired by file stem (see
    # jaxseg/data/builders/image_folder.py for the layout and split lists).
    data.folder = ml_collections.ConfigDict()
    # Cache name under <data_dir>/segmentation_folder/ (suffixed with a digest of the root,
    # the options and the files' names/sizes/mtimes, so a changed folder is rebuilt).
    data.folder.name = "my_folder"
    data.folder.root = config_dict.placeholder(str)  # the folder; required for image_folder
    data.folder.image_dir = "images"  # images sub-directory (png/jpg/tif, multi-page tif = stack)
    data.folder.mask_dir = "masks"  # masks sub-directory, same stems
    data.folder.mask_format = "index"  # "index": pixel = class id; "palette": RGB colour table
    data.folder.class_names = ("background", "foreground")  # one per class id
    data.folder.palette = ()  # RGB per class; required for mask_format="palette"
    data.folder.ignore_colors = ()  # palette masks: colours that mean ignore (255)
    data.folder.channels = 3  # 1 = greyscale (EM), 3 = RGB
    data.folder.train_list = config_dict.placeholder(str)  # optional list file of train stems
    data.folder.val_list = config_dict.placeholder(str)  # optional list of validation stems
    # Index masks: raw ids stored as 255 = ignore, e.g. (11,) for CamVid's void.
    data.folder.ignore_ids = ()
    # Index masks: ((raw id, class id), ...) remapping, e.g. ((255, 1),) for 0/255 binary masks.
    data.folder.id_map = ()
    # Index masks: ADE20K style, 0 = unlabelled -> 255 and every other id v -> v - 1.
    data.folder.reduce_zero_label = False
    # 16-bit images: (low, high) raw values mapped linearly to 0..255 for every image alike;
    # () = the folder's own min..max over all 16-bit images, found when the data set is built
    # (train.py then records it here in the run's config.json, for eval.py and predict.py).
    data.folder.intensity_range = ()
    return data


def optim_config() -> ml_collections.ConfigDict:
    """A small U-Net's optimiser: AdamW + linear warmup + cosine decay."""
    optim = ml_collections.ConfigDict()
    optim.optimizer = "adamw"  # "sgd" (momentum / Nesterov) or "adamw" (Adam scaling).
    optim.learning_rate = 3e-3  # Peak learning rate, reached at the end of warmup.
    optim.momentum = 0.9  # SGD only: heavy-ball momentum coefficient.
    optim.nesterov = False  # SGD only: Nesterov momentum.
    optim.b1 = 0.9  # AdamW only: first-moment decay.
    optim.b2 = 0.999  # AdamW only: second-moment decay.
    optim.eps = 1e-8  # AdamW only: denominator epsilon.
    optim.weight_decay = 1e-2  # Never applied to biases / norm params (optim.decay_mask); 0 = off.
    optim.weight_decay_mode = "decoupled"  # "decoupled" (AdamW: lr*wd*w) or "coupled" (L2 in grad).
    optim.grad_clip_norm = 1.0  # Global-norm clip over trainable grads; 0 = off.
    optim.schedule = "cosine"  # "constant", "step", "poly" or "cosine".
    optim.warmup_steps = 50  # Linear ramp from 0 to learning_rate; must be < total_steps.
    optim.step_boundaries = ()  # "step" only: global steps where lr is multiplied by step_factor.
    optim.step_factor = 0.1  # "step" only: multiplier applied at each boundary.
    optim.poly_power = 0.9  # "poly" only: lr * (1 - t/T) ** power, 0 at total_steps (DeepLab).
    optim.cosine_end_factor = 0.0  # "cosine" only: final lr as a fraction of learning_rate.
    optim.lr_multipliers = ()  # ((regex, factor), ...) on '/'-joined param paths; first match wins.
    optim.frozen = ()  # (regex, ...) of param paths given zero updates (e.g. a frozen backbone).
    return optim


def model_config() -> ml_collections.ConfigDict:
    """The fields of every model family; `jaxseg.models.build_model` passes each model its own."""
    model = ml_collections.ConfigDict()
    model.name = "unet_padded"  # A key of jaxseg.models.MODELS (unet, unet_padded, fcn32s, ...).
    # Must equal the data set's class count (image_folder: len(data.folder.class_names)).
    model.num_classes = 6
    # Both families: dropout at the end of the U-Net's contracting path (the authors' release)
    # and after the FCN's fc6 / fc7, at both papers' rate.
    model.dropout_rate = 0.5
    model.dtype = "float32"  # Compute dtype: "float32" or "bfloat16" (params stay f32).
    # U-Net only (unet, unet_padded).
    model.base_width = 16  # Channels of the first level (64 in the paper).
    model.depth = 4  # Number of 2x2 max-pools.
    model.use_batchnorm = True  # BatchNorm after every conv (global over devices).
    model.upsampling = "transpose"  # "transpose" (2x2 up-conv) or "bilinear".
    # FCN only (fcn32s, fcn16s, fcn8s).
    # "reference": the release's pad 100 + published crop offsets; "padded": inputs padded to a
    # multiple of 32, any size.
    model.alignment = "reference"
    # False: the release's fixed bilinear deconvolutions (lr_mult 0); True: learned.
    model.learnable_upsampling = False
    model.at_once = False  # True: the "at-once" FCN-8s (pool4 x 0.01, pool3 x 1e-4 before scoring).
    return model


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0  # Seeds parameter init, dropout and the data order/augmentation.

    # Durations, all in optimiser steps.
    config.total_steps = 1400  # Length of the run; the lr schedule ends here.
    config.log_every_steps = 50  # Train metrics to metrics.jsonl / TensorBoard / progress bar.
    config.eval_every_steps = 700  # Validation on config.data.eval_split (and at the end).
    config.checkpoint_every_steps = 700  # Asynchronous orbax saves (plus after each eval).
    config.checkpoint_keep = 2  # Most recent checkpoints kept, plus the best by val mIoU.
    # Stop (with a checkpoint) after this many steps in one invocation, 0 = no limit: for
    # clusters with job time limits, and to test resumption. Rerunning continues the run.
    config.max_steps_per_run = 0

    config.batch_size = 16  # Global batch over all devices and hosts.
    config.eval_batch_size = 16  # Global eval batch; padded with masked examples at the end.
    config.grad_accum_steps = 1  # Micro-batches per step (batch_size must divide by it).
    # "" = random init; a run's workdir = its latest params; "vgg16:<file>" = ImageNet VGG16
    # (Keras .h5 or .npz, see jaxseg/models/pretrained.py) transplanted into an FCN trunk.
    config.init_from = ""

    config.mesh = ml_collections.ConfigDict()
    config.mesh.fsdp = 1  # Devices per parameter shard (fsdp axis); 1 = replicate parameters.
    config.mesh.fsdp_min_size = 2**18  # Leaves smaller than this stay replicated under fsdp.

    config.model = model_config()

    config.loss = ml_collections.ConfigDict()
    # True: mean over scored pixels; False: the FCN release's per-image sum (tiny lr needed).
    config.loss.normalize = True
    # Per-class CE weights, one per class id (checked against model.num_classes at start-up);
    # () = uniform.
    config.loss.class_weights = ()
    config.loss.dice_weight = 0.0  # Adds dice_weight * soft Dice to the CE loss; 0 = off.

    # Inference used by evaluation (train loop and eval.py): jaxseg.inference.predict_logits.
    config.eval = ml_collections.ConfigDict()
    # "whole_image", "sliding_window" (needs crop, stride) or "overlap_tile" (valid U-Net).
    config.eval.mode = "whole_image"
    config.eval.crop = (0, 0)  # sliding_window: window (height, width), px.
    config.eval.stride = (0, 0)  # sliding_window: step (height, width), px.
    config.eval.tile_in = (0, 0)  # overlap_tile: input tile (height, width), e.g. (572, 572).
    config.eval.flip = False  # Also average the left-right mirrored prediction.
    config.eval.scales = (1.0,)  # Average over these input scales (multi-scale testing).
    # Binary membrane data (class 0 = membrane, 1 = cell): also report the ISBI 2012 challenge's
    # pixel error and foreground-restricted Rand error (jaxseg.metrics.rand_statistics).
    config.eval.isbi_metrics = False

    config.optim = optim_config()
    config.data = data_config()
    return config
