"""predict: masks at each image's own size, equal to argmax of whole-image logits; clear errors.

One smoke training run (in-process, ~30 s) is shared by the whole session (conftest.py).
"""

import shutil

import jax
import numpy as np
import pytest
from PIL import Image

from jaxseg import checkpointing, inference, prediction, visualize
from jaxseg.data import datasets
from jaxseg.models import build_model

# (height, width): one exact bucket, two that need padding (45 x 70 is no multiple of 32).
SIZES = {"a_32x32": (32, 32), "b_45x70": (45, 70), "c_64x40": (64, 40)}


@pytest.fixture(scope="module")
def workdir(smoke_run):
    return smoke_run  # The session's one smoke run (tests/conftest.py).


@pytest.fixture(scope="module")
def predictor(workdir):
    return prediction.load_predictor(str(workdir), "latest")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for stem, (h, w) in SIZES.items():
        # Smooth blobs rather than noise, so the model's argmax is not dominated by near-ties.
        base = rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3), np.uint8)
        Image.fromarray(base).resize((w, h), Image.BILINEAR).save(folder / f"{stem}.png")
    (folder / "notes.txt").write_text("not an image; the folder listing must skip it")
    return folder


def _oracle_labels(workdir, predictor, pixels: np.ndarray) -> np.ndarray:
    """argmax of whole_image_logits on an image normalised by hand from config.json."""
    config = checkpointing.read_config(str(workdir))
    model = build_model(config.model)
    x = (pixels.astype(np.float32) / 255 - np.float32(config.data.mean)) / np.float32(
        config.data.std
    )
    # Its own jit, apart from prediction's: an independent path to the same logits.
    logits = jax.jit(inference.whole_image_logits, static_argnums=0)(
        model, predictor.variables, x[None]
    )
    logits = np.asarray(logits)[0]
    return logits.argmax(-1), np.sort(logits, axis=-1)


def test_predict_writes_one_palette_mask_per_image_at_its_size(workdir, images, tmp_path):
    out = tmp_path / "masks"
    paths = prediction.predict(str(workdir), str(images), str(out), "best", overlay=True)
    spec = datasets.dataset_spec(checkpointing.read_config(str(workdir)).data)
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
        else:  # Padded to 64 x 96 by mirroring, then cropped back from the top-left.
            padded = np.pad(pixels, ((0, 19), (0, 26), (0, 0)), mode="reflect")
            want, sorted_logits = _oracle_labels(workdir, predictor, padded)
            want, sorted_logits = want[:45, :70], sorted_logits[:45, :70]
        # Jitted and eager runs may round differently; only clear winners must agree.
        clear = sorted_logits[..., -1] - sorted_logits[..., -2] > 1e-4
        assert clear.mean() > 0.9
        np.testing.assert_array_equal(mask[clear], want[clear])


def test_same_bucket_compiles_once(predictor):
    before = predictor.predict._cache_size()
    for h, w in [(33, 50), (40, 64), (64, 60)]:  # all pad to 64 x 64
        prediction.predict_image(predictor, np.full((h, w, 3), 0.5, np.float32))
    assert predictor.predict._cache_size() - before <= 1


def test_bucket_shape():
    assert prediction.bucket_shape(45, 70) == (64, 96)
    assert prediction.bucket_shape(32, 1) == (32, 32)


def test_unreadable_image_error_names_the_file(predictor, images, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"definitely not a png")
    with pytest.raises(ValueError, match="cannot read image .*broken.png"):
        prediction.predict_files(predictor, [str(images / "a_32x32.png"), str(bad)], str(tmp_path))


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
    path = visualize.save_training_curves(str(workdir / "metrics.jsonl"), str(tmp_path / "c.png"))
    pixels = np.asarray(Image.open(path).convert("RGB"))
    assert pixels.shape == (400, 1500, 3) and pixels.std() > 0
    steps, _ = visualize.metric_series(
        visualize.read_metrics(str(workdir / "metrics.jsonl")), "eval", "mean_iou"
    )
    assert steps == [3, 6]  # smoke: eval every 3 of 6 steps
