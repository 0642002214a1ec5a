"""One spec per data set: where it comes from, how its labels map to class ids, its metadata.

`DATASETS[name]` is keyed by `config.data.name`. Every spec yields, after `decode`, a uint8 image
[H, W, C] and a class-id label [H, W] with 255 = ignore; the pipeline does the rest. Our own
builders (synthetic scenes, VOC+SBD, image folders) store labels already mapped and checked at
build time; tfds-hosted data sets are mapped through a 256-entry lookup table, where every raw
value the data set does not document maps to 255.

No TensorFlow is needed to build our own data sets or to read any prepared one. tfds's own
builders of oxford_iiit_pet, cityscapes and ade20k call TensorFlow while generating (archive
extraction, `tf.io.gfile`, `tf.image`), so preparing those once needs it; `jaxseg.data.loading`
says so when it is missing.
"""

import dataclasses
from collections.abc import Callable

import ml_collections
import tensorflow_datasets as tfds

from jaxseg.data.builders import image_folder, synthetic_scenes, voc_sbd
from jaxseg.labels import IGNORE_ID, voc_palette


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """How to read one data set and what the trainer needs to know about it.

    Attributes:
      name: key in `DATASETS` (= `config.data.name`).
      class_names: one name per class id 0..num_classes-1.
      palette: RGB colour per class, for visualisation.
      image_channels: C of the decoded image (1 greyscale, 3 RGB).
      image_key: feature holding the encoded image.
      label_key: feature holding the encoded mask; its first channel is the raw label.
      id_key: feature naming the example in error messages, or None.
      label_map: raw value -> class id (255 = ignore) for all 256 raw values, or None when the
        stored labels are already class ids.
      make_builder: `config.data` -> the tfds builder, writing/reading ArrayRecord files so the
        pipeline can read examples by index.
    """

    name: str
    class_names: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]
    image_channels: int
    image_key: str
    label_key: str
    id_key: str | None
    label_map: tuple[int, ...] | None
    make_builder: Callable[[ml_collections.ConfigDict], tfds.core.DatasetBuilder]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def _table(mapping: dict[int, int]) -> tuple[int, ...]:
    return tuple(mapping.get(raw, IGNORE_ID) for raw in range(256))


def _hosted(tfds_name: str) -> Callable[[ml_collections.ConfigDict], tfds.core.DatasetBuilder]:
    def make_builder(data_cfg: ml_collections.ConfigDict) -> tfds.core.DatasetBuilder:
        try:
            return tfds.builder(tfds_name, data_dir=data_cfg.data_dir, file_format="array_record")
        except ValueError as e:
            if "File format is already set" not in str(e):
                raise
            raise ValueError(
                f"{tfds_name} in {data_cfg.data_dir or 'the tfds data dir'} was prepared as "
                "TFRecord; jaxseg reads examples by index and needs ArrayRecord. Convert it "
                "(`tfds convert_format`), delete it, or point config.data.data_dir elsewhere."
            ) from e

    return make_builder


def _synthetic_builder(data_cfg: ml_collections.ConfigDict) -> tfds.core.DatasetBuilder:
    s = data_cfg.synthetic
    config = synthetic_scenes.make_config(s.image_size, s.num_train, s.num_validation, s.seed)
    if config in synthetic_scenes.SyntheticScenes.BUILDER_CONFIGS:
        # By name: a builder is pickled into loader workers, and an unpickled copy of a
        # registered config would count as a custom config with a registered name.
        config = config.name
    return synthetic_scenes.SyntheticScenes(
        config=config, data_dir=data_cfg.data_dir, file_format="array_record"
    )


def _voc_builder(data_cfg: ml_collections.ConfigDict) -> tfds.core.DatasetBuilder:
    return voc_sbd.VocSbd(data_dir=data_cfg.data_dir, file_format="array_record")


def _folder_builder(data_cfg: ml_collections.ConfigDict) -> tfds.core.DatasetBuilder:
    return image_folder.SegmentationFolder(
        config=image_folder.make_config(data_cfg.folder),
        data_dir=data_cfg.data_dir,
        file_format="array_record",
    )


# Cityscapes labelIds -> the 19 train ids of cityscapesScripts' labels.py; all else is ignored.
_CITYSCAPES_TRAIN_IDS = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9,
    23: 10, 24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}  # fmt: skip
_CITYSCAPES_CLASSES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
    "motorcycle", "bicycle",
)  # fmt: skip
_CITYSCAPES_PALETTE = (
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153),
    (153, 153, 153), (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152),
    (70, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100),
    (0, 80, 100), (0, 0, 230), (119, 11, 32),
)  # fmt: skip
# ADE20K / SceneParse150 class names, in id order 1..150 (objectInfo150).
_ADE20K_CLASSES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane",
    "grass", "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant",
    "curtain", "chair", "car", "water", "painting", "sofa", "shelf", "house", "sea", "mirror",
    "rug", "field", "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp", "bathtub",
    "railing", "cushion", "base", "box", "column", "signboard", "chest of drawers", "counter",
    "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand", "path", "stairs",
    "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge",
    "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench",
    "countertop", "stove", "palm", "kitchen island", "computer", "swivel chair", "boat", "bar",
    "arcade machine", "hovel", "bus", "towel", "light", "truck", "tower", "chandelier",
    "awning", "streetlight", "booth", "television receiver", "airplane", "dirt track",
    "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle", "buffet",
    "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer",
    "plaything", "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag",
    "minibike", "cradle", "oven", "ball", "food", "step", "tank", "trade name", "microwave",
    "pot", "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture", "hood",
    "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen", "plate",
    "monitor", "bulletin board", "shower", "radiator", "glass", "clock", "flag",
)  # fmt: skip
assert len(_ADE20K_CLASSES) == 150

