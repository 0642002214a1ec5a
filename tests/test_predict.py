"""predict: masks at each image's own size, equal to argmax of whole-image logits; clear errors.

One smoke training run (in-process, ~30 s) is shared by the whole session (conftest.py).
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import write_blob_images
from PIL import Image

from jaxseg import inference, prediction, train_lib, train_state, visualize
from jaxseg import workdir as workdir_lib
from jaxseg.data import datasets
from jaxseg.models import build_model

# (height, width): one exact bucket, two that need padding (45 x 70 is no multiple of 32).
SIZES = {"a_32x32": (32, 32), "b_45x70": (45, 70), "c_64x40": (64, 40)}
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def workdir(smoke_run):
    return smoke_run  # The session's one smoke run (tests/conftest.py).


@pytest.fixture(scope="module")
def predictor(workdir):
    return prediction.load_predictor(str(workdir), "latest")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    write_blob_images(folder, SIZES)
    (folder / "notes.txt").write_text("not an image; the folder listing must skip it")
    return folder


def _oracle_labels(workdir, predictor, pixels: np.ndarray, pad_hw=None) -> np.ndarray:
    """argmax of whole_image_logits on an image normalised by hand from config.json, then
    zero-padded at the bottom/right to pad_hw (0 after normalisation: the pipeline's border)."""
    config = workdir_lib.read_config(str(workdir))
    model = build_model(config.model)
    x = (pixels.astype(np.float32) / 255 - np.float32(config.data.mean)) / np.float32(
        config.data.std
    )
    if pad_hw is not None:
        x = np.pad(x, ((0, pad_hw[0] - x.shape[0]), (0, pad_hw[1] - x.shape[1]), (0, 0)))
    # Its own jit, apart from prediction's: an independent path to the same logits.
    logits = jax.jit(inference.whole_image_logits, static_argnums=0)(
        model, predictor.variables, x[None]
    )
    logits = np.asarray(logits)[0]
    return logits.argmax(-1), np.sort(logits, axis=-1)


def test_predict_writes_one_palette_mask_per_image_at_its_size(workdir, images, tmp_path):
    out = tmp_path / "masks"
    paths = prediction.predict(str(workdir), str(images), str(out), "best", overlay=True).masks
    spec = datasets.dataset_spec(workdir_lib.read_config(str(workdir)).data)
    assert [p.split("/")[-1] for p in paths] == [f"{s}.png" for s in SIZES]
    for stem, (h, w) in SIZES.items():
        with Image.open(out / f"{stem}.png") as mask:
            assert mask.mode == "P" and mask.size == (w, h)
            palette = np.asarray(mask.getpalette()[: 3 * spec.num_classes]).reshape(-1, 3)
            np.testing.assert_array_equal(palette, spec.palette)
            assert np.asarray(mask).max() < spec.num_classes
        with Image.open(out / f"{stem}_overlay.png") as over:
            assert over.mode == "RGB" and over.size == (w, h)
            assert np.asarray(over).std() > 0


def test_mask_equals_argmax_of_whole_image_logits(workdir, predictor, images, tmp_path):
    stems = ["a_32x32", "b_45x70"]
    paths = [str(images / f"{s}.png") for s in stems]
    prediction.predict_files(predictor, paths, str(tmp_path))
    for stem in stems:
        pixels = np.asarray(Image.open(images / f"{stem}.png"))
        mask = np.asarray(Image.open(tmp_path / f"{stem}.png"))
        if stem == "a_32x32":  # No padding: the oracle sees exactly the same input.
            want, sorted_logits = _oracle_labels(workdir, predictor, pixels)
        else:  # Padded to 64 x 96 with the mean, then cropped back from the top-left.
            want, sorted_logits = _oracle_labels(workdir, predictor, pixels, (64, 96))
            want, sorted_logits = want[:45, :70], sorted_logits[:45, :70]
        # Jitted and eager runs may round differently; only clear winners must agree.
        clear = sorted_logits[..., -1] - sorted_logits[..., -2] > 1e-4
        assert clear.mean() > 0.9
        np.testing.assert_array_equal(mask[clear], want[clear])


def test_same_bucket_compiles_once(predictor):
    before = predictor.predict._cache_size()
    for h, w in [(33, 50), (40, 64), (64, 60)]:  # all pad to 64 x 64
        prediction.segment_batch(predictor, [np.full((h, w, 3), 0.5, np.float32)])
    assert predictor.predict._cache_size() - before <= 1


def test_bucket_shape():
    assert prediction.bucket_shape(45, 70) == (64, 96)
    assert prediction.bucket_shape(32, 1) == (32, 32)


def test_unreadable_images_are_skipped_and_listed_unless_strict(
    predictor, images, tmp_path, capsys
):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"definitely not a png")
    good = str(images / "a_32x32.png")
    out = tmp_path / "out"
    written = prediction.predict_files(predictor, [str(bad), good], str(out))
    assert written.masks == [str(out / "a_32x32.png")]
    assert [path for path, _ in written.skipped] == [str(bad)]
    assert sorted(os.listdir(out)) == ["a_32x32.png"]
    err = capsys.readouterr().err
    assert "skipped 1 unreadable file(s)" in err and str(bad) in err, err
    with pytest.raises(ValueError, match="cannot read image .*broken.png"):
        prediction.predict_files(predictor, [good, str(bad)], str(tmp_path / "s"), strict=True)


