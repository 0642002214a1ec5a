"""Our own builders from tiny archives and folders the tests write, and every bad-data error."""

import io
import os
import tarfile

import numpy as np
import pytest
import scipy.io
import tensorflow_datasets as tfds
from PIL import Image

from configs.base import data_config
from jaxseg.data import datasets, loading
from jaxseg.data.builders import image_folder, voc_sbd
from jaxseg.labels import voc_palette

PREPARE = tfds.download.DownloadConfig(compute_stats=tfds.download.ComputeStatsMode.SKIP)


def _jpeg(height, width, seed):
    pixels = np.random.default_rng(seed).integers(0, 255, (height, width, 3), np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG")
    return buffer.getvalue()


def _palette_png(label):
    image = Image.fromarray(label.astype(np.uint8), mode="P")
    image.putpalette([v for c in voc_palette() for v in c])
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _voc_label(height, width, cls):
    label = np.zeros((height, width), np.uint8)
    label[4:12, 5:15] = cls
    label[3, 5:15] = 255  # VOC's object border: ignore
    return label


def _tar(path, members: dict[str, bytes]):
    mode = "w:gz" if path.endswith(".tgz") else "w"
    with tarfile.open(path, mode) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def _sbd_mat(label):
    buffer = io.BytesIO()
    scipy.io.savemat(buffer, {"GTcls": {"Segmentation": label, "CategoriesPresent": [1]}})
    return buffer.getvalue()


VOC_LABELS = {"2008_000001": _voc_label(16, 20, 15), "2008_000002": _voc_label(16, 20, 7)}
SBD_LABELS = {
    "2009_000003": np.full((12, 18), 12, np.uint8),
    "2009_000004": np.eye(12, 18, dtype=np.uint8) * 20,
}


def _write_voc_manual(manual, with_seg11=True, voc_labels=VOC_LABELS):
    os.makedirs(manual, exist_ok=True)
    root = "VOCdevkit/VOC2012"
    members = {f"{root}/ImageSets/Segmentation/val.txt": "\n".join(voc_labels).encode()}
    for i, (image_id, label) in enumerate(voc_labels.items()):
        members[f"{root}/JPEGImages/{image_id}.jpg"] = _jpeg(*label.shape, i)
        members[f"{root}/SegmentationClass/{image_id}.png"] = _palette_png(label)
    _tar(os.path.join(manual, voc_sbd.VOC2012_TAR), members)
    sbd = "benchmark_RELEASE/dataset"
    # 2008_000001 is listed in SBD train too: it must be held out because it is in seg11valid.
    train_ids = [*SBD_LABELS, "2008_000001"]
    members = {f"{sbd}/train.txt": "\n".join(train_ids).encode()}
    for i, (image_id, label) in enumerate(
        {**SBD_LABELS, "2008_000001": VOC_LABELS["2008_000001"]}.items()
    ):
        members[f"{sbd}/img/{image_id}.jpg"] = _jpeg(*label.shape, 10 + i)
        members[f"{sbd}/cls/{image_id}.mat"] = _sbd_mat(label)
    _tar(os.path.join(manual, voc_sbd.SBD_TGZ), members)
    if with_seg11:
        with open(os.path.join(manual, voc_sbd.SEG11VALID_TXT), "w") as f:
            f.write("2008_000001\n")
    else:  # derive seg11valid from VOC2011's val list minus SBD train
        val2011 = "2008_000001\n2008_000002\n2009_000003\n"
        _tar(
            os.path.join(manual, voc_sbd.VOC2011_TAR),
            {"TrainVal/VOCdevkit/VOC2011/ImageSets/Segmentation/val.txt": val2011.encode()},
        )


def _labels(builder, split):
    source = builder.as_data_source(split)
    return {source[i]["file_name"].decode(): source[i]["label"][..., 0] for i in range(len(source))}


def test_voc_sbd_builds_the_fcn_splits_from_the_archives(tmp_path):
    _write_voc_manual(str(tmp_path / "manual"))
    cfg = data_config()
    cfg.name = "voc_sbd"
    cfg.data_dir = str(tmp_path / "tfds")
    cfg.manual_dir = str(tmp_path / "manual")
    cfg.eval_split = "val"
    cfg.eval_pad_size = (16, 20)
    cfg.crop_size = (8, 8)
    batches = list(loading.make_eval_iterator(cfg, global_batch_size=2))
    builder = datasets.dataset_spec(cfg).make_builder(cfg)
    val = _labels(builder, "val")
    assert sorted(val) == sorted(VOC_LABELS)
    for image_id, label in val.items():  # palette indices are class ids; border stays 255
        np.testing.assert_array_equal(label, VOC_LABELS[image_id])
    assert sorted(_labels(builder, "seg11valid")) == ["2008_000001"]
    train = _labels(builder, "train")
    assert sorted(train) == sorted(SBD_LABELS)  # seg11valid held out of SBD train
    for image_id, label in train.items():
        np.testing.assert_array_equal(label, SBD_LABELS[image_id])
    (batch,) = batches
    assert batch["image"].shape == (2, 16, 20, 3) and batch["label"].dtype == np.int32
    assert set(np.unique(batch["label"])) == {0, 7, 15, 255}
    train_batch = next(loading.make_train_iterator(cfg, global_batch_size=8, seed=0))
    assert train_batch["image"].shape == (8, 8, 8, 3)
    assert set(np.unique(train_batch["label"])) <= set(range(21)) | {255}


def test_voc_sbd_derives_seg11valid_from_voc2011(tmp_path):
    _write_voc_manual(str(tmp_path / "manual"), with_seg11=False)
    builder = voc_sbd.VocSbd(data_dir=str(tmp_path / "tfds"), file_format="array_record")
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(
            manual_dir=str(tmp_path / "manual"), compute_stats=tfds.download.ComputeStatsMode.SKIP
        )
    )
    # VOC2011 val = {01, 02, 03}; SBD train = {03, 04, 01}: seg11valid = {02}.
    assert sorted(_labels(builder, "seg11valid")) == ["2008_000002"]
    assert sorted(_labels(builder, "train")) == ["2008_000001", "2009_000003", "2009_000004"]


