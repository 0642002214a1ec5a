"""Evaluation: whole-image inference at native size, and the split's confusion matrix vs numpy."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxseg import evaluation, inference, metrics, optim, sharding, train_lib
from jaxseg.data import datasets, pipeline
from jaxseg.models import build_model


@pytest.mark.parametrize("hw", [(20, 28), (33, 17)])
def test_valid_unet_whole_image_logits_cover_the_image(hw):
    """Mirror-padding makes a valid U-Net's output cover any image; its centre is unchanged."""
    model = build_model({"name": "unet", "num_classes": 3, "base_width": 2, "depth": 2})
    x = jax.random.normal(jax.random.key(0), (1, *hw, 2))
    variables = jax.jit(functools.partial(model.init, train=False))(
        jax.random.key(1), jnp.zeros((1, 44, 44, 2))
    )
    logits = jax.jit(functools.partial(inference.whole_image_logits, model))(variables, x)
    assert logits.shape == (1, *hw, 3)
    # Pixels far from the border see only real pixels either way: compare with a direct call on
    # a valid-size crop around them (depth 2: 44 in -> 4 out, margin 20 px).
    direct = model.apply(
        variables,
        jnp.pad(x, ((0, 0), (20, 20), (20, 20), (0, 0)), mode="reflect")[:, :44, :44],
        train=False,
    )
    np.testing.assert_allclose(logits[:, :4, :4], direct, atol=1e-5)


def test_padded_unet_whole_image_logits_for_non_multiple_sizes():
    model = build_model({"name": "unet_padded", "num_classes": 2, "base_width": 2, "depth": 2})
    variables = jax.jit(functools.partial(model.init, train=False))(
        jax.random.key(1), jnp.zeros((1, 8, 8, 1))
    )
    logits = jax.jit(functools.partial(inference.whole_image_logits, model))(
        variables, jnp.ones((2, 13, 10, 1))
    )
    assert logits.shape == (2, 13, 10, 2)


@pytest.fixture(scope="module")
def smoke_config(tmp_path_factory):
    from configs import smoke

    config = smoke.get_config()
    config.data.data_dir = str(tmp_path_factory.mktemp("tfds"))
    config.data.synthetic.num_validation = 11  # not a multiple of the batch: padding is masked
    return config


def test_split_confusion_matrix_on_8_devices_equals_numpy(smoke_config):
    config = smoke_config
    spec = datasets.dataset_spec(config.data)
    model = build_model(config.model)
    tx = optim.make_optimizer(config.optim, config.total_steps)
    mesh = sharding.make_mesh()
    _, shardings, init = train_lib.create_state(config, model, tx, mesh)
    state = init(jax.random.key(3))
    result = evaluation.Evaluator(config, model, mesh, spec).evaluate(state)

    # Oracle: every real example once, on the host, with numpy bincount.
    variables = jax.device_get(evaluation.variables_of(state))
    apply = jax.jit(functools.partial(inference.whole_image_logits, model))
    cm = np.zeros((spec.num_classes,) * 2, np.int64)
    seen = 0
    for batch in pipeline.make_eval_iterator(config.data, global_batch_size=config.eval_batch_size):
        pred = np.asarray(apply(variables, batch["image"]).argmax(-1))
        for i in np.flatnonzero(batch["valid"]):
            seen += 1
            t, p = batch["label"][i].ravel(), pred[i].ravel()
            keep = t != 255
            cm += np.bincount(
                spec.num_classes * t[keep] + p[keep], minlength=spec.num_classes**2
            ).reshape(spec.num_classes, spec.num_classes)
    assert seen == 11 == result["num_examples"]
    assert result == {
        **metrics.compute_metrics(cm, list(spec.class_names)),
        "num_examples": 11,
        "confusion_matrix": cm.tolist(),
    }


def test_evaluator_follows_config_eval_mode(smoke_config):
    """config.eval picks the inference: one 32 px window over the 32 px eval canvas reproduces
    whole-image metrics exactly (the window maths is tested in test_inference.py), and flip TTA
    runs through the same jitted step."""
    config = smoke_config
    spec = datasets.dataset_spec(config.data)
    model = build_model(config.model)
    tx = optim.make_optimizer(config.optim, config.total_steps)
    mesh = sharding.make_mesh()
    _, _, init = train_lib.create_state(config, model, tx, mesh)
    state = init(jax.random.key(3))
    whole = evaluation.Evaluator(config, model, mesh, spec).evaluate(state)
    windowed = config.copy_and_resolve_references()
    windowed.eval.mode, windowed.eval.crop, windowed.eval.stride = (
        "sliding_window",
        (32, 32),
        (32, 32),
    )
    assert evaluation.Evaluator(windowed, model, mesh, spec).evaluate(state) == whole
    flipped = config.copy_and_resolve_references()
    flipped.eval.flip = True
    result = evaluation.Evaluator(flipped, model, mesh, spec).evaluate(state)
    assert result["num_examples"] == whole["num_examples"] and 0 <= result["mean_iou"] <= 1
