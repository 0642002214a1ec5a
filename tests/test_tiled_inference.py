"""predict's inference path (jaxseg.tiled_inference, jaxseg.prediction, jaxseg.load) against
eval's on-device inference, numpy oracles for the confidence maps, and predict.py itself.

Uses the session's one smoke run (a padded U-Net of depth 2, tests/conftest.py).
"""

import functools
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from conftest import write_blob_images
from PIL import Image

import jaxseg
from jaxseg import inference, prediction, sharding, tiled_inference
from jaxseg import workdir as workdir_lib
from jaxseg.models import build_model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZES = {"a_45x70": (45, 70), "b_40x50": (40, 50), "c_33x60": (33, 60), "d_70x90": (70, 90)}


@pytest.fixture(scope="module")
def predictor(smoke_run):
    return prediction.load_predictor(str(smoke_run), "latest")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    write_blob_images(folder, SIZES)
    return folder


def _normalised(predictor, path):
    return (prediction.read_image(str(path), 3) - predictor.mean) / predictor.std


@functools.cache
def _eval_fn(model, workdir, fields):
    """eval's inference (`evaluation.Evaluator`'s: predict_logits of the settings read from
    config.eval + `fields`), jitted once."""
    config = workdir_lib.read_config(workdir)
    with config.unlocked():
        for key, value in fields:
            config.eval[key] = value
    settings = inference.InferenceSettings.from_eval_config(config.eval)
    return jax.jit(functools.partial(inference.predict_logits, model, settings=settings))


def _eval_logits(predictor, smoke_run, x, **eval_fields):
    """Logits [H, W, K] of eval's on-device inference of one image x [H, W, C]."""
    fn = _eval_fn(predictor.model, str(smoke_run), tuple(sorted(eval_fields.items())))
    return np.asarray(fn(jax.device_get(predictor.variables), x[None]))[0]


def test_sliding_window_and_tta_equal_evals_logits(predictor, smoke_run, images):
    """An image larger than the crop: windows batched over 8 devices, summed on the host."""
    x = _normalised(predictor, images / "a_45x70.png")
    window = dict(mode="sliding_window", crop=(32, 32), stride=(20, 24))
    settings = inference.InferenceSettings(**window)
    got, _ = predictor.engine.predict(x[None], settings)
    want = _eval_logits(predictor, smoke_run, x, **window)
    np.testing.assert_allclose(got[0], want, atol=1e-5, rtol=1e-5)
    tta = settings.override(flip=True, scales=[1.0, 1.25])
    got, _ = predictor.engine.predict(x[None], tta)
    want = _eval_logits(predictor, smoke_run, x, flip=True, scales=(1.0, 1.25), **window)
    # Resizes run on the host's CPU backend here and on the device in eval: same op, same data.
    np.testing.assert_allclose(got[0], want, atol=1e-4, rtol=1e-4)
    # Variance oracle (flip TTA): the two augmentations' probabilities, one by one.
    _, variance = predictor.engine.predict(
        x[None], settings.override(flip=True), with_variance=True
    )
    lg = [_eval_logits(predictor, smoke_run, im, **window) for im in (x, x[:, ::-1])]
    probs = np.stack([tiled_inference.softmax(lg[0]), tiled_inference.softmax(lg[1][:, ::-1])])
    oracle = ((probs - probs.mean(0)) ** 2).sum(-1).mean(0)
    np.testing.assert_allclose(variance[0], oracle, atol=1e-5)
    assert variance.max() > 1e-3


def test_overlap_tile_on_the_host_equals_inference():
    """Valid U-Net (random init): host overlap-tile equals the on-device mode exactly."""
    model = build_model(
        ml_collections.ConfigDict({"name": "unet", "num_classes": 3, "base_width": 2, "depth": 2})
    )
    variables = jax.jit(functools.partial(model.init, train=False))(
        jax.random.key(0), jnp.zeros((1, 44, 44, 3))
    )
    mesh = sharding.make_mesh()
    engine = tiled_inference.Engine.create(model, variables, mesh, batch_size=8)
    x = np.asarray(jax.random.normal(jax.random.key(1), (1, 50, 37, 3)))
    settings = inference.InferenceSettings(mode="overlap_tile", tile_in=(44, 44))
    got, _ = engine.predict(x, settings)
    want = jax.jit(inference.overlap_tile_logits, static_argnums=0, static_argnames="tile_in")(
        model, variables, x, tile_in=(44, 44)
    )
    np.testing.assert_allclose(got, np.asarray(want), atol=1e-5, rtol=1e-5)