@pytest.mark.parametrize("present", [[], [voc_sbd.VOC2012_TAR]])
def test_missing_manual_download_names_the_files_and_the_place(tmp_path, present):
    manual = tmp_path / "manual"
    if present:
        manual.mkdir()
        for name in present:
            (manual / name).write_bytes(b"")
    builder = voc_sbd.VocSbd(data_dir=str(tmp_path / "tfds"), file_format="array_record")
    config = tfds.download.DownloadConfig(manual_dir=str(manual))
    with pytest.raises(FileNotFoundError) as error:
        builder.download_and_prepare(download_config=config)
    message = str(error.value)
    assert str(manual) in message and voc_sbd.SBD_TGZ in message
    assert voc_sbd.SEG11VALID_TXT in message and voc_sbd.VOC2011_TAR in message


def _folder_cfg(root, **overrides):
    cfg = data_config()
    cfg.name = "image_folder"
    cfg.data_dir = str(root / "tfds")
    cfg.folder.root = str(root / "data")
    cfg.folder.name = "tiny"
    cfg.folder.channels = 1
    cfg.folder.class_names = ("background", "cell", "membrane")
    cfg.mean, cfg.std = (0.5,), (0.25,)
    cfg.saturation = cfg.hue = 0.0
    cfg.crop_size = (8, 8)
    cfg.eval_pad_size = (12, 12)
    cfg.eval_split = "validation"
    for key, value in overrides.items():
        setattr(cfg.folder, key, value)
    return cfg


def _write_folder(root, masks: dict, images: dict | None = None, fmt="PNG"):
    (root / "data" / "images").mkdir(parents=True, exist_ok=True)
    (root / "data" / "masks").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for stem, mask in masks.items():
        mask_image = Image.fromarray(mask.astype(np.uint8))
        mask_image.save(root / "data" / "masks" / f"{stem}.png")
        if images is None or stem not in images:
            pixels = rng.integers(0, 255, mask.shape[:2], np.uint8)
            Image.fromarray(pixels).save(
                root / "data" / "images" / f"{stem}.{'tif' if fmt == 'TIFF' else fmt.lower()}",
                format=fmt,
            )
        else:
            (root / "data" / "images" / f"{stem}.png").write_bytes(images[stem])


def _mask(value, size=(10, 12)):
    mask = np.zeros(size, np.uint8)
    mask[2:6, 3:9] = value
    mask[0, 0] = 255
    return mask


