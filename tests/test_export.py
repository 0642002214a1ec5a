"""Exports (StableHLO, SavedModel) reloaded and run on validation images equal in-process
inference; the symbolic-shape export runs at two batch sizes and two image sizes. Without
TensorFlow the StableHLO export works and the SavedModel one stops, naming the extra, before
writing anything; the SavedModel round trip needs TensorFlow (skipped without it).

Tolerances: logits within 1e-4 (absolute) + 1e-4 (relative) of `jaxseg.inference` (the export
is a separately lowered program: XLA may fuse and order reductions differently); probabilities
within 1e-5; labels equal wherever the top-two logits differ by more than 1e-4 (ties may flip).
"""

import functools
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from jaxseg import backend, export, inference, prediction, tiled_inference
from jaxseg import workdir as workdir_lib
from jaxseg.data import loading
from jaxseg.models import MODELS

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def predictor(smoke_run):
    return prediction.load_predictor(str(smoke_run), "best")


@pytest.fixture(scope="module")
def validation_images(smoke_run):
    """The validation split's images as the uint8 pixels a user would feed: [N, 32, 32, 3]."""
    config = workdir_lib.read_config(str(smoke_run))
    batch = next(iter(loading.make_eval_iterator(config.data, global_batch_size=8)))
    keep = np.flatnonzero(batch["valid"])
    mean, std = np.asarray(config.data.mean), np.asarray(config.data.std)
    pixels = (batch["image"][keep] * std + mean) * 255
    # The pipeline normalised uint8 pixels: undoing it lands within float error of integers.
    np.testing.assert_allclose(pixels, np.rint(pixels), atol=1e-3)
    return np.rint(pixels).astype(np.uint8)