def test_device_and_host_sliding_windows_follow_one_plan_on_an_odd_image():
    """A 13 x 23 image, 16 x 8 windows every 6 px: taller than the image (mirror-padded by 3 rows
    at the bottom) and with a flush last window along W. A padded U-Net's logits depend on the
    window around a pixel, so a wrong corner, border or average shows: the device mode and the
    host engine both equal the numpy average of the hand-listed windows."""
    model = build_model(
        ml_collections.ConfigDict(
            {"name": "unet_padded", "num_classes": 3, "base_width": 2, "depth": 2}
        )
    )
    variables = jax.jit(functools.partial(model.init, train=False))(
        jax.random.key(0), jnp.zeros((1, 16, 8, 3))
    )
    x = np.asarray(jax.random.normal(jax.random.key(2), (13, 23, 3)))
    crop, stride = (16, 8), (6, 6)
    # Oracle: rows 13-15 mirror rows 11-9; windows start at columns 0, 6, 12 and 15 (flush).
    padded = np.pad(x, ((0, 3), (0, 0), (0, 0)), mode="reflect")
    window = jax.jit(functools.partial(inference.whole_image_logits, model))
    total, count = np.zeros((16, 23, 3), np.float32), np.zeros((16, 23), np.float32)
    for x0 in (0, 6, 12, 15):
        total[:, x0 : x0 + 8] += np.asarray(window(variables, padded[None, :, x0 : x0 + 8]))[0]
        count[:, x0 : x0 + 8] += 1
    oracle = (total / count[..., None])[:13]
    assert count.max() == 2  # the windows overlap

    device = jax.jit(
        functools.partial(inference.sliding_window_logits, model, crop=crop, stride=stride)
    )(variables, x[None])
    engine = tiled_inference.Engine.create(model, variables, sharding.make_mesh(), batch_size=8)
    settings = inference.InferenceSettings(mode="sliding_window", crop=crop, stride=stride)
    host, _ = engine.predict(x[None], settings)
    np.testing.assert_allclose(np.asarray(device)[0], oracle, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(host[0], oracle, rtol=1e-5, atol=1e-6)


def test_big_whole_image_is_tiled_by_max_tile(predictor, smoke_run, images):
    x = _normalised(predictor, images / "d_70x90.png")
    engine = tiled_inference.Engine(
        predictor.model, predictor.engine.whole, predictor.engine.raw, 64
    )
    got, _ = engine.predict(x[None], inference.InferenceSettings())
    want = _eval_logits(
        predictor, smoke_run, x, mode="sliding_window", crop=(64, 64), stride=(48, 48)
    )
    np.testing.assert_allclose(got[0], want, atol=1e-5, rtol=1e-5)


def test_files_of_one_bucket_shape_run_as_one_batch(predictor, images):
    # The files' own sizes, as predict.py reads them from each header.
    shapes = [Image.open(images / f"{s}.png").size[::-1] for s in SIZES]
    batches = prediction.batch_plan(shapes, predictor.settings, predictor)
    # a 45x70, b 40x50 and c 33x60 all pad to 64 x 96 / 64 x 64 / 64 x 64; d to 96 x 96.
    assert sorted(batches) == [[0], [1, 2], [3]]


def test_confidence_maps_match_numpy_oracles(predictor, images, tmp_path):
    paths = [str(images / f"{s}.png") for s in ("b_40x50", "c_33x60")]
    settings = predictor.settings.override(flip=True)
    prediction.predict_files(
        predictor, paths, str(tmp_path), settings=settings, save_probs="npz", confidence=True
    )
    for stem in ("b_40x50", "c_33x60"):
        saved = np.load(tmp_path / f"{stem}_probs.npz")
        assert list(saved["class_names"]) == list(predictor.class_names)
        probs = saved["probabilities"].astype(np.float32)  # float16 on disk: ~5e-4 relative
        np.testing.assert_allclose(probs.sum(-1), 1.0, atol=5e-3)
        maxprob = _read_unit_png(str(tmp_path / f"{stem}_maxprob.png"))
        entropy = _read_unit_png(str(tmp_path / f"{stem}_entropy.png"))
        variance = _read_unit_png(str(tmp_path / f"{stem}_tta_variance.png"))
        for m in (maxprob, entropy, variance):
            assert m.shape == probs.shape[:2] and 0 <= m.min() and m.max() <= 1
        k = probs.shape[-1]
        oracle = -(probs * np.log(np.maximum(probs, 1e-12))).sum(-1) / np.log(k)
        np.testing.assert_allclose(entropy, oracle, atol=2e-3)
        np.testing.assert_allclose(maxprob, probs.max(-1), atol=1e-3)
        assert maxprob.min() >= 1 / k - 1e-3
        mask = np.asarray(Image.open(tmp_path / f"{stem}.png"))
        top2 = np.sort(probs, -1)[..., -2:]
        clear = top2[..., 1] - top2[..., 0] > 2e-3
        np.testing.assert_array_equal(mask[clear], probs.argmax(-1)[clear])


def test_confidence_maps_oracle_on_known_probabilities():
    probs = np.asarray([[[1.0, 0.0, 0.0], [1 / 3, 1 / 3, 1 / 3], [0.5, 0.25, 0.25]]], np.float32)
    maxprob, entropy = tiled_inference.confidence_maps(probs)
    np.testing.assert_allclose(maxprob, [[1.0, 1 / 3, 0.5]], atol=1e-6)
    want = -(0.5 * np.log(0.5) + 2 * 0.25 * np.log(0.25)) / np.log(3)
    np.testing.assert_allclose(entropy, [[0.0, 1.0, want]], atol=1e-6)


def test_python_api_equals_predict_py(smoke_run, images, tmp_path):
    """predict.py as a user runs it (repo root, relative --output), sliding window + flip."""
    out = os.path.relpath(tmp_path / "masks", REPO)
    cmd = [sys.executable, "predict.py", f"--workdir={smoke_run}", f"--input={images}"]
    flags = ["--mode=sliding_window", "--crop=32,32", "--stride=24,24", "--flip", "--overlay"]
    subprocess.run([*cmd, f"--output={out}", *flags], cwd=REPO, check=True, capture_output=True)
    seg = jaxseg.load(str(smoke_run))
    assert seg.classes == ("background", "person", "purse", "plants", "sidewalk", "building")
    paths = [str(images / f"{s}.png") for s in SIZES]
    pixels = [np.asarray(Image.open(p)) for p in paths]
    by_path = seg.predict(paths, mode="sliding_window", crop=(32, 32), stride=(24, 24), flip=True)
    by_array = seg.predict(pixels, mode="sliding_window", crop=(32, 32), stride=(24, 24), flip=True)
    for stem, a, b in zip(SIZES, by_path, by_array, strict=True):
        mask = np.asarray(Image.open(os.path.join(REPO, out, f"{stem}.png")))
        np.testing.assert_array_equal(a, mask)
        np.testing.assert_array_equal(b, mask)
        assert os.path.exists(os.path.join(REPO, out, f"{stem}_overlay.png"))
    # A batch array of one size and the whole_image default (the run's config.eval).
    batch = np.stack([pixels[1], pixels[1][::-1]])
    labels = seg.predict(batch)
    assert labels.shape == (2, 40, 50) and labels.dtype == np.uint8
    np.testing.assert_array_equal(labels[0], seg.predict(pixels[1]))


def test_readme_python_api_example_as_written(smoke_run, images, tmp_path, monkeypatch, capsys):
    readme = open(os.path.join(REPO, "README.md")).read()
    section = readme[readme.index("## Python API") :]
    code = section[section.index("```python\n") + 10 : section.index("```\n", 10)]
    os.symlink(smoke_run, tmp_path / "runs_default")
    Image.open(images / "a_45x70.png").save(tmp_path / "street.png")
    monkeypatch.chdir(tmp_path)
    exec(code.replace('"runs/default"', '"runs_default"'), {})
    counts = eval(capsys.readouterr().out.strip().splitlines()[-1])
    assert sum(counts.values()) == 45 * 70
    assert set(counts) <= set(jaxseg.load("runs_default").classes)


def test_probabilities_as_16_bit_pngs_round_trip(tmp_path):
    probs = tiled_inference.softmax(np.random.default_rng(0).normal(size=(5, 7, 3)) * 3)
    paths = prediction.save_probabilities(probs, str(tmp_path), "x", "png16", ("a", "b", "c"))
    assert [os.path.basename(p) for p in paths] == ["x_prob_0.png", "x_prob_1.png", "x_prob_2.png"]
    back = np.stack([_read_unit_png(p) for p in paths], axis=-1)
    np.testing.assert_allclose(back, probs, atol=0.5 / 65535 + 1e-7)
    with pytest.raises(ValueError, match="save_probs"):
        prediction.save_probabilities(probs, str(tmp_path), "x", "tiff", ("a", "b", "c"))


def _read_unit_png(path) -> np.ndarray:
    """A 16-bit PNG predict wrote (`prediction.save_unit_png`) back as floats in [0, 1]."""
    with Image.open(path) as img:
        return np.asarray(img, np.float32) / 65535