def test_folder_of_three_greyscale_images_flows_through(tmp_path):
    masks = {"a": _mask(1), "b": _mask(2), "c": _mask(1)}
    _write_folder(tmp_path, masks)
    (tmp_path / "data" / "val.txt").write_text("b\n")
    cfg = _folder_cfg(tmp_path, val_list="val.txt")
    train = next(loading.make_train_iterator(cfg, global_batch_size=8, seed=0))
    assert train["image"].shape == (8, 8, 8, 1) and train["label"].shape == (8, 8, 8)
    (batch,) = list(loading.make_eval_iterator(cfg, global_batch_size=2))
    assert batch["valid"].tolist() == [True, False]
    np.testing.assert_array_equal(batch["label"][0, :10, :12], masks["b"])
    builder = datasets.dataset_spec(cfg).make_builder(cfg)
    assert builder.info.splits["train"].num_examples == 2
    assert sorted(_labels(builder, "train")) == ["a.png#0", "c.png#0"]


def test_folder_with_palette_masks_and_a_tiff_stack(tmp_path):
    colours = ((0, 0, 0), (255, 255, 255))
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    (data / "masks").mkdir()
    rng = np.random.default_rng(1)
    pages = [Image.fromarray(rng.integers(0, 255, (8, 8), np.uint8)) for _ in range(3)]
    pages[0].save(data / "images" / "stack.tif", save_all=True, append_images=pages[1:])
    truth = [rng.integers(0, 2, (8, 8)).astype(np.uint8) for _ in range(3)]
    masks = [Image.fromarray(t * 255) for t in truth]  # ISBI style: 0 membrane, 255 cell
    masks[0].save(data / "masks" / "stack.tif", save_all=True, append_images=masks[1:])
    cfg = _folder_cfg(
        tmp_path,
        mask_format="palette",
        palette=colours,
        class_names=("membrane", "cell"),
        val_list=None,
    )
    builder = datasets.dataset_spec(cfg).make_builder(cfg)
    builder.download_and_prepare(download_config=PREPARE)
    labels = _labels(builder, "train")
    assert sorted(labels) == ["stack.tif#0", "stack.tif#1", "stack.tif#2"]
    for page in range(3):
        np.testing.assert_array_equal(labels[f"stack.tif#{page}"], truth[page])


def _prepare(cfg):
    builder = datasets.dataset_spec(cfg).make_builder(cfg)
    builder.download_and_prepare(download_config=PREPARE)


def test_bad_folder_data_raises_errors_naming_the_file(tmp_path):
    cases = {
        "unreadable": ({"a": _mask(1)}, {"a": b"not an image"}, {}, r"a\.png: cannot read image"),
        "size": (
            {"a": _mask(1, (10, 12))},
            None,
            {},
            r"images/a\.png is 12x11 px but its mask .*masks/a\.png is 12x10",
        ),
        "label id": ({"a": _mask(7)}, None, {}, r"masks/a\.png: label id\(s\) \[7\]"),
        "empty split": ({"a": _mask(1)}, None, {"train_list": "train.txt"}, "split 'train'.*empty"),
        "unknown stem": ({"a": _mask(1)}, None, {"val_list": "val.txt"}, r"val\.txt: 'zz'"),
    }
    for name, (masks, images, overrides, message) in cases.items():
        root = tmp_path / name.replace(" ", "_")
        _write_folder(root, masks, images)
        (root / "data" / "train.txt").write_text("")
        (root / "data" / "val.txt").write_text("zz\n")
        if name == "size":  # replace the image with one of another size
            Image.fromarray(np.zeros((11, 12), np.uint8)).save(root / "data" / "images" / "a.png")
        with pytest.raises(ValueError, match=message):
            _prepare(_folder_cfg(root, **overrides))


def test_bad_palette_mask_and_unpaired_file_are_named(tmp_path):
    root = tmp_path / "palette"
    _write_folder(root, {"a": _mask(1)})
    rgb = np.zeros((10, 12, 3), np.uint8)
    rgb[1, 1] = (12, 34, 56)
    Image.fromarray(rgb).save(root / "data" / "masks" / "a.png")
    cfg = _folder_cfg(root, mask_format="palette", palette=((0, 0, 0), (255, 255, 255), (9, 9, 9)))
    with pytest.raises(ValueError, match=r"masks/a\.png: mask colour\(s\) \[\(12, 34, 56\)\]"):
        _prepare(cfg)
    root = tmp_path / "unpaired"
    _write_folder(root, {"a": _mask(1)})
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(root / "data" / "images" / "b.png")
    with pytest.raises(ValueError, match=r"images/b\.png has no mask"):
        _prepare(_folder_cfg(root))