@pytest.fixture(scope="module")
def stablehlo_dir(smoke_run, predictor, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "hlo"
    export.export_run(str(smoke_run), str(out), "stablehlo", "best")
    return out


@pytest.fixture(scope="module")
def savedmodel_export(smoke_run, tmp_path_factory):
    """(output folder, finished export.py process): the user's command, from the repo root,
    with a relative --output."""
    pytest.importorskip("tensorflow", reason="the SavedModel export needs the savedmodel extra")
    out = os.path.relpath(tmp_path_factory.mktemp("export") / "tf", REPO)
    cmd = [sys.executable, "export.py", f"--workdir={smoke_run}", "--format=savedmodel"]
    # The user's environment: XLA_FLAGS without the flags conftest's backend call added.
    with backend.xla_flags_hidden_from_tensorflow():
        proc = subprocess.run([*cmd, f"--output={out}"], cwd=REPO, capture_output=True, text=True)
    return os.path.join(REPO, out), proc


# Where TensorFlow's XLA is older than the StableHLO jax writes (jax 0.12 with tensorflow 2.21),
# export.py must stop with this and leave no SavedModel; elsewhere (jax 0.10.2) it must round-trip.
TOO_NEW = "cannot run the StableHLO that jax"


@pytest.fixture(scope="module")
def savedmodel_dir(savedmodel_export):
    out, proc = savedmodel_export
    if proc.returncode:
        assert TOO_NEW in proc.stderr, proc.stderr[-3000:]
        pytest.skip(f"this TensorFlow cannot run jax {jax.__version__}'s StableHLO")
    return out


def test_savedmodel_export_runs_in_tensorflow_or_stops_clearly_leaving_nothing(
    savedmodel_export,
):
    out, proc = savedmodel_export
    if proc.returncode:
        assert TOO_NEW in proc.stderr and "--format stablehlo" in proc.stderr, proc.stderr[-3000:]
        assert not os.path.exists(out) or os.listdir(out) == []
    else:
        assert {"saved_model.pb", "variables", "card.json"} <= set(os.listdir(out))


def _in_process(predictor, pixels: np.ndarray):
    """(logits, probabilities) of uint8 images through jaxseg.inference, normalised by hand."""
    x = (pixels.astype(np.float32) / 255 - predictor.mean) / predictor.std
    fn = jax.jit(inference.whole_image_logits, static_argnums=0)
    logits = np.asarray(fn(predictor.model, jax.device_get(predictor.variables), x))
    return logits, tiled_inference.softmax(logits)


def _assert_matches(out, predictor, pixels, min_clear=0.9):
    logits, probs = _in_process(predictor, pixels)
    got_logits = np.asarray(out["logits"])
    assert got_logits.shape == logits.shape
    np.testing.assert_allclose(got_logits, logits, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(np.asarray(out["probabilities"]), probs, atol=1e-5)
    top2 = np.sort(logits, axis=-1)[..., -2:]
    clear = top2[..., 1] - top2[..., 0] > 1e-4
    assert clear.mean() > min_clear
    labels = np.asarray(out["labels"])
    assert labels.dtype == np.int32
    np.testing.assert_array_equal(labels[clear], logits.argmax(-1)[clear])


def test_stablehlo_round_trip_at_two_batch_sizes_and_image_sizes(
    stablehlo_dir, predictor, validation_images
):
    """One symbolic export, run on the validation batch (8 x 32 x 32) and on 3 x 48 x 64."""
    call, card = export.load_stablehlo(str(stablehlo_dir))
    assert card["size_rule"] == {"kind": "multiple", "multiple": 4}  # smoke: U-Net depth 2
    rng = np.random.default_rng(0)
    big = np.kron(validation_images[:3], np.ones((1, 2, 2, 1), np.uint8))[:, :48, :64]
    big = np.clip(big.astype(int) + rng.integers(-3, 4, big.shape), 0, 255).astype(np.uint8)
    for images in (validation_images, big):
        _assert_matches(call(images), predictor, images)


def test_savedmodel_round_trip_equals_inference(savedmodel_dir, predictor, validation_images):
    tf = pytest.importorskip("tensorflow")

    serve = tf.saved_model.load(savedmodel_dir).signatures["serving_default"]
    assert serve.structured_input_signature[1]["images"].dtype == tf.uint8
    with backend.xla_flags_hidden_from_tensorflow():  # TF's older XLA aborts on jax's flags
        out = {k: v.numpy() for k, v in serve(images=tf.constant(validation_images)).items()}
    _assert_matches(out, predictor, validation_images)


@pytest.mark.parametrize("fmt", export.FORMATS)
def test_card_describes_inputs_and_source(fmt, request, smoke_run, predictor):
    config = workdir_lib.read_config(str(smoke_run))
    folder = request.getfixturevalue("stablehlo_dir" if fmt == "stablehlo" else "savedmodel_dir")
    card = json.loads((open(os.path.join(folder, "card.json"))).read())
    assert card["format"] == fmt
    assert card["classes"] == list(predictor.class_names) and len(card["palette"]) == 6
    np.testing.assert_allclose(card["mean"], config.data.mean)
    np.testing.assert_allclose(card["std"], config.data.std)
    assert card["input"]["channels"] == 3 and card["input"]["dtype"] == "uint8"
    # "best" by validation mIoU: one of the smoke run's two evaluated steps.
    assert card["source"]["step"] == predictor.step and predictor.step in (3, 6)
    assert card["source"]["workdir"] == os.path.abspath(smoke_run)
    assert card["jaxseg_version"] == "0.1.0"


def test_without_tensorflow_savedmodel_stops_naming_the_extra_and_stablehlo_works(
    smoke_run, no_tensorflow_env, tmp_path, predictor, validation_images
):
    """The user's commands where TensorFlow is not installed (`import tensorflow` fails)."""

    def export_py(fmt, out):
        cmd = [sys.executable, "export.py", f"--workdir={smoke_run}", f"--format={fmt}"]
        return subprocess.run(
            [*cmd, f"--output={out}"],
            cwd=REPO,
            env=no_tensorflow_env,
            capture_output=True,
            text=True,
        )

    proc = export_py("savedmodel", tmp_path / "tf")
    assert proc.returncode != 0
    assert 'pip install -e ".[savedmodel]"' in proc.stderr, proc.stderr[-3000:]
    assert "--format stablehlo" in proc.stderr
    assert not (tmp_path / "tf").exists()
    proc = export_py("stablehlo", tmp_path / "hlo")
    assert proc.returncode == 0, proc.stderr[-3000:]
    call, card = export.load_stablehlo(str(tmp_path / "hlo"))
    assert card["format"] == "stablehlo"
    _assert_matches(call(validation_images), predictor, validation_images)


def test_savedmodel_without_tensorflow_fails_before_restoring_or_writing(
    smoke_run, tmp_path, monkeypatch
):
    """In process: the check runs first, so not even the output folder is created."""
    monkeypatch.setitem(sys.modules, "tensorflow", None)  # `import tensorflow` -> ImportError
    with pytest.raises(ImportError, match=r'pip install "jaxseg\[savedmodel\]"'):
        export.export_run(str(smoke_run), str(tmp_path / "tf"), "savedmodel")
    assert not (tmp_path / "tf").exists()


def test_size_rules_follow_each_models_constraints():
    """Symbolic sides exactly where every layer traces with symbolic shapes (checked by
    exporting each model abstractly at a small symbolic size)."""
    import jax.numpy as jnp

    cases = {
        "unet_padded": {"depth": 3, "base_width": 2},
        "unet_padded bilinear": {"depth": 3, "base_width": 2, "upsampling": "bilinear"},
        "unet": {"depth": 2, "base_width": 2},
        "fcn32s padded learnable": {"alignment": "padded", "learnable_upsampling": True},
        "fcn32s padded": {"alignment": "padded"},
    }
    for name, fields in cases.items():
        model = MODELS[name.split()[0]](num_classes=2, **fields)
        m = export.symbolic_multiple(model)
        rule = export.size_rule(model, (64, 64))
        spec, _ = export.input_spec(rule, 3)
        init = functools.partial(model.init, train=False)
        variables = jax.eval_shape(init, jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
        serve = export.serving_fn(model, (0.5,) * 3, (0.25,) * 3, rule)
        exported = jax.export.export(jax.jit(serve))(variables, spec)
        images = exported.in_avals[-1]  # in_avals: the variables' leaves, then the images
        assert str(images.shape[0]) == "b"
        if m is None:
            assert rule["kind"] == "fixed" and images.shape[1:3] == (64, 64)
            # The symbolic export of these models really fails; the rule is not conservative.
            sym = jax.ShapeDtypeStruct(jax.export.symbolic_shape("b, 32*h, 32*w, 3"), jnp.uint8)
            loose = export.serving_fn(model, (0.5,) * 3, (0.25,) * 3, {"kind": "multiple"})
            with pytest.raises((TypeError, jax.errors.InconclusiveDimensionOperation)):
                jax.export.export(jax.jit(loose))(variables, sym)
        else:
            assert str(images.shape[1]) == f"{m}*h"


def test_export_refuses_a_non_empty_output(smoke_run, stablehlo_dir):
    with pytest.raises(ValueError, match="not empty"):
        export.export_run(str(smoke_run), str(stablehlo_dir), "stablehlo")


def test_fixed_size_export_of_a_bilinear_unet_equals_inference(tmp_path):
    """The fixed-size path (whole_image_logits inside: mirror padding to a multiple of 2**depth)
    on a random-init bilinear U-Net at 30 x 42, a size that needs padding."""
    import jax.numpy as jnp

    model = MODELS["unet_padded"](num_classes=3, base_width=2, depth=2, upsampling="bilinear")
    init = functools.partial(model.init, train=False)
    variables = jax.jit(init)(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    stub = prediction.Predictor(
        predict=None,
        variables=variables,
        mean=np.asarray([0.4, 0.5, 0.6], np.float32),
        std=np.asarray([0.2, 0.25, 0.3], np.float32),
        channels=3,
        palette=(),
        bucket=32,
        step=0,
        model=model,
    )
    rule = export.size_rule(model, (30, 42))
    assert rule == {"kind": "fixed", "height": 30, "width": 42}
    export.export_stablehlo(stub, rule, str(tmp_path))
    exported = jax.export.deserialize(bytearray((tmp_path / export.STABLEHLO_FILE).read_bytes()))
    images = np.random.default_rng(1).integers(0, 256, (2, 30, 42, 3), np.uint8)
    # Random init: small logits, so fewer pixels have a clear winner than with a trained run.
    _assert_matches(exported.call(images), stub, images, min_clear=0.5)
