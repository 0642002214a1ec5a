"""`segmentation_folder`: a user's folder of images and masks, paired by file stem.

Layout (sub-directory names are configurable)::

    root/images/<stem>.{png,jpg,jpeg,tif,tiff}
    root/masks/<stem>.{png,tif,tiff}

Masks are either class-index images (`mask_format="index"`: pixel value = class id, 255 =
ignore; palette PNGs such as VOC's give their palette indices) or colour images
(`mask_format="palette"`: each pixel's RGB colour is looked up in a colour table, as CamVid's
masks need; greyscale masks are matched as grey colours, e.g. ISBI 2012's 0/255 masks with the
table ((0, 0, 0), (255, 255, 255))). A multi-page TIFF (an EM stack) gives one example per page,
named `<stem>#<page>`; its mask must have the same number of pages.

Splits: without list files everything is `train`. `val_list` (a text file of stems, one per line,
relative to `root` or absolute) makes a `validation` split and leaves the rest to `train`, unless
`train_list` names the training stems too. A list entry `<stem>` takes all pages of a stack,
`<stem>#<page>` one page.

Every image is checked while building: unreadable files, image/mask size or page-count mismatch,
label ids that are neither a class nor 255, mask colours missing from the table, unpaired files
and empty splits raise `ValueError`s naming the file. The data is stored decoded-and-checked (PNG
class ids), so training never meets a bad example. Data built from a folder is cached under its
config `name`: after changing the folder's content, delete that directory or pick a new name.
"""

import dataclasses
import io
import os

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
MASK_SUFFIXES = (".png", ".tif", ".tiff")
IGNORE_ID = 255


@dataclasses.dataclass(eq=False)
class SegmentationFolderConfig(tfds.core.BuilderConfig):
    """Where a folder data set lives and how to read its masks.

    Attributes:
      root: the folder; `image_dir`, `mask_dir` and relative list paths are inside it.
      image_dir: sub-directory of images.
      mask_dir: sub-directory of masks.
      mask_format: "index" (pixel value = class id) or "palette" (RGB colour table).
      num_classes: number of classes; ids must be < num_classes or 255.
      palette: for "palette" masks, the RGB colour of class 0, 1, ... (tuple of 3-tuples).
      ignore_colors: for "palette" masks, colours that mean "ignore" (stored as 255).
      channels: 1 (greyscale, e.g. EM stacks) or 3 (RGB); images are converted to it.
      train_list: optional list file of training stems.
      val_list: optional list file of validation stems.
    """

    root: str = ""
    image_dir: str = "images"
    mask_dir: str = "masks"
    mask_format: str = "index"
    num_classes: int = 2
    palette: tuple = ()
    ignore_colors: tuple = ()
    channels: int = 3
    train_list: str | None = None
    val_list: str | None = None


def make_config(folder_cfg) -> SegmentationFolderConfig:
    """Builds the tfds config from the `config.data.folder` ConfigDict."""
    where = "config.data.folder"
    if not folder_cfg.root:
        raise ValueError(f"{where}.root: set it to the folder holding the images and masks")
    if folder_cfg.mask_format not in ("index", "palette"):
        raise ValueError(
            f"{where}.mask_format: {folder_cfg.mask_format!r} is not 'index' or 'palette'"
        )
    if folder_cfg.channels not in (1, 3):
        raise ValueError(f"{where}.channels: {folder_cfg.channels} is not 1 or 3")
    num_classes = len(folder_cfg.class_names)
    if not 1 <= num_classes <= IGNORE_ID:
        raise ValueError(f"{where}.class_names: need 1..255 names, got {num_classes}")
    palette = tuple(tuple(int(v) for v in c) for c in folder_cfg.palette)
    if folder_cfg.mask_format == "palette" and len(palette) != num_classes:
        raise ValueError(
            f"{where}.palette: 'palette' masks need one RGB colour per class "
            f"({num_classes}), got {len(palette)}"
        )
    return SegmentationFolderConfig(
        name=folder_cfg.name,
        version="1.0.0",
        description=f"images and masks from {folder_cfg.root}",
        root=os.path.expanduser(folder_cfg.root),
        image_dir=folder_cfg.image_dir,
        mask_dir=folder_cfg.mask_dir,
        mask_format=folder_cfg.mask_format,
        num_classes=num_classes,
        palette=palette,
        ignore_colors=tuple(tuple(int(v) for v in c) for c in folder_cfg.ignore_colors),
        channels=folder_cfg.channels,
        train_list=folder_cfg.train_list,
        val_list=folder_cfg.val_list,
    )