DATASETS: dict[str, DatasetSpec] = {
    "synthetic_scenes": DatasetSpec(
        name="synthetic_scenes",
        class_names=synthetic_scenes.CLASS_NAMES,
        palette=synthetic_scenes.PALETTE,
        image_channels=3,
        image_key="image",
        label_key="label",
        id_key="file_name",
        label_map=None,
        make_builder=_synthetic_builder,
    ),
    "voc_sbd": DatasetSpec(
        name="voc_sbd",
        class_names=voc_sbd.CLASS_NAMES,
        palette=voc_palette(len(voc_sbd.CLASS_NAMES)),
        image_channels=3,
        image_key="image",
        label_key="label",
        id_key="file_name",
        label_map=None,
        make_builder=_voc_builder,
    ),
    "oxford_iiit_pet": DatasetSpec(
        name="oxford_iiit_pet",
        # The trimap: 1 pet, 2 background, 3 the uncertain border around the pet.
        class_names=("background", "pet", "boundary"),
        palette=((0, 0, 0), (255, 128, 0), (255, 255, 255)),
        image_channels=3,
        image_key="image",
        label_key="segmentation_mask",
        id_key="file_name",
        label_map=_table({1: 1, 2: 0, 3: 2}),
        make_builder=_hosted("oxford_iiit_pet"),
    ),
    "cityscapes": DatasetSpec(
        name="cityscapes",
        class_names=_CITYSCAPES_CLASSES,
        palette=_CITYSCAPES_PALETTE,
        image_channels=3,
        image_key="image_left",
        label_key="segmentation_label",
        id_key="image_id",
        label_map=_table(_CITYSCAPES_TRAIN_IDS),
        make_builder=_hosted("cityscapes/semantic_segmentation"),
    ),
    "ade20k": DatasetSpec(
        name="ade20k",
        class_names=_ADE20K_CLASSES,
        palette=voc_palette(len(_ADE20K_CLASSES) + 1)[1:],
        image_channels=3,
        # tfds's "test" split is ADE20K's official validation set (2000 images).
        image_key="image",
        label_key="annotation",
        id_key=None,
        # 0 is "other" (unlabelled): ignored; 1..150 -> 0..149 (first channel of the PNG).
        label_map=_table({raw: raw - 1 for raw in range(1, 151)}),
        make_builder=_hosted("scene_parse150"),
    ),
    "image_folder": DatasetSpec(
        name="image_folder",
        # Classes, palette and channels come from config.data.folder; see dataset_spec().
        class_names=(),
        palette=(),
        image_channels=3,
        image_key="image",
        label_key="label",
        id_key="file_name",
        label_map=None,
        make_builder=_folder_builder,
    ),
}


def get_spec(name: str) -> DatasetSpec:
    """The spec registered under `name`; the error lists the valid names."""
    if name not in DATASETS:
        raise ValueError(
            f"config.data.name: unknown data set {name!r}; valid names: {sorted(DATASETS)}"
        )
    return DATASETS[name]


def dataset_spec(data_cfg: ml_collections.ConfigDict) -> DatasetSpec:
    """The spec for `config.data`, with the folder data set's classes filled in from the config.

    This is what the trainer should call for num_classes, class names, palette and channels.
    """
    spec = get_spec(data_cfg.name)
    if spec.name != "image_folder":
        return spec
    folder = data_cfg.folder
    class_names = tuple(folder.class_names)
    palette = tuple(tuple(int(v) for v in c) for c in folder.palette) or voc_palette(
        len(class_names)
    )
    return dataclasses.replace(
        spec, class_names=class_names, palette=palette, image_channels=folder.channels
    )


def recorded_intensity_range(data_cfg: ml_collections.ConfigDict) -> tuple[float, ...]:
    """The 16-bit intensity range the built data set maps to 0..255 (see jaxseg.data.images).

    `config.data.folder.intensity_range` when set; for an auto-ranged image folder the range
    recorded when it was built; () when the data set records none (built-in data sets, folders
    without 16-bit images), meaning 16-bit inputs are scaled by the full range 0..65535.
    Call after the data set is built (the train loop does so once its input pipeline exists).
    """
    explicit = tuple(float(v) for v in data_cfg.folder.intensity_range)
    if data_cfg.name != "image_folder" or explicit:
        return explicit
    return image_folder.recorded_intensity_range(_folder_builder(data_cfg))