def _mixed_folder(tmp_path, good: int, bad: int):
    """A user's folder of `good` readable PNGs and `bad` files named .png that are not images."""
    folder = tmp_path / "photos"
    folder.mkdir()
    write_blob_images(folder, {f"good{i}": (32, 32) for i in range(good)})
    for i in range(bad):
        (folder / f"bad{i}.png").write_bytes(b"truncated download")
    return folder


@pytest.mark.parametrize(
    ("good", "bad", "status"),
    [(2, 0, 0), (1, 1, 3)],  # the statuses predict.py's docstring and the README document
)
def test_exit_status_says_whether_inputs_were_skipped(
    predictor, tmp_path, monkeypatch, good, bad, status
):
    """predict.py returns `exit_status`: 0 all masks written, 3 (documented) some skipped."""
    monkeypatch.setattr(prediction, "load_predictor", lambda *a, **k: predictor)
    folder, out = _mixed_folder(tmp_path, good, bad), tmp_path / "masks"
    result = prediction.predict(str(tmp_path), str(folder), str(out))
    assert result.exit_status == status
    assert sorted(os.listdir(out)) == [f"good{i}.png" for i in range(good)]
    assert [os.path.basename(p) for p, _ in result.skipped] == [f"bad{i}.png" for i in range(bad)]