class SegmentationFolder(tfds.core.GeneratorBasedBuilder):
    """A folder of images and masks paired by stem; see the module docstring."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}

    def _info(self) -> tfds.core.DatasetInfo:
        channels = self.builder_config.channels
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(None, None, channels)),
                    "label": tfds.features.Image(shape=(None, None, 1)),
                    "file_name": tfds.features.Text(),
                }
            ),
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # The data is already local.
        cfg = self.builder_config
        pairs = pair_files(cfg)
        return {
            split: self._generate_examples(items)
            for split, items in assign_splits(pairs, cfg).items()
        }

    def _generate_examples(self, items):
        cfg = self.builder_config
        for key, image_path, mask_path, page in items:
            image = read_image(image_path, page, cfg.channels)
            label = read_mask(mask_path, page, cfg)
            if image.shape[:2] != label.shape:
                raise ValueError(
                    f"{image_path} is {image.shape[1]}x{image.shape[0]} px but its mask "
                    f"{mask_path} is {label.shape[1]}x{label.shape[0]} px"
                )
            yield (
                key,
                {
                    "image": _png(image),
                    "label": _png(label[..., None]),
                    "file_name": f"{os.path.basename(image_path)}#{page}",
                },
            )


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array.squeeze(-1) if array.shape[-1] == 1 else array).save(
        buffer, format="PNG", compress_level=1
    )
    return buffer.getvalue()


def _files_by_stem(directory: str, suffixes: tuple[str, ...]) -> dict[str, str]:
    if not os.path.isdir(directory):
        raise ValueError(f"{directory} is not a directory (see config.data.folder)")
    by_stem: dict[str, str] = {}
    for name in sorted(os.listdir(directory)):
        stem, suffix = os.path.splitext(name)
        if suffix.lower() not in suffixes:
            continue
        if stem in by_stem:
            raise ValueError(
                f"{directory}: two files share the stem {stem!r}: "
                f"{os.path.basename(by_stem[stem])} and {name}"
            )
        by_stem[stem] = os.path.join(directory, name)
    return by_stem


def _page_count(path: str) -> int:
    try:
        with Image.open(path) as img:
            return getattr(img, "n_frames", 1)
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: cannot read image: {e}") from e


def pair_files(cfg: SegmentationFolderConfig) -> list[tuple[str, str, str, int]]:
    """Lists (key, image path, mask path, page) for every page of every image, sorted by key."""
    images = _files_by_stem(os.path.join(cfg.root, cfg.image_dir), IMAGE_SUFFIXES)
    masks = _files_by_stem(os.path.join(cfg.root, cfg.mask_dir), MASK_SUFFIXES)
    if not images:
        raise ValueError(
            f"{os.path.join(cfg.root, cfg.image_dir)} holds no images ({', '.join(IMAGE_SUFFIXES)})"
        )
    unpaired = sorted(set(images) ^ set(masks))
    if unpaired:
        stem = unpaired[0]
        have = images.get(stem) or masks.get(stem)
        lacking = "mask" if stem in images else "image"
        raise ValueError(
            f"{have} has no {lacking} with the same stem ({len(unpaired)} unpaired file(s) in all)"
        )
    items = []
    for stem in sorted(images):
        pages = _page_count(images[stem])
        mask_pages = _page_count(masks[stem])
        if pages != mask_pages:
            raise ValueError(
                f"{images[stem]} has {pages} page(s) but {masks[stem]} has {mask_pages}"
            )
        for page in range(pages):
            key = stem if pages == 1 else f"{stem}#{page}"
            items.append((key, images[stem], masks[stem], page))
    return items


def _read_list(path: str, root: str, items_by_key: dict, stems: dict) -> set[str]:
    path = path if os.path.isabs(path) else os.path.join(root, path)
    try:
        with open(path) as f:
            entries = [line.strip() for line in f if line.strip()]
    except OSError as e:
        raise ValueError(f"cannot read split list {path}: {e}") from e
    keys = set()
    for entry in entries:
        if entry in items_by_key:
            keys.add(entry)
        elif entry in stems:
            keys.update(stems[entry])
        else:
            raise ValueError(f"{path}: {entry!r} matches no image stem (or <stem>#<page>)")
    return keys


def assign_splits(items: list, cfg: SegmentationFolderConfig) -> dict[str, list]:
    """Splits the paired items into `train` (and `validation`) per the list files."""
    by_key = {item[0]: item for item in items}
    stems: dict[str, list[str]] = {}
    for key, image_path, _, _ in items:
        stems.setdefault(os.path.splitext(os.path.basename(image_path))[0], []).append(key)
    splits = {}
    if cfg.val_list:
        splits["validation"] = _read_list(cfg.val_list, cfg.root, by_key, stems)
    if cfg.train_list:
        splits["train"] = _read_list(cfg.train_list, cfg.root, by_key, stems)
    else:
        splits["train"] = set(by_key) - splits.get("validation", set())
    for split, keys in splits.items():
        if not keys:
            raise ValueError(
                f"split {split!r} of folder {cfg.root} is empty "
                f"(train_list={cfg.train_list}, val_list={cfg.val_list})"
            )
    return {split: [by_key[k] for k in sorted(keys)] for split, keys in splits.items()}


def read_image(path: str, page: int, channels: int) -> np.ndarray:
    """Reads one page as uint8 [H, W, channels]; raises ValueError naming an unreadable file."""
    try:
        with Image.open(path) as img:
            img.seek(page)
            if img.mode in ("I;16", "I;16B", "I"):
                # 16-bit EM/microscopy: scale the full range to 8 bits rather than clip it.
                values = np.asarray(img, np.float64)
                top = max(values.max(), 1.0)
                array = np.round(values * (255.0 / top)).astype(np.uint8)
                array = np.repeat(array[..., None], channels, -1)
            else:
                array = np.asarray(img.convert("L" if channels == 1 else "RGB"))
    except (OSError, ValueError, EOFError) as e:
        raise ValueError(f"{path}: cannot read image (page {page}): {e}") from e
    return array.reshape(array.shape[0], array.shape[1], channels)


def read_mask(path: str, page: int, cfg: SegmentationFolderConfig) -> np.ndarray:
    """Reads one mask page as uint8 class ids [H, W] (255 = ignore), checking every id."""
    try:
        with Image.open(path) as img:
            img.seek(page)
            mode = img.mode
            raw = np.asarray(img.convert("RGB") if cfg.mask_format == "palette" else img)
    except (OSError, ValueError, EOFError) as e:
        raise ValueError(f"{path}: cannot read mask (page {page}): {e}") from e
    if cfg.mask_format == "palette":
        return _colours_to_ids(raw, path, cfg)
    if raw.ndim == 3:
        if not (raw[..., :3] == raw[..., :1]).all():
            raise ValueError(
                f"{path}: mask is a colour ({mode}) image; class-index masks must be single "
                "channel, or set config.data.folder.mask_format='palette' with a colour table"
            )
        raw = raw[..., 0]
    bad = np.unique(raw[(raw >= cfg.num_classes) & (raw != IGNORE_ID)])
    if bad.size:
        raise ValueError(
            f"{path}: label id(s) {bad[:10].tolist()} are neither a class "
            f"(0..{cfg.num_classes - 1}) nor {IGNORE_ID} (ignore)"
        )
    return raw.astype(np.uint8)


def _colours_to_ids(rgb: np.ndarray, path: str, cfg: SegmentationFolderConfig) -> np.ndarray:
    packed = (
        (rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8) | rgb[..., 2]
    )
    colours, inverse = np.unique(packed, return_inverse=True)
    lookup = {(r << 16) | (g << 8) | b: i for i, (r, g, b) in enumerate(cfg.palette)}
    lookup.update({(r << 16) | (g << 8) | b: IGNORE_ID for r, g, b in cfg.ignore_colors})
    ids = np.array([lookup.get(int(c), -1) for c in colours])
    if (ids < 0).any():
        unknown = [(c >> 16 & 255, c >> 8 & 255, c & 255) for c in colours[ids < 0].tolist()]
        raise ValueError(
            f"{path}: mask colour(s) {unknown[:5]} are not in the colour table "
            "(config.data.folder.palette / ignore_colors)"
        )
    return ids[inverse].reshape(rgb.shape[:2]).astype(np.uint8)
