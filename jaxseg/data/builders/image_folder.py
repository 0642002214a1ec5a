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

Index masks whose raw values are not the class ids are mapped while building, in this order
for each raw value v:
  * `ignore_ids`: v in it -> 255 (ignore), e.g. `(11,)` for CamVid's void id 11;
  * `id_map`: ((raw, class_id), ...) pairs, e.g. `((255, 1),)` for 0/255 binary masks whose
    255 is the foreground; a pair (255, 255) says that 255 really is "ignore";
  * `reduce_zero_label`: ADE20K-style masks where 0 is "unlabelled": 0 -> 255, v -> v - 1;
  * otherwise v is the class id. Raw 255 stays 255 (ignore) unless mapped.
A split whose masks hold only 0 and 255 (no id 1..254 anywhere) is a 0/255 binary mask set read
as index masks: every foreground pixel would be ignored, so the build stops naming a file and
the fix (`id_map=((255, 1),)`).

Images: 8-bit files are converted to `channels`; 16-bit greyscale ones are mapped to 8 bits by
one data-set-wide range (`intensity_range`, or the folder's own min..max when it is ()), the rule
of `jaxseg.data.images`, which predict.py applies to raw files too. The range used is recorded in
the built data set (`builder.info.metadata["intensity_range"]`) and in the run's config.json.

Every image is checked while building: unreadable files, image/mask size or page-count mismatch,
label ids that are neither a class nor 255, mask colours missing from the table, unpaired files,
file names that are not UTF-8 and empty splits raise `ValueError`s naming the file. The data is
stored decoded-and-checked (PNG class ids), so training never meets a bad example.

Cache: the built data lives under `<data_dir>/segmentation_folder/<name>_<key>/`, where `key`
is a digest of the folder's absolute root, every option above and a fingerprint of the files
(names, sizes, modification times, split-list contents): a changed file, a new root with the
same `name` or changed options build a fresh copy instead of reusing stale data. Old copies are
never deleted automatically; remove `<data_dir>/segmentation_folder/` to reclaim the space.
"""

import dataclasses
import hashlib
import io
import json
import os

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from jaxseg.data import images
from jaxseg.labels import IGNORE_ID

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
MASK_SUFFIXES = (".png", ".tif", ".tiff")


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
      ignore_ids: index masks: raw ids stored as 255 (ignore).
      id_map: index masks: ((raw, class id), ...) remapping pairs.
      reduce_zero_label: index masks: 0 -> 255 and v -> v - 1 (ADE20K style).
      intensity_range: 16-bit images: (low, high) raw values mapped to 0..255; () = the
        folder's own min..max, found while building. Not part of the cache key: a built copy
        records the range it used and refuses a different explicit one (see `check_recorded`).
      fingerprint: digest of root, options and files (the cache key; see the module docstring).
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
    ignore_ids: tuple = ()
    id_map: tuple = ()
    reduce_zero_label: bool = False
    intensity_range: tuple = ()
    fingerprint: str = ""


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
    if not 2 <= num_classes <= IGNORE_ID:
        # One class would train to a perfect score on nothing (loss and gradients exactly 0).
        raise ValueError(
            f"{where}.class_names: need 2..{IGNORE_ID} names (segmentation needs a background "
            f"and at least one other class), got {num_classes}"
        )
    palette = tuple(tuple(int(v) for v in c) for c in folder_cfg.palette)
    if folder_cfg.mask_format == "palette" and len(palette) != num_classes:
        raise ValueError(
            f"{where}.palette: 'palette' masks need one RGB colour per class "
            f"({num_classes}), got {len(palette)}"
        )
    ignore_ids, id_map = _checked_id_options(folder_cfg, num_classes)
    intensity_range = tuple(float(v) for v in folder_cfg.intensity_range)
    if intensity_range and (len(intensity_range) != 2 or intensity_range[0] >= intensity_range[1]):
        raise ValueError(
            f"{where}.intensity_range: {folder_cfg.intensity_range} is not () or (low, high) "
            "with low < high"
        )
    options = dict(
        root=os.path.abspath(os.path.expanduser(folder_cfg.root)),
        image_dir=folder_cfg.image_dir,
        mask_dir=folder_cfg.mask_dir,
        mask_format=folder_cfg.mask_format,
        num_classes=num_classes,
        palette=palette,
        ignore_colors=tuple(tuple(int(v) for v in c) for c in folder_cfg.ignore_colors),
        channels=folder_cfg.channels,
        train_list=folder_cfg.train_list,
        val_list=folder_cfg.val_list,
        ignore_ids=ignore_ids,
        id_map=id_map,
        reduce_zero_label=bool(folder_cfg.reduce_zero_label),
    )
    fingerprint = _fingerprint(options)
    return SegmentationFolderConfig(
        # The tfds directory name: one built copy per (data, options), see the module docstring.
        name=f"{folder_cfg.name}_{fingerprint[:12]}",
        version="1.0.0",
        description=f"images and masks from {options['root']}",
        intensity_range=intensity_range,
        fingerprint=fingerprint,
        **options,
    )


def _checked_id_options(folder_cfg, num_classes: int) -> tuple[tuple, tuple]:
    where = "config.data.folder"
    ignore_ids = tuple(sorted(int(v) for v in folder_cfg.ignore_ids))
    try:
        id_map = tuple(sorted((int(raw), int(cls)) for raw, cls in folder_cfg.id_map))
    except (TypeError, ValueError) as e:
        raise ValueError(
            f"{where}.id_map: {folder_cfg.id_map} is not ((raw id, class id), ...) pairs"
        ) from e
    raws = [raw for raw, _ in id_map]
    if len(set(raws)) != len(raws):
        raise ValueError(f"{where}.id_map: raw id(s) listed twice in {folder_cfg.id_map}")
    both = sorted(set(raws) & set(ignore_ids))
    if both:
        raise ValueError(f"{where}: raw id(s) {both} are in both ignore_ids and id_map")
    bad = [(raw, cls) for raw, cls in id_map if not (0 <= cls < num_classes or cls == IGNORE_ID)]
    if bad:
        raise ValueError(
            f"{where}.id_map: target(s) {bad} are neither a class (0..{num_classes - 1}) nor "
            f"{IGNORE_ID} (ignore)"
        )
    if (ignore_ids or id_map or folder_cfg.reduce_zero_label) and (
        folder_cfg.mask_format != "index"
    ):
        raise ValueError(
            f"{where}.ignore_ids / id_map / reduce_zero_label apply to mask_format='index' only; "
            "palette masks use ignore_colors"
        )
    return ignore_ids, id_map


def _check_link(path: str) -> None:
    """A symbolic link is followed (users link their data in), unless its target is missing."""
    if os.path.islink(path) and not os.path.exists(path):
        raise ValueError(
            f"{path} is a broken symbolic link (to {os.readlink(path)!r}, which does not "
            "exist); fix or remove it"
        )


def linked_files(pairs: list[tuple[str, str, str, int]], root: str) -> dict[str, str]:
    """{path relative to root: resolved path} of the paired files that are symbolic links
    leading out of `root`, recorded in the build's metadata (what the data set was built from)."""
    inside = os.path.realpath(root)
    out = {}
    for _, image, mask, _ in pairs:
        for path in (image, mask):
            target = os.path.realpath(path)
            if os.path.islink(path) and os.path.commonpath([inside, target]) != inside:
                out[os.path.relpath(path, root)] = target
    return out


def _fingerprint(options: dict) -> str:
    """sha256 over the options and every file's name, size and mtime (no file is read)."""
    digest = hashlib.sha256(json.dumps(options, sort_keys=True).encode())
    root = options["root"]
    for sub in (options["image_dir"], options["mask_dir"]):
        directory = os.path.join(root, sub)
        if not os.path.isdir(directory):
            continue  # pair_files names the missing directory when the build needs it.
        with os.scandir(directory) as entries:
            for entry in sorted(entries, key=lambda e: e.name):
                _check_link(entry.path)
                stat = entry.stat()
                digest.update(os.fsencode(entry.name) + b"\0")
                digest.update(f"{stat.st_size} {stat.st_mtime_ns}\n".encode())
    for listing in (options["train_list"], options["val_list"]):
        if listing:
            path = listing if os.path.isabs(listing) else os.path.join(root, listing)
            if os.path.isfile(path):
                with open(path, "rb") as f:
                    digest.update(f.read())
    return digest.hexdigest()


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
            # {"intensity_range": [low, high] or [], "root": ..., "fingerprint": ..., "links":
            # {relative path: resolved path} of symbolic links out of the root, "class_pixels":
            # {split: [pixels of class 0, 1, ...]} (`recorded_class_pixels`)}
            metadata=tfds.core.MetadataDict(),
        )

    def download_and_prepare(self, *args, **kwargs):
        super().download_and_prepare(*args, **kwargs)
        check_recorded(self)

    def _split_generators(self, dl_manager):
        del dl_manager  # The data is already local.
        cfg = self.builder_config
        pairs = pair_files(cfg)
        self._range = tuple(cfg.intensity_range) or folder_intensity_range(pairs)
        self.info.metadata.update(
            intensity_range=list(self._range),
            root=cfg.root,
            fingerprint=cfg.fingerprint,
            links=linked_files(pairs, cfg.root),
            class_pixels={},
        )
        return {
            split: self._generate_examples(split, items)
            for split, items in assign_splits(pairs, cfg).items()
        }

    def _generate_examples(self, split, items):
        cfg = self.builder_config
        saw_class, unmapped_255 = False, None
        # Counted here, where every mask is read anyway, so that training can warn about a
        # split with one class present without reading the data again. tfds writes the
        # metadata after the splits are generated, so what is added here is kept.
        class_pixels = np.zeros(cfg.num_classes, np.int64)
        for key, image_path, mask_path, page in items:
            image = images.decode(
                image_path, channels=cfg.channels, page=page, intensity_range=self._range
            )
            label, raw_255 = _read_mask_ids(mask_path, page, cfg)
            saw_class = saw_class or bool(((label > 0) & (label != IGNORE_ID)).any())
            class_pixels += np.bincount(label.ravel(), minlength=IGNORE_ID + 1)[: cfg.num_classes]
            if raw_255 and unmapped_255 is None:
                unmapped_255 = mask_path
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
        if unmapped_255 is not None and not saw_class and cfg.mask_format == "index":
            raise ValueError(
                f"{unmapped_255}: the masks hold only 0 and 255, a 0/255 binary mask set; in "
                "index masks 255 means ignore, so every foreground pixel would be ignored. If "
                "255 is the foreground, set config.data.folder.id_map=((255, 1),); if 255 really "
                "is ignore, say so with id_map=((255, 255),)"
            )
        self.info.metadata["class_pixels"][split] = class_pixels.tolist()