def test_bad_voc_label_is_named(tmp_path):
    manual = tmp_path / "manual"
    bad = VOC_LABELS["2008_000002"].copy()
    bad[0, 0] = 42
    # The bad label is the archive's only member of that name: the test must not depend on which
    # of two same-named members an extractor (or an extraction cache) keeps.
    _write_voc_manual(str(manual), voc_labels={**VOC_LABELS, "2008_000002": bad})
    builder = voc_sbd.VocSbd(data_dir=str(tmp_path / "tfds"), file_format="array_record")
    config = tfds.download.DownloadConfig(
        manual_dir=str(manual), compute_stats=tfds.download.ComputeStatsMode.SKIP
    )
    with pytest.raises(ValueError, match=r"2008_000002\.png: label id\(s\) \[42\]"):
        builder.download_and_prepare(download_config=config)


def test_folder_config_errors_name_the_key():
    cfg = data_config()
    with pytest.raises(ValueError, match="config.data.folder.root"):
        image_folder.make_config(cfg.folder)
    cfg.folder.root = "/somewhere"
    cfg.folder.mask_format = "rgb"
    with pytest.raises(ValueError, match="config.data.folder.mask_format"):
        image_folder.make_config(cfg.folder)
    cfg.folder.mask_format = "palette"
    with pytest.raises(ValueError, match="config.data.folder.palette"):
        image_folder.make_config(cfg.folder)


def _built(cfg):
    builder = datasets.dataset_spec(cfg).make_builder(cfg)
    builder.download_and_prepare(download_config=PREPARE)
    return builder


def _images(builder, split="train"):
    source = builder.as_data_source(split)
    return {source[i]["file_name"].decode(): source[i]["image"] for i in range(len(source))}


def test_camvid_style_void_id_is_ignored_and_ids_are_remapped(tmp_path):
    # CamVid-style index masks: classes 0..10, 11 = void.
    camvid = np.array([[0, 3, 11], [10, 11, 5]], np.uint8).repeat(4, 0).repeat(4, 1)
    _write_folder(tmp_path / "camvid", {"a": camvid})
    names = tuple(f"c{i}" for i in range(11))
    with pytest.raises(ValueError, match=r"masks/a\.png: label id\(s\) \[11\].*ignore_ids"):
        _prepare(_folder_cfg(tmp_path / "camvid", class_names=names))
    builder = _built(_folder_cfg(tmp_path / "camvid", class_names=names, ignore_ids=(11,)))
    np.testing.assert_array_equal(
        _labels(builder, "train")["a.png#0"], np.where(camvid == 11, 255, camvid)
    )
    # ADE-style: 0 = unlabelled, 1..3 -> 0..2.
    ade = np.array([[0, 1], [2, 3]], np.uint8).repeat(5, 0).repeat(6, 1)
    _write_folder(tmp_path / "ade", {"a": ade})
    builder = _built(_folder_cfg(tmp_path / "ade", reduce_zero_label=True))
    np.testing.assert_array_equal(
        _labels(builder, "train")["a.png#0"], np.where(ade == 0, 255, ade.astype(int) - 1)
    )
    # An explicit map wins over reduce_zero_label for the ids it lists.
    builder = _built(_folder_cfg(tmp_path / "ade", id_map=((3, 0), (0, 2)), reduce_zero_label=True))
    expected = {0: 2, 1: 0, 2: 1, 3: 0}
    np.testing.assert_array_equal(
        _labels(builder, "train")["a.png#0"], np.vectorize(expected.get)(ade)
    )
    with pytest.raises(ValueError, match=r"config.data.folder.id_map: target\(s\) \[\(1, 7\)\]"):
        _prepare(_folder_cfg(tmp_path / "ade", id_map=((1, 7),)))
    with pytest.raises(ValueError, match=r"\[3\] are in both ignore_ids and id_map"):
        _prepare(_folder_cfg(tmp_path / "ade", id_map=((3, 1),), ignore_ids=(3,)))


