"""The U-Net ISBI recipe on an ISBI-like folder (0/255 greyscale masks): its training batches
carry the precomputed eq. 2 weight map, warped with the mirror-padded slices, and evaluation
reports the challenge's pixel and Rand errors from the same pass, on 8 devices, equal to a
numpy recomputation."""

import functools
from pathlib import Path

import jax
import numpy as np
import pytest
from PIL import Image

from configs import unet_isbi
from jaxseg import (
    evaluation,
    inference,
    losses,
    metrics,
    optim,
    sharding,
    train_lib,
    train_state,
)
from jaxseg.data import datasets, loading, weight_maps
from jaxseg.models import build_model, input_context
from jaxseg.models.layers import center_crop

SIZE = (40, 36)  # slices, px


def _membrane_mask(rng) -> np.ndarray:
    """255 = cell, 0 = membrane: a few random 1-2 px walls."""
    mask = np.full(SIZE, 255, np.uint8)
    for r in rng.choice(SIZE[0] - 2, 4, replace=False):
        mask[r : r + rng.integers(1, 3), :] = 0
    for c in rng.choice(SIZE[1] - 2, 3, replace=False):
        mask[:, c : c + rng.integers(1, 3)] = 0
    return mask


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    root = tmp_path_factory.mktemp("isbi")
    (root / "images").mkdir()
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    for i in range(7):
        mask = _membrane_mask(rng)
        noise = rng.normal(0, 20, SIZE)
        image = np.clip(np.where(mask > 0, 170, 60) + noise, 0, 255).astype(np.uint8)
        Image.fromarray(image).save(root / "images" / f"slice{i:02d}.png")
        Image.fromarray(mask).save(root / "masks" / f"slice{i:02d}.png")
    (root / "val.txt").write_text("slice04\nslice05\nslice06\n")
    config = unet_isbi.get_config()
    config.data.data_dir = str(root / "tfds")
    config.data.folder.root = str(root)
    config.model.base_width, config.model.depth = 4, 2  # 56 px tiles -> 16 px, context 20
    config.data.crop_size = (56, 56)
    config.eval.tile_in = (56, 56)
    config.data.eval_pad_size = SIZE
    config.batch_size, config.eval_batch_size = 2, 8
    return config


def test_training_batches_carry_the_precomputed_weight_map_warped_with_the_slice(config):
    """The eq. 2 map is computed once per stored slice (as in the paper), stored beside the
    data set, and moves with the label: mirror-padded by the context like the slice."""
    model = build_model(config.model)
    context = input_context(model, tuple(config.data.crop_size))
    assert context == (20, 20)
    plain = config.data.copy_and_resolve_references()
    plain.rotation_degrees = plain.shift_px = 0.0
    plain.elastic = plain.hflip = False
    plain.brightness = plain.contrast = 0.0
    plain.crop_size = (SIZE[0] + 40, SIZE[1] + 40)  # the whole padded slice
    batch = next(loading.make_train_iterator(plain, global_batch_size=8, seed=0, context=context))
    batch = {k: np.asarray(v) for k, v in batch.items()}
    _, source = loading.open_split(plain, "train", key="test")
    builder = datasets.dataset_spec(plain).make_builder(plain)
    stored = [
        (builder.as_data_source("train")[i]["label"][..., 0] > 0).astype(np.int32)
        for i in range(len(source))
    ]
    for label, weight in zip(batch["label"], batch["weight"], strict=True):
        centre = label[20:-20, 20:-20]
        assert any(np.array_equal(centre, s) for s in stored)
        np.testing.assert_array_equal(label, np.pad(centre, 20, mode="reflect"))
        want = np.pad(weight_maps.binary_weight_map(centre), 20, mode="reflect")
        np.testing.assert_array_equal(weight, want)
    spec = datasets.dataset_spec(plain)
    stored_maps = list((Path(builder.data_dir) / "weight_maps").glob("train-*.array_record"))
    assert [p.name for p in stored_maps] == ["train-w0_10-sigma_5.array_record"]
    decoder = loading.Decoder(spec, source, "train")
    label_of = lambda index: decoder(index)["label"]
    maps = weight_maps.open_weight_maps(plain, spec, "train", label_of, len(source), w0=10, sigma=5)
    assert len(maps) == len(source)

    # The recipe as configured: augmented 56 px tiles with their weights.
    batch = next(
        loading.make_train_iterator(config.data, global_batch_size=8, seed=0, context=context)
    )
    batch = {k: np.asarray(v) for k, v in batch.items()}
    assert batch["weight"].shape == batch["label"].shape == (8, 56, 56)
    scored = batch["label"] != 255
    assert (batch["weight"][scored] > 0).all() and (batch["weight"][~scored] == 0).all()
    assert batch["weight"].max() > 3  # the border term between cells


