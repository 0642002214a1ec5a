"""Evaluation: the split's confusion matrix vs numpy, in every inference mode and on hosts."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxseg import evaluation, inference, metrics, optim, sharding, train_state
from jaxseg import workdir as workdir_lib
from jaxseg.data import datasets, loading
from jaxseg.models import build_model


@pytest.fixture(scope="module")
def smoke_config(tmp_path_factory):
    from configs import smoke

    config = smoke.get_config()
    config.data.data_dir = str(tmp_path_factory.mktemp("tfds"))
    config.data.synthetic.num_validation = 11  # not a multiple of the batch: padding is masked
    return config


@pytest.fixture(scope="module")
def random_run(smoke_config):
    """A randomly initialised smoke state and its whole-image evaluation, shared by tests."""
    config = smoke_config
    spec = datasets.dataset_spec(config.data)
    model = build_model(config.model)
    tx, _ = optim.make_optimizer(config.optim, config.total_steps)
    mesh = sharding.make_mesh()
    _, _, init = train_state.create_state(config, model, tx, mesh, spec)
    state = init(jax.random.key(3))
    result = evaluation.Evaluator(config, model, mesh, spec).evaluate(state)
    return spec, model, mesh, state, result


def test_split_confusion_matrix_on_8_devices_equals_numpy(smoke_config, random_run):
    config = smoke_config
    spec, model, mesh, state, result = random_run

    # Oracle: every real example once, on the host, with numpy bincount.
    variables = jax.device_get(train_state.variables_of(state))
    apply = jax.jit(functools.partial(inference.whole_image_logits, model))
    cm, seen = _oracle_confusion(config, functools.partial(apply, variables), spec.num_classes)
    assert seen == 11 == result["num_examples"]
    assert result == {
        **metrics.compute_metrics(cm, list(spec.class_names)),
        "num_examples": 11,
        "confusion_matrix": cm.tolist(),
    }


def test_evaluator_follows_config_eval_mode(smoke_config, random_run):
    """config.eval picks the inference: one 32 px window over the 32 px eval canvas reproduces
    whole-image metrics exactly (the window maths is tested in test_inference.py), and flip TTA
    runs through the same jitted step."""
    config = smoke_config
    spec, model, mesh, state, whole = random_run
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


def _oracle_confusion(config, predict_fn, num_classes, **host):
    """Numpy confusion matrix over one host's eval batches, and how many real examples."""
    cm, seen = np.zeros((num_classes, num_classes), np.int64), 0
    for batch in loading.make_eval_iterator(
        config.data, global_batch_size=config.eval_batch_size, **host
    ):
        pred = np.asarray(predict_fn(batch["image"])).argmax(-1)
        for i in np.flatnonzero(batch["valid"]):
            seen += 1
            t, p = batch["label"][i].ravel(), pred[i].ravel()
            keep = t != 255
            cm += np.bincount(num_classes * t[keep] + p[keep], minlength=num_classes**2).reshape(
                num_classes, num_classes
            )
    return cm, seen


def test_two_simulated_hosts_sum_to_the_whole_split(smoke_config):
    """Each host scores only its shard; the two matrices add up to the single-host matrix."""
    config = smoke_config
    spec = datasets.dataset_spec(config.data)
    model = build_model(config.model)
    variables = jax.jit(functools.partial(model.init, train=False))(
        jax.random.key(5), jnp.zeros((1, 32, 32, 3))
    )
    apply = jax.jit(functools.partial(inference.whole_image_logits, model))
    predict = functools.partial(apply, variables)
    whole, n = _oracle_confusion(
        config, predict, spec.num_classes, process_index=0, process_count=1
    )
    parts = [
        _oracle_confusion(config, predict, spec.num_classes, process_index=i, process_count=2)
        for i in range(2)
    ]
    assert n == 11 and sum(p[1] for p in parts) == 11
    np.testing.assert_array_equal(parts[0][0] + parts[1][0], whole)
    assert parts[0][0].sum() > 0 and parts[1][0].sum() > 0  # both hosts really scored pixels


def test_eval_checkpoint_report_equals_numpy_and_writes_figures(smoke_run, tmp_path):
    """eval.py's library call on a trained smoke run: report.json == numpy oracle; PNGs real."""
    import json
    import shutil

    from PIL import Image

    workdir = str(tmp_path / "run")
    shutil.copytree(smoke_run, workdir)  # The shared run stays as training left it.
    config = workdir_lib.read_config(workdir)  # What eval.py reads.
    result = evaluation.evaluate_checkpoint(config, workdir, "latest")

    model, state = train_state.restore_checkpoint(config, workdir, "latest")
    variables = jax.device_get(train_state.variables_of(state))
    apply = jax.jit(functools.partial(inference.whole_image_logits, model))
    spec = datasets.dataset_spec(config.data)
    cm, n = _oracle_confusion(config, functools.partial(apply, variables), spec.num_classes)

    with open(f"{workdir}/eval/report.json") as f:
        report = json.load(f)
    expected = metrics.compute_metrics(cm, list(spec.class_names))
    for key in ("pixel_accuracy", "mean_accuracy", "mean_iou", "frequency_weighted_iou"):
        assert report[key] == pytest.approx(expected[key], abs=1e-12)
    assert report["confusion_matrix"] == cm.tolist()
    assert report["num_examples"] == n == config.data.synthetic.num_validation
    assert report["step"] == config.total_steps and report["split"] == config.data.eval_split
    assert report["inference"] == "whole_image" and result["mean_iou"] == report["mean_iou"]
    for name in ("confusion_matrix.png", "predictions.png", "curves.png"):
        image = np.asarray(Image.open(f"{workdir}/eval/{name}").convert("L"), np.float32)
        assert min(image.shape) >= 100 and image.std() > 5, name
    assert "| person |" in open(f"{workdir}/eval/per_class.md").read()


def test_eval_without_checkpoints_names_the_directory(smoke_config, tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoints in .*checkpoints"):
        evaluation.evaluate_checkpoint(smoke_config, str(tmp_path), "best")
