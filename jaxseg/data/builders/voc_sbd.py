"""`voc_sbd`: PASCAL VOC 2012 segmentation + SBD, with the splits of the FCN paper.

tfds's `voc` has no segmentation masks, so this builder reads the official archives from the
tfds manual download directory (`<data_dir>/downloads/manual` unless `config.data.manual_dir`
says otherwise):

- `VOCtrainval_11-May-2012.tar` (PASCAL VOC 2012 train/val),
- `benchmark.tgz` (SBD, Hariharan et al. 2011: `benchmark_RELEASE/dataset/{img,cls}`),
- and the seg11valid list: either `seg11valid.txt` (from the FCN authors' repository,
  `data/pascal/seg11valid.txt`) or `VOCtrainval_25-May-2011.tar`, from which it is derived as the
  VOC2011 segmentation val images that are not in SBD train (736 images).

Splits (Long et al. 2015, sec. 4.2): `train` = SBD train minus seg11valid (labels from SBD's
`cls/*.mat`), `seg11valid` and `val` (VOC2012 segmentation val, 1449 images) with VOC's palette
PNG labels, whose palette indices are the class ids and whose object borders (255) stay as
"ignore". Label ids are checked while building.
"""

import io
import os
import shutil
import tarfile

import numpy as np
import scipy.io
import tensorflow_datasets as tfds
from PIL import Image

from jaxseg.labels import IGNORE_ID

CLASS_NAMES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
    "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
    "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip
VOC2012_TAR = "VOCtrainval_11-May-2012.tar"
SBD_TGZ = "benchmark.tgz"
SEG11VALID_TXT = "seg11valid.txt"
VOC2011_TAR = "VOCtrainval_25-May-2011.tar"


class VocSbd(tfds.core.GeneratorBasedBuilder):
    """PASCAL VOC 2012 + SBD segmentation with the FCN paper's splits; see the module docstring."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
    Put these files, unmodified, in the manual directory:
      {VOC2012_TAR}  http://host.robots.ox.ac.uk/pascal/VOC/voc2012/{VOC2012_TAR}
      {SBD_TGZ}  http://www.eecs.berkeley.edu/Research/Projects/CS/vision/grouping/semantic_contours/{SBD_TGZ}
      and either {SEG11VALID_TXT} (the FCN repository's data/pascal/{SEG11VALID_TXT})
      or {VOC2011_TAR} (http://host.robots.ox.ac.uk/pascal/VOC/voc2011/{VOC2011_TAR}).
    """

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
                    "label": tfds.features.Image(shape=(None, None, 1), encoding_format="png"),
                    "file_name": tfds.features.Text(),
                }
            ),
        )

    def _split_generators(self, dl_manager):
        try:
            manual = dl_manager.manual_dir
        except AssertionError as e:  # tfds's message names the directory and our instructions
            raise FileNotFoundError(str(e)) from None
        present = set(os.listdir(manual))
        missing = [name for name in (VOC2012_TAR, SBD_TGZ) if name not in present]
        if SEG11VALID_TXT not in present and VOC2011_TAR not in present:
            missing.append(f"{SEG11VALID_TXT} (or {VOC2011_TAR})")
        if missing:
            raise FileNotFoundError(
                f"voc_sbd: missing manual download(s) {missing} in {manual}.\n"
                + self.MANUAL_DOWNLOAD_INSTRUCTIONS
            )
        voc = _find_dir(_extract(dl_manager, manual / VOC2012_TAR), "VOC2012", VOC2012_TAR)
        sbd = _find_dir(_extract(dl_manager, manual / SBD_TGZ), "dataset", SBD_TGZ)
        sbd_train = _read_ids(os.path.join(sbd, "train.txt"))
        if SEG11VALID_TXT in present:
            seg11valid = _read_ids(os.path.join(manual, SEG11VALID_TXT))
        else:
            voc2011 = _find_dir(_extract(dl_manager, manual / VOC2011_TAR), "VOC2011", VOC2011_TAR)
            val2011 = _read_ids(os.path.join(voc2011, "ImageSets", "Segmentation", "val.txt"))
            in_train = set(sbd_train)
            seg11valid = [i for i in val2011 if i not in in_train]
        held_out = set(seg11valid)
        train = [i for i in sbd_train if i not in held_out]
        val = _read_ids(os.path.join(voc, "ImageSets", "Segmentation", "val.txt"))
        return {
            "train": self._generate_examples(train, sbd, "sbd"),
            "seg11valid": self._generate_examples(seg11valid, voc, "voc"),
            "val": self._generate_examples(val, voc, "voc"),
        }

    def _generate_examples(self, ids: list[str], root: str, source: str):
        for image_id in ids:
            if source == "sbd":
                image_path = os.path.join(root, "img", f"{image_id}.jpg")
                label_path = os.path.join(root, "cls", f"{image_id}.mat")
                label = _read_sbd_mat(label_path)
            else:
                image_path = os.path.join(root, "JPEGImages", f"{image_id}.jpg")
                label_path = os.path.join(root, "SegmentationClass", f"{image_id}.png")
                label = _read_voc_png(label_path)
            bad = np.unique(label[(label >= len(CLASS_NAMES)) & (label != IGNORE_ID)])
            if bad.size:
                raise ValueError(
                    f"{label_path}: label id(s) {bad[:10].tolist()} are neither a VOC class "
                    f"(0..{len(CLASS_NAMES) - 1}) nor {IGNORE_ID}"
                )
            try:
                with open(image_path, "rb") as f:
                    jpeg = f.read()
                with Image.open(image_path) as img:
                    img.verify()  # Catch truncated files here, not in the training loop.
                    width, height = img.size
            except (OSError, ValueError) as e:
                raise ValueError(f"{image_path}: cannot read image: {e}") from e
            if (height, width) != label.shape:
                raise ValueError(
                    f"{image_path} is {width}x{height} px but its label {label_path} is "
                    f"{label.shape[1]}x{label.shape[0]} px"
                )
            yield (
                image_id,
                {
                    "image": jpeg,  # The original JPEG bytes: no re-encoding loss.
                    "label": _png(label),
                    "file_name": image_id,
                },
            )


