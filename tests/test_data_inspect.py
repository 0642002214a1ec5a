"""python -m jaxseg.data.inspect: its counts equal numpy counts of the same data, read apart."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from configs import smoke
from jaxseg.data import inspection
from jaxseg.data.builders import synthetic_scenes

REPO = Path(__file__).resolve().parents[1]


def _numpy_counts(labels, num_classes):
    """(class pixels [C], ignore pixels, {other id: pixels}) of label arrays."""
    counts = np.bincount(np.concatenate([np.ravel(x) for x in labels]), minlength=256)
    other = {int(v): int(counts[v]) for v in np.flatnonzero(counts) if num_classes <= v != 255}
    return counts[:num_classes].tolist(), int(counts[255]), other


def test_inspect_synthetic_split_counts_equal_the_rendered_labels(tmp_path):
    config = smoke.get_config()
    config.data.data_dir = str(tmp_path / "tfds")
    s = config.data.synthetic
    stats = inspection.inspect_split(config.data, "validation", key="config.data.eval_split")
    # Oracle: the generator's own labels for the same chunk, no tfds or decoding involved.
    _, labels = synthetic_scenes.render_scenes(s.seed, 1, 0, s.num_validation, s.image_size)
    pixels, ignored, other = _numpy_counts(labels, 6)
    assert stats["num_examples"] == s.num_validation
    assert stats["height"] == stats["width"] == [s.image_size, s.image_size]
    assert stats["class_pixels"] == pixels and stats["ignore_pixels"] == ignored == 0
    assert stats["invalid_ids"] == other == {}
    assert stats["total_pixels"] == labels.size
    np.testing.assert_allclose(stats["class_fraction"], np.array(pixels) / labels.size)
    assert [im.shape for im, _ in stats["examples"]] == [(32, 32, 3)] * 4


def _write_folder(root: Path):
    """A user's folder: odd sizes, a void id stored as 255, one class that never occurs."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    labels = []
    for i, (h, w) in enumerate([(20, 30), (17, 25), (40, 12)]):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), np.uint8)).save(
            root / "images" / f"{i}.png"
        )
        mask = rng.choice([0, 1, 255], size=(h, w), p=[0.5, 0.3, 0.2]).astype(np.uint8)
        Image.fromarray(mask).save(root / "masks" / f"{i}.png")
        labels.append(mask)
    return labels


def test_inspect_cli_on_an_image_folder(tmp_path, no_tensorflow_env):
    """The CLI, run where TensorFlow is not importable."""
    labels = _write_folder(tmp_path / "data")
    cmd = [
        sys.executable,
        "-m",
        "jaxseg.data.inspect",
        "--config",
        "configs/default.py",
        "--config.data.name=image_folder",
        f"--config.data.folder.root={tmp_path / 'data'}",
        "--config.data.folder.class_names=('background','road','car')",
        f"--config.data.data_dir={tmp_path / 'tfds'}",
        "--config.data.train_split=train",
        "--config.data.eval_split=train",
        f"--output={tmp_path / 'out'}",
    ]
    proc = subprocess.run(
        cmd, cwd=REPO, env=no_tensorflow_env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())["splits"]["train"]
    pixels, ignored, _ = _numpy_counts(labels, 3)
    assert stats["num_examples"] == 3
    assert stats["height"] == [17, 40] and stats["width"] == [12, 30]
    assert stats["class_pixels"] == pixels and stats["ignore_pixels"] == ignored
    assert stats["absent_classes"] == ["car"]
    assert "classes that never occur: car" in proc.stdout
    assert f"{ignored:,}" in proc.stdout
    with Image.open(tmp_path / "out" / "examples_train.png") as im:
        assert im.size[0] >= 900 and np.asarray(im.convert("L")).std() > 0


def test_report_flags_ids_that_are_no_class_and_mostly_ignored_masks():
    stats = {
        "split": "train",
        "num_examples": 2,
        "height": [4, 4],
        "width": [4, 4],
        "channels": 1,
        "class_names": ["background", "foreground"],
        "class_pixels": [4, 0],
        "class_fraction": [0.125, 0.0],
        "ignore_pixels": 20,
        "ignore_fraction": 0.625,
        "absent_classes": ["foreground"],
        "invalid_ids": {7: 8},
    }
    text = inspection.format_report(stats, "mine")
    assert "classes that never occur: foreground" in text
    assert "only 'background' of the 2 classes has pixels in this split" in text
    assert "ids outside 0..1 and 255: 7: 8 px" in text
    assert "62% of all pixels are ignore" in text


def test_inspect_reads_split_slices(tmp_path):
    config = smoke.get_config()
    config.data.data_dir = str(tmp_path / "tfds")
    stats = inspection.inspect_split(config.data, "train[:3]", key="config.data.train_split")
    s = config.data.synthetic
    name = synthetic_scenes.config_name(s.image_size, s.num_train, s.num_validation, s.seed)
    built = (
        tmp_path
        / "tfds"
        / "synthetic_scenes"
        / name
        / str(synthetic_scenes.SyntheticScenes.VERSION)
    )
    source = tfds.builder_from_directory(str(built)).as_data_source("train[:3]")
    labels = [source[i]["label"][..., 0] for i in range(len(source))]
    assert stats["num_examples"] == len(labels) == 3
    assert stats["class_pixels"] == _numpy_counts(labels, 6)[0]


def test_inspect_flags_an_eval_pad_size_smaller_than_the_examples(tmp_path, capsys):
    config = smoke.get_config()
    config.data.data_dir = str(tmp_path / "tfds")
    config.data.eval_pad_size = (32, 24)  # smoke's scenes are 32 x 32
    splits = [("config.data.eval_split", "validation")]
    inspection.inspect_data(config, str(tmp_path / "out"), max_examples=2, splits=splits)
    out = capsys.readouterr().out
    assert "config.data.eval_pad_size = (32, 24) is smaller than the largest example" in out
    assert "set it to at least (32, 32)" in out


def test_inspect_warns_when_a_split_has_one_class_present(tmp_path):
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for stem in ("a", "b"):
        Image.fromarray(np.zeros((6, 5), np.uint8)).save(root / "masks" / f"{stem}.png")
        Image.fromarray(np.full((6, 5), 90, np.uint8)).save(root / "images" / f"{stem}.png")
    config = smoke.get_config()
    config.data.name = "image_folder"
    config.data.data_dir = str(tmp_path / "tfds")
    config.data.folder.root = str(root)
    config.data.folder.channels = 1
    config.data.mean, config.data.std = (0.5,), (0.25,)
    stats = inspection.inspect_split(config.data, "train", key="config.data.train_split")
    assert stats["class_pixels"] == [60, 0]
    text = inspection.format_report(stats, "mine")
    assert "WARNING: only 'background' of the 2 classes has pixels in this split" in text
    # A split with both classes present gets no such line.
    stats["class_pixels"] = [50, 10]
    assert "classes has pixels" not in inspection.format_report(stats, "mine")