def test_evaluation_reports_isbi_pixel_and_rand_errors_equal_to_numpy(config):
    spec = datasets.dataset_spec(config.data)
    model = build_model(config.model)
    mesh = sharding.make_mesh()
    assert mesh.devices.size == 8
    tx, _ = optim.make_optimizer(config.optim, config.total_steps)
    _, _, init = train_state.create_state(config, model, tx, mesh, spec)
    state = init(jax.random.key(0))
    result = evaluation.Evaluator(config, model, mesh, spec).evaluate(state)

    settings = inference.InferenceSettings.from_eval_config(config.eval)
    predict = jax.jit(functools.partial(inference.predict_logits, model, settings=settings))
    variables = train_state.variables_of(state)
    labels, preds = [], []
    for batch in loading.make_eval_iterator(config.data, global_batch_size=8):
        keep = batch["valid"]
        labels.append(batch["label"][keep])
        preds.append(np.asarray(predict(variables, batch["image"])).argmax(-1)[keep])
    labels, preds = np.concatenate(labels), np.concatenate(preds)
    assert len(labels) == result["num_examples"] == 3
    scored = labels != 255
    assert result["pixel_error"] == pytest.approx(np.mean(labels[scored] != preds[scored]))
    want = metrics.rand_error(metrics.rand_statistics(labels, preds))
    assert result["rand_error"] == pytest.approx(want["rand_error"], rel=1e-9)
    assert result["rand_f_score"] == pytest.approx(want["rand_f_score"], rel=1e-9)
    assert 0 < result["rand_error"] < 1


def test_isbi_metrics_need_binary_data():
    from configs import smoke

    config = smoke.get_config()
    config.eval.isbi_metrics = True
    spec = datasets.dataset_spec(config.data)
    with pytest.raises(ValueError, match="config.eval.isbi_metrics"):
        evaluation.Evaluator(config, build_model(config.model), sharding.make_mesh(), spec)


def test_train_step_weights_its_loss_by_the_batch_weight_map(config):
    """The jitted 8-device train step's loss is eq. 1 with the batch's eq. 2 weights: the
    weighted mean of the per-pixel cross-entropy over the tile's scored centre."""
    config = config.copy_and_resolve_references()
    config.model.dropout_rate = 0.0  # so the train-mode forward equals an eval-mode one
    config.batch_size = 8
    model = build_model(config.model)
    mesh = sharding.make_mesh()
    tx, _ = optim.make_optimizer(config.optim, config.total_steps)
    spec = datasets.dataset_spec(config.data)
    _, state_sharding, init = train_state.create_state(config, model, tx, mesh, spec)
    state = init(jax.random.key(0))
    variables = train_state.variables_of(state)
    local = next(
        loading.make_train_iterator(
            config.data, global_batch_size=8, seed=0, context=input_context(model, (56, 56))
        )
    )
    logits = model.apply(variables, local["image"], train=False)
    centre = lambda x: center_crop(x[..., None], *logits.shape[1:3])[..., 0]
    want, _ = losses.cross_entropy(
        logits, centre(local["label"]), pixel_weights=centre(local["weight"])
    )
    unweighted, _ = losses.cross_entropy(logits, centre(local["label"]))
    step = train_lib.make_train_step(config, model, tx, mesh, state_sharding)
    _, out = step(state, local)
    assert float(out["loss"]) == pytest.approx(float(want), rel=1e-4)
    assert abs(float(want) - float(unweighted)) > 1e-3  # the weights change the loss