def test_no_readable_input_is_an_error_not_zero_masks(predictor, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(prediction, "load_predictor", lambda *a, **k: predictor)
    folder = _mixed_folder(tmp_path, good=0, bad=2)
    with pytest.raises(ValueError, match=r"no mask written: none of the 2 input file\(s\)"):
        prediction.predict(str(tmp_path), str(folder), str(tmp_path / "masks"))
    err = capsys.readouterr().err
    assert "bad0.png" in err and "bad1.png" in err, err  # each one still listed
    assert not (tmp_path / "masks").exists() or not os.listdir(tmp_path / "masks")
    # A folder without a single image file fails at the listing, before the model loads.
    monkeypatch.setattr(
        prediction, "load_predictor", lambda *a, **k: pytest.fail("restored the model first")
    )
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here")
    with pytest.raises(FileNotFoundError, match="no image files"):
        prediction.predict(str(tmp_path), str(empty), str(tmp_path / "masks2"))


def test_predict_py_exits_3_when_an_input_was_skipped(smoke_run, tmp_path):
    """The user's path: predict.py itself, one good and one unreadable file -> exit status 3,
    the good mask written, the skipped file named on stderr."""
    folder, out = _mixed_folder(tmp_path, good=1, bad=1), tmp_path / "masks"
    cmd = [sys.executable, "predict.py", f"--workdir={smoke_run}", f"--input={folder}"]
    proc = subprocess.run([*cmd, f"--output={out}"], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 3, proc.stderr[-3000:]
    assert "wrote 1 masks" in proc.stdout
    assert "bad0.png" in proc.stderr and "exit status 3" in proc.stderr
    assert os.listdir(out) == ["good0.png"]


def test_output_that_is_a_file_fails_before_the_model_is_restored(images, tmp_path, monkeypatch):
    target = tmp_path / "masks.png"
    target.write_bytes(b"")
    monkeypatch.setattr(
        prediction, "load_predictor", lambda *a, **k: pytest.fail("restored the model first")
    )
    with pytest.raises(ValueError, match=r"--output .*masks\.png is a file"):
        prediction.predict(str(tmp_path), str(images), str(target))


@pytest.fixture
def no_restore(monkeypatch):
    """Every refusal must come before the checkpoint is restored."""
    monkeypatch.setattr(
        prediction, "load_predictor", lambda *a, **k: pytest.fail("restored the model first")
    )


def _user_folder(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    write_blob_images(folder, {"a": (32, 32), "b": (40, 48)})
    return folder, {p.name: p.read_bytes() for p in folder.iterdir()}


@pytest.mark.parametrize("where", ["same", "inside"])
def test_output_in_the_input_folder_is_refused_and_no_input_changes(tmp_path, no_restore, where):
    folder, before = _user_folder(tmp_path)
    out = folder if where == "same" else folder / "masks"
    with pytest.raises(ValueError, match="input folder"):
        prediction.predict(str(tmp_path), str(folder), str(out))
    # The same with a list of files (the folder of each input counts) and with a relative path.
    with pytest.raises(ValueError, match="input folder"):
        prediction.predict(str(tmp_path), f"{folder}/a.png,{folder}/b.png", str(out))
    assert {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()} == before


def test_a_users_file_at_an_output_name_is_never_replaced(tmp_path, no_restore):
    folder, _ = _user_folder(tmp_path)
    out = tmp_path / "masks"
    out.mkdir()
    mine = out / "a.png"  # the user's own file that happens to have a mask's name
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(mine)
    before = mine.read_bytes()
    for force in (False, True):
        with pytest.raises(ValueError, match="predict did not write"):
            prediction.predict(str(tmp_path), str(folder), str(out), force=force)
    assert mine.read_bytes() == before


def test_earlier_masks_are_replaced_only_with_force(predictor, tmp_path, monkeypatch):
    folder, before = _user_folder(tmp_path)
    out = tmp_path / "masks"
    monkeypatch.setattr(prediction, "load_predictor", lambda *a, **k: predictor)
    first = prediction.predict(str(tmp_path), str(folder), str(out), overlay=True)
    assert all(prediction.written_by_predict(p) for p in first.masks)
    assert prediction.written_by_predict(str(out / "a_overlay.png"))
    with pytest.raises(ValueError, match="--force"):
        prediction.predict(str(tmp_path), str(folder), str(out), overlay=True)
    again = prediction.predict(str(tmp_path), str(folder), str(out), overlay=True, force=True)
    assert again == first
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


def test_probabilities_carry_the_mark(tmp_path):
    probs = np.full((3, 4, 2), 0.5, np.float32)
    (npz,) = prediction.save_probabilities(probs, str(tmp_path), "x", "npz", ("a", "b"))
    pngs = prediction.save_probabilities(probs, str(tmp_path), "x", "png16", ("a", "b"))
    assert all(prediction.written_by_predict(p) for p in [npz, *pngs])
    np.savez(tmp_path / "mine.npz", probabilities=probs)
    assert not prediction.written_by_predict(str(tmp_path / "mine.npz"))


def test_missing_inputs_and_checkpoints_are_clear_errors(workdir, tmp_path):
    with pytest.raises(FileNotFoundError, match="no_such.png"):
        prediction.list_inputs(f"{tmp_path}/no_such.png")
    empty = tmp_path / "untrained"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="No config.json"):
        prediction.load_predictor(str(empty))
    shutil.copy(workdir / "config.json", empty / "config.json")
    with pytest.raises(FileNotFoundError, match="no checkpoints in .*untrained"):
        prediction.load_predictor(str(empty))


def test_training_curves_of_the_run(workdir, tmp_path):
    records = workdir_lib.RunDir(workdir).read_metrics()
    path = visualize.save_training_curves(records, str(tmp_path / "c.png"))
    pixels = np.asarray(Image.open(path).convert("RGB"))
    assert pixels.shape == (400, 1500, 3) and pixels.std() > 0
    steps, _ = visualize.metric_series(records, "eval", "mean_iou")
    assert steps == [3, 6]  # smoke: eval every 3 of 6 steps


@pytest.fixture(scope="module")
def em_run(tmp_path_factory):
    """A smoke-size run trained through image_folder on 12-bit greyscale images (EM-like).

    Each image has its own exposure (gain): scaling each by its own maximum, as the builder once
    did, gives the same tissue different brightnesses, and 1/65535 (predict's old rule) gives
    pixels 16x darker than training saw.
    """
    from configs import smoke

    root = tmp_path_factory.mktemp("em")
    (root / "images").mkdir()
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    for i in range(12):
        mask = np.zeros((32, 32), np.uint8)
        y, x = rng.integers(2, 18, 2)
        mask[y : y + 12, x : x + 12] = 1
        raw = np.full(mask.shape, 300.0)
        # A dim decoy (not a cell) with edges as sharp as a cell's: only brightness tells them
        # apart, so the masks depend on the pixel scale, not on edges alone.
        dy, dx = rng.integers(0, 24, 2)
        raw[dy : dy + 8, dx : dx + 8] = 1100
        raw[mask == 1] = 3400 * rng.uniform(0.7, 1.0)
        raw += rng.normal(0, 60, mask.shape)
        Image.fromarray(raw.clip(0, 4095).astype(np.uint16)).save(root / "images" / f"{i:02d}.png")
        Image.fromarray(mask).save(root / "masks" / f"{i:02d}.png")
    (root / "val.txt").write_text("\n".join(f"{i:02d}" for i in range(8, 12)))
    config = smoke.get_config()
    config.data.name = "image_folder"
    config.data.data_dir = str(tmp_path_factory.mktemp("tfds16"))
    config.data.folder.root = str(root)
    config.data.folder.channels = 1
    config.data.folder.class_names = ("background", "cell")
    config.data.folder.val_list = "val.txt"
    config.data.mean, config.data.std = (0.3,), (0.3,)
    config.data.saturation = config.data.hue = 0.0
    config.model.num_classes = 2
    # Eval-mode BatchNorm after a few steps still runs on its initial statistics; without it the
    # few steps here already learn the task.
    config.model.use_batchnorm = False
    config.total_steps = config.eval_every_steps = config.checkpoint_every_steps = 24
    config.log_every_steps = 12
    config.optim.learning_rate = 0.02
    workdir = tmp_path_factory.mktemp("em_run")
    train_lib.train_and_evaluate(config, str(workdir))
    return root, workdir


def test_16bit_images_predict_masks_equal_eval_predictions(em_run, tmp_path):
    from jaxseg import evaluation, sharding

    root, workdir = em_run
    raws = [np.asarray(Image.open(p)) for p in sorted((root / "images").glob("*.png"))]
    low, high = min(float(r.min()) for r in raws), max(float(r.max()) for r in raws)
    # The range training used (the whole folder's, not each image's) is in config.json.
    written = json.loads((workdir / "config.json").read_text())
    assert written["data"]["folder"]["intensity_range"] == [low, high]

    config = workdir_lib.read_config(str(workdir))
    mesh = sharding.make_mesh()
    model, state = train_state.restore_checkpoint(config, str(workdir), "latest", mesh)
    evaluator = evaluation.Evaluator(config, model, mesh, datasets.dataset_spec(config.data))
    eval_images, _, eval_preds = evaluator.sample_predictions(state)
    assert len(eval_preds) == 4

    predictor = prediction.load_predictor(str(workdir), "latest")
    assert predictor.intensity_range == (low, high)
    # predict.py decodes each file to the very pixels the builder stored for training and eval.
    builder = datasets.dataset_spec(config.data).make_builder(config.data)
    source = builder.as_data_source("validation")
    for i in range(len(source)):
        name = source[i]["file_name"].decode().split("#")[0]
        pixels = prediction.read_image(str(root / "images" / name), 1, predictor.intensity_range)
        np.testing.assert_array_equal(np.rint(pixels * 255), source[i]["image"], err_msg=name)
    val = [root / "images" / f"{i:02d}.png" for i in range(8, 12)]
    masks = prediction.predict_files(predictor, [str(p) for p in val], str(tmp_path)).masks
    predicted_masks = []
    for path, mask_path in zip(val, masks, strict=True):
        pixels = prediction.read_image(str(path), 1, predictor.intensity_range)
        # The eval example showing this file (sample images are de-normalised, +-1 grey level).
        distance = [np.abs(e.astype(int) - pixels * 255).max() for e in eval_images]
        k = int(np.argmin(distance))
        assert distance[k] <= 1, distance
        predicted = np.asarray(Image.open(mask_path))
        np.testing.assert_array_equal(predicted, eval_preds[k], err_msg=str(path))
        predicted_masks.append(predicted)
    # Not vacuous: the model tells cells from background, and predict's old 1/65535 rule would
    # have fed it other pixels and got other masks.
    assert all(0 < p.mean() < 1 for p in eval_preds), [p.mean() for p in eval_preds]
    old_rule = [np.asarray(Image.open(p), np.float32)[..., None] / 65535 for p in val]
    assert any(
        not np.array_equal(prediction.segment_batch(predictor, [x])[0].labels, m)
        for x, m in zip(old_rule, predicted_masks, strict=True)
    )