def test_binary_0_255_masks_in_index_mode_stop_naming_the_file_and_the_fix(tmp_path):
    masks = {s: (_mask(1) > 0).astype(np.uint8) * 255 for s in ("a", "b")}
    masks["b"][0, 0] = 0
    _write_folder(tmp_path, masks)
    two = ("background", "foreground")
    message = r"masks/a\.png: the masks hold only 0 and 255.*id_map=\(\(255, 1\),\)"
    with pytest.raises(ValueError, match=message):
        _prepare(_folder_cfg(tmp_path, class_names=two))
    builder = _built(_folder_cfg(tmp_path, class_names=two, id_map=((255, 1),)))
    labels = _labels(builder, "train")
    for stem, mask in masks.items():
        np.testing.assert_array_equal(labels[f"{stem}.png#0"], mask // 255)
    # Saying that 255 really is ignore is accepted as such.
    builder = _built(_folder_cfg(tmp_path, class_names=two, id_map=((255, 255),)))
    np.testing.assert_array_equal(_labels(builder, "train")["a.png#0"], masks["a"])


def test_16bit_images_use_one_folder_wide_range_recorded_in_the_build(tmp_path):
    rng = np.random.default_rng(3)
    raw = {"a": rng.integers(100, 1000, (10, 12)), "b": rng.integers(100, 4000, (10, 12))}
    _write_folder(tmp_path, {"a": _mask(1), "b": _mask(2)})
    for stem, values in raw.items():
        Image.fromarray(values.astype(np.uint16)).save(tmp_path / "data" / "images" / f"{stem}.png")
    builder = _built(_folder_cfg(tmp_path))
    low = min(v.min() for v in raw.values())
    high = max(v.max() for v in raw.values())
    assert image_folder.recorded_intensity_range(builder) == (low, high)
    stored = _images(builder)
    for stem, values in raw.items():
        expected = np.round((values - low) / (high - low) * 255).astype(np.uint8)
        np.testing.assert_array_equal(stored[f"{stem}.png#0"][..., 0], expected)
    # An explicit range other than the recorded one is refused with the way to rebuild.
    with pytest.raises(ValueError, match=r"used \(.*\)\. Set the recorded range.*delete"):
        _prepare(_folder_cfg(tmp_path, intensity_range=(0, 65535)))
    _prepare(_folder_cfg(tmp_path, intensity_range=(float(low), float(high))))


def test_same_folder_name_with_a_new_root_or_changed_files_rebuilds(tmp_path):
    _write_folder(tmp_path / "one", {"a": _mask(1)})
    _write_folder(tmp_path / "two", {"a": _mask(2)})
    cfg_one = _folder_cfg(tmp_path / "one")
    cfg_two = _folder_cfg(tmp_path / "two")
    cfg_two.data_dir = cfg_one.data_dir  # One tfds data dir, one folder name ("tiny").
    assert cfg_one.folder.name == cfg_two.folder.name
    np.testing.assert_array_equal(_labels(_built(cfg_one), "train")["a.png#0"], _mask(1))
    np.testing.assert_array_equal(_labels(_built(cfg_two), "train")["a.png#0"], _mask(2))
    # Rewriting a mask in place (new size/mtime) is a different data set too.
    mask = _mask(2)
    mask[5, 5] = 7
    Image.fromarray(mask).save(tmp_path / "one" / "data" / "masks" / "a.png")
    os.utime(tmp_path / "one" / "data" / "masks" / "a.png", ns=(1, 1))
    with pytest.raises(ValueError, match=r"label id\(s\) \[7\]"):
        _prepare(cfg_one)


def test_non_utf8_file_name_is_named(tmp_path):
    _write_folder(tmp_path, {"a": _mask(1)})
    bad = os.path.join(os.fsencode(tmp_path / "data" / "images"), b"caf\xe9.png")
    with open(bad, "wb") as f:
        f.write(b"x")
    with pytest.raises(ValueError, match=r"file name b'caf\\xe9\.png' is not valid UTF-8"):
        _prepare(_folder_cfg(tmp_path))


def _phone_photo(path, upright: np.ndarray) -> None:
    """Writes `upright` (uint8 [H, W]) as a JPEG the way a phone held upright stores it: the
    sensor's landscape pixels (the upright view turned 90 degrees anticlockwise) and EXIF
    Orientation 6 ("rotate 90 degrees clockwise to view")."""
    stored = Image.fromarray(np.rot90(upright, 1).copy())
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(path, format="JPEG", quality=100, subsampling=0, exif=exif)


def test_phone_photos_are_read_upright_everywhere(tmp_path):
    """An EXIF Orientation 6 JPEG (12 x 10 stored, 10 x 12 shown) whose mask was drawn on the
    upright view: the builder, the shared decoder and predict's batch planning all see the
    upright 10 x 12 image, and its mask lies on the same pixels."""
    from jaxseg.data import images

    upright = np.zeros((10, 12), np.uint8)
    upright[2:6, 3:9] = 250  # a bright object where the mask says class 1
    mask = np.where(upright > 0, 1, 0).astype(np.uint8)
    (tmp_path / "data" / "images").mkdir(parents=True)
    (tmp_path / "data" / "masks").mkdir(parents=True)
    photo = tmp_path / "data" / "images" / "phone.jpg"
    _phone_photo(photo, upright)
    Image.fromarray(mask).save(tmp_path / "data" / "masks" / "phone.png")
    with Image.open(photo) as raw:
        assert raw.size == (10, 12)  # stored sideways: 10 wide, 12 high

    assert images.upright_size(str(photo)) == (10, 12)
    decoded = images.decode(str(photo), channels=1)[..., 0]
    assert decoded.shape == (10, 12)
    assert (decoded[mask == 1] > 200).all() and (decoded[mask == 0] < 50).all()

    cfg = _folder_cfg(tmp_path)
    _, count, examples = loading.decoded_examples(cfg, "train", key="test")
    (example,) = list(examples)
    assert count == 1 and example["label"].shape == (10, 12)
    np.testing.assert_array_equal(example["label"], mask)
    assert (example["image"][..., 0][mask == 1] > 200).all()


def test_jpeg_masks_are_refused_saying_why(tmp_path):
    _write_folder(tmp_path, {"a": _mask(1), "b": _mask(2)})
    masks = tmp_path / "data" / "masks"
    Image.open(masks / "a.png").save(masks / "a.jpg", format="JPEG")
    (masks / "a.png").unlink()
    with pytest.raises(ValueError, match="JPEG masks are not accepted") as error:
        loading.open_split(_folder_cfg(tmp_path), "train", key="test")
    assert str(masks / "a.jpg") in str(error.value) and "lossy" in str(error.value)


def test_broken_links_are_named_and_links_out_of_the_folder_are_recorded(tmp_path):
    _write_folder(tmp_path, {"a": _mask(1), "b": _mask(2)})
    images = tmp_path / "data" / "images"
    # b's image lives elsewhere (users link their data in): followed, and recorded.
    outside = tmp_path / "elsewhere" / "b.png"
    outside.parent.mkdir()
    (images / "b.png").rename(outside)
    (images / "b.png").symlink_to(outside)
    cfg = _folder_cfg(tmp_path)
    spec, _ = loading.open_split(cfg, "train", key="test")
    builder = spec.make_builder(cfg)
    assert builder.info.metadata["links"] == {os.path.join("images", "b.png"): str(outside)}
    # A link whose target is gone is named as such, not a bare FileNotFoundError.
    (images / "c.png").symlink_to(tmp_path / "gone.png")
    (tmp_path / "data" / "masks" / "c.png").write_bytes((images / "b.png").read_bytes())
    with pytest.raises(ValueError, match="broken symbolic link") as error:
        loading.open_split(cfg, "train", key="test")
    assert str(images / "c.png") in str(error.value)


def test_one_class_split_is_recorded_and_warned_about_and_one_class_names_the_key(tmp_path, caplog):
    # All-zero masks (issue 23, item 4): with 2 classes training would drive the loss to 0 by
    # predicting background everywhere; with 1 class it used to train to "mIoU 1.0000".
    blank = np.zeros((10, 12), np.uint8)
    _write_folder(tmp_path, {"a": blank, "b": blank, "c": _mask(1)})
    (tmp_path / "data" / "val.txt").write_text("c\n")
    cfg = _folder_cfg(tmp_path, class_names=("background", "cell"), val_list="val.txt")
    with caplog.at_level("WARNING"):
        spec, _ = loading.open_split(cfg, "train", key="config.data.train_split")
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any(
        m.startswith("config.data.train_split: only 'background' of the 2 classes has pixels")
        for m in warnings
    ), warnings
    # Counted while building and kept in the written metadata: a fresh builder reads them.
    fresh = spec.make_builder(cfg)
    assert fresh.info.metadata["class_pixels"] == {
        "train": [2 * 10 * 12, 0],
        "validation": [10 * 12 - 1 - 24, 24],  # _mask: one ignore pixel, a 4 x 6 object
    }
    caplog.clear()
    with caplog.at_level("WARNING"):
        loading.open_split(cfg, "validation", key="config.data.eval_split")
    assert not [r for r in caplog.records if "classes has pixels" in r.getMessage()]
    # One class name: an error naming the key, before anything is built.
    one = _folder_cfg(tmp_path / "one", class_names=("background",))
    with pytest.raises(ValueError, match=r"config\.data\.folder\.class_names: need 2\.\.255"):
        loading.open_split(one, "train", key="config.data.train_split")
