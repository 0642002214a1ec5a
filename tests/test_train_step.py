"""The train step: 8 devices == 1 device (data and fsdp), accumulation == big batch, one compile."""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.sharding import AxisType, Mesh

from configs import base
from jaxseg import optim, sharding, train_lib, train_state
from jaxseg.models import build_model

NUM_CLASSES = 3


def _config(use_batchnorm=True, dropout=0.0, accum=1):
    c = ml_collections.ConfigDict()
    c.model = {
        "name": "unet_padded",
        "num_classes": NUM_CLASSES,
        "base_width": 4,
        "depth": 2,
        "use_batchnorm": use_batchnorm,
        "dropout_rate": dropout,
    }
    c.loss = {"normalize": True, "class_weights": (), "dice_weight": 0.0}
    # The base config's fields with a plain SGD recipe (explicit values: the test pins them).
    c.optim = base.optim_config()
    c.optim.update(
        optimizer="sgd",
        learning_rate=0.1,
        momentum=0.9,
        weight_decay=1e-4,
        weight_decay_mode="coupled",
        grad_clip_norm=0.0,
        schedule="constant",
        warmup_steps=0,
    )
    c.grad_accum_steps = accum
    return c


def _batch(seed=0, n=8, hw=16):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, NUM_CLASSES, (n, hw, hw)).astype(np.int32)
    labels[:, :2] = 255  # ignored rows
    images = rng.normal(size=(n, hw, hw, 3)).astype(np.float32) + labels[..., None] % 255 * 0.5
    return {"image": images, "label": labels}


def _mesh(num_devices, fsdp=1):
    devices = np.array(jax.devices()[:num_devices]).reshape(num_devices // fsdp, fsdp)
    return Mesh(devices, sharding.MESH_AXES, axis_types=(AxisType.Auto, AxisType.Auto))


def _run(config, mesh, batches, min_fsdp_size=2**18):
    model = build_model(config.model)
    tx, _ = optim.make_optimizer(config.optim, 100)
    init = functools.partial(train_state.init_state, model=model, tx=tx, input_shape=(1, 16, 16, 3))
    abstract = jax.eval_shape(init, jax.random.key(0))
    shardings = sharding.state_shardings(abstract, mesh, min_fsdp_size=min_fsdp_size)
    state = jax.jit(init, out_shardings=shardings)(jax.random.key(0))
    step = train_lib.make_train_step(config, model, tx, mesh, shardings)
    losses = []
    for b in batches:
        state, m = step(state, jax.device_put(b, sharding.batch_sharding(mesh)))
        losses.append(float(m["loss"]))
    return jax.device_get(state), losses, step, state


@pytest.fixture(scope="module")
def single_device_run():
    return _run(_config(), _mesh(1), [_batch(0), _batch(1)])


def _assert_states_close(a, b, rtol=2e-4, atol=2e-5):
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=rtol, atol=atol), a, b)


def test_eight_devices_match_one_device(single_device_run):
    ref_state, ref_losses, _, _ = single_device_run
    state, losses, _, _ = _run(_config(), _mesh(8), [_batch(0), _batch(1)])
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
    _assert_states_close(state.params, ref_state.params)
    # BatchNorm statistics are global: the same as on one device holding the whole batch.
    _assert_states_close(state.batch_stats, ref_state.batch_stats)
    assert ref_losses[1] < ref_losses[0] * 1.5  # it trains, not diverges


def test_fsdp_matches_one_device(single_device_run):
    ref_state, ref_losses, _, _ = single_device_run
    state, losses, _, live = _run(
        _config(), _mesh(8, fsdp=2), [_batch(0), _batch(1)], min_fsdp_size=64
    )
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
    _assert_states_close(state.params, ref_state.params)
    specs = {str(x.sharding.spec) for x in jax.tree.leaves(live.params)}
    assert any("fsdp" in s for s in specs), specs  # some parameters really are sharded


def test_gradient_accumulation_equals_big_batch():
    batches = [_batch(3), _batch(4)]
    cfg1 = _config(use_batchnorm=False)
    cfg4 = _config(use_batchnorm=False, accum=4)
    big, big_losses, _, _ = _run(cfg1, _mesh(8), batches)
    acc, acc_losses, _, _ = _run(cfg4, _mesh(8), batches)
    np.testing.assert_allclose(acc_losses, big_losses, rtol=1e-5)
    _assert_states_close(acc.params, big.params)


def test_train_step_compiles_once(single_device_run):
    *_, step, _ = single_device_run
    assert step._cache_size() == 1


def test_dropout_rng_differs_per_step_and_state_rng_is_stable():
    config = _config(use_batchnorm=False, dropout=0.5)
    model = build_model(config.model)
    tx, _ = optim.make_optimizer(config.optim, 100)
    state = train_state.init_state(
        jax.random.key(0), model=model, tx=tx, input_shape=(1, 16, 16, 3)
    )
    step = jax.jit(
        functools.partial(
            train_lib.train_step, model=model, tx=tx, loss_cfg=config.loss, num_classes=NUM_CLASSES
        )
    )
    b = jax.tree.map(jnp.asarray, _batch(0))
    s1, m1 = step(state, b)
    s1b, m1b = step(state, b)
    assert float(m1["loss"]) == float(m1b["loss"])  # deterministic given the state
    np.testing.assert_array_equal(s1.rng, state.rng)
    assert int(s1.step) == 1