def _extract(dl_manager, archive: os.PathLike) -> str:
    """Extracts a tar archive once, under `<download dir>/extracted/`; returns the folder.

    Python's tarfile (with its "data" filter: no absolute paths, links or devices outside the
    folder) rather than `dl_manager.extract`, whose extractor needs TensorFlow. The folder is
    keyed by the archive's name, size and modification time, so a replaced archive is extracted
    again; it appears only when complete (extracted under a temporary name, then renamed).
    """
    archive = os.fspath(archive)
    stat = os.stat(archive)
    key = f"{os.path.basename(archive)}-{stat.st_size}-{stat.st_mtime_ns}"
    target = os.path.join(os.fspath(dl_manager.download_dir), "extracted", key)
    if os.path.isdir(target):
        return target
    tmp = f"{target}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(tmp, filter="data")
    except (tarfile.TarError, OSError) as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ValueError(f"voc_sbd: cannot extract {archive}: {e}") from e
    os.replace(tmp, target)
    return target


def _find_dir(extracted: os.PathLike, name: str, archive: str) -> str:
    """Finds the directory called `name` inside an extracted archive (prefixes vary by release)."""
    for dirpath, dirnames, _ in os.walk(os.fspath(extracted)):
        if name in dirnames:
            return os.path.join(dirpath, name)
    raise FileNotFoundError(f"{archive}: no '{name}' directory inside; is it the right archive?")


def _read_ids(path: str) -> list[str]:
    try:
        with open(path) as f:
            return [line.strip() for line in f if line.strip()]
    except OSError as e:
        raise FileNotFoundError(f"cannot read image list {path}: {e}") from e


def _png(label: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(label).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def _read_sbd_mat(path: str) -> np.ndarray:
    try:
        return np.asarray(scipy.io.loadmat(path)["GTcls"][0, 0]["Segmentation"], np.uint8)
    except (OSError, ValueError, KeyError, IndexError) as e:
        raise ValueError(f"{path}: cannot read SBD label (GTcls.Segmentation): {e}") from e


def _read_voc_png(path: str) -> np.ndarray:
    try:
        with Image.open(path) as img:
            if img.mode != "P":
                raise ValueError(f"expected a palette ('P') PNG, got mode {img.mode}")
            return np.asarray(img, np.uint8)  # palette indices are the class ids
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: cannot read VOC label: {e}") from e