def folder_intensity_range(items) -> tuple[float, float] | tuple[()]:
    """(min, max) raw value over every 16-bit image page of `items`; () if none is 16-bit."""
    low, high = np.inf, -np.inf
    for _, image_path, _, page in items:
        found = images.wide_value_range(image_path, page)
        if found is not None:
            low, high = min(low, found[0]), max(high, found[1])
    return () if low > high else (float(low), float(high))


def recorded_intensity_range(builder: SegmentationFolder) -> tuple[float, ...]:
    """The 16-bit range a built folder data set used; () if it holds no 16-bit images."""
    return tuple(float(v) for v in builder.info.metadata.get("intensity_range", ()))


def recorded_class_pixels(builder: SegmentationFolder, split: str) -> list[int] | None:
    """Pixels of each class id in `split` (a split name, tfds slicing ignored) of a built
    folder data set; None for copies built before these counts were recorded."""
    counts = builder.info.metadata.get("class_pixels", {})
    return counts.get(split.split("[")[0])


def check_recorded(builder: SegmentationFolder) -> None:
    """Raises if the built copy used another 16-bit range than the config explicitly asks for."""
    cfg = builder.builder_config
    recorded = recorded_intensity_range(builder)
    if cfg.intensity_range and recorded and tuple(cfg.intensity_range) != recorded:
        raise ValueError(
            f"config.data.folder.intensity_range={tuple(cfg.intensity_range)} but the data set "
            f"built from {cfg.root} in {builder.data_dir} used {recorded}. Set the recorded "
            "range (or () for it), or delete that directory to rebuild with the new one."
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
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(
                f"{directory}: file name {os.fsencode(name)!r} is not valid UTF-8; rename it "
                "(stems are stored as text)"
            ) from None
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


def _check_unaccepted_mask(directory: str, stem: str) -> None:
    """Names a mask that exists for `stem` in a format masks may not have."""
    for name in sorted(os.listdir(directory)):
        base, suffix = os.path.splitext(name)
        if base != stem or suffix.lower() in MASK_SUFFIXES:
            continue
        path = os.path.join(directory, name)
        if suffix.lower() in (".jpg", ".jpeg"):
            raise ValueError(
                f"{path}: JPEG masks are not accepted: JPEG's lossy compression changes pixel "
                "values around every edge, so the class ids there would be wrong. Save the "
                f"masks losslessly as {' / '.join(MASK_SUFFIXES)}"
            )
        raise ValueError(f"{path}: masks must be {' / '.join(MASK_SUFFIXES)} files, not {suffix}")


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
        if stem in images:
            _check_unaccepted_mask(os.path.join(cfg.root, cfg.mask_dir), stem)
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


def read_image(path: str, page: int, channels: int, intensity_range=()) -> np.ndarray:
    """Reads one page as uint8 [H, W, channels] by `jaxseg.data.images.decode`'s rule."""
    return images.decode(path, channels=channels, page=page, intensity_range=intensity_range)


def _read_mask_ids(path: str, page: int, cfg: SegmentationFolderConfig):
    """(uint8 class ids [H, W], whether a raw 255 was left as ignore without being mapped)."""
    try:
        with Image.open(path) as img:
            img.seek(page)
            img = images.upright(img)  # a mask with an Orientation tag is drawn as shown
            mode = img.mode
            raw = np.asarray(img.convert("RGB") if cfg.mask_format == "palette" else img)
    except (OSError, ValueError, EOFError) as e:
        raise ValueError(f"{path}: cannot read mask (page {page}): {e}") from e
    if cfg.mask_format == "palette":
        return _colours_to_ids(raw, path, cfg), False
    if raw.ndim == 3:
        if not (raw[..., :3] == raw[..., :1]).all():
            raise ValueError(
                f"{path}: mask is a colour ({mode}) image; class-index masks must be single "
                "channel, or set config.data.folder.mask_format='palette' with a colour table"
            )
        raw = raw[..., 0]
    values, inverse = np.unique(raw.astype(np.int64), return_inverse=True)
    ids = _map_ids(values, cfg)
    bad = values[(ids >= cfg.num_classes) & (ids != IGNORE_ID)]
    if bad.size:
        raise ValueError(
            f"{path}: label id(s) {bad[:10].tolist()} are neither a class "
            f"(0..{cfg.num_classes - 1}) nor {IGNORE_ID} (ignore)"
            + (
                ""
                if cfg.ignore_ids or cfg.id_map
                else "; map them with config.data.folder.ignore_ids / id_map / reduce_zero_label"
            )
        )
    raw_255 = IGNORE_ID in values.tolist() and IGNORE_ID not in dict(cfg.id_map)
    return ids[inverse].reshape(raw.shape).astype(np.uint8), raw_255


def _map_ids(values: np.ndarray, cfg: SegmentationFolderConfig) -> np.ndarray:
    """Raw mask values -> class ids by ignore_ids, id_map, reduce_zero_label (module docstring)."""
    id_map = dict(cfg.id_map)
    ids = values.copy()
    for i, v in enumerate(values.tolist()):
        if v in cfg.ignore_ids:
            ids[i] = IGNORE_ID
        elif v in id_map:
            ids[i] = id_map[v]
        elif v == IGNORE_ID:
            ids[i] = IGNORE_ID
        elif cfg.reduce_zero_label:
            ids[i] = IGNORE_ID if v == 0 else v - 1
    return ids


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
