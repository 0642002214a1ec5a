"""Tests for jaxseg/optim.py: schedules and updates against hand-computed numpy oracles."""

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from jaxseg import optim


def _cfg(**overrides) -> ml_collections.ConfigDict:
    """A complete `config.optim` section: plain SGD, constant lr, nothing optional switched on."""
    cfg = ml_collections.ConfigDict(
        {
            "optimizer": "sgd",
            "learning_rate": 0.5,
            "momentum": 0.0,
            "nesterov": False,
            "b1": 0.9,
            "b2": 0.999,
            "eps": 1e-8,
            "weight_decay": 0.0,
            "weight_decay_mode": "coupled",
            "grad_clip_norm": 0.0,
            "schedule": "constant",
            "warmup_steps": 0,
            "step_boundaries": (),
            "step_factor": 0.1,
            "poly_power": 0.9,
            "cosine_end_factor": 0.0,
            "lr_multipliers": (),
            "frozen": (),
        }
    )
    cfg.lock()  # a misspelt override in a test is an error, not a silently new field
    cfg.update(overrides)
    return cfg


def _params() -> dict:
    """A tiny Flax-shaped tree: a 'backbone' conv, a head conv and a BatchNorm."""
    return {
        "backbone": {"Conv_0": {"kernel": jnp.array([1.0, -2.0]), "bias": jnp.array([0.5])}},
        "head": {
            "Conv_0": {"kernel": jnp.array([[3.0], [-1.0]]), "bias": jnp.array([-0.25])},
            "BatchNorm_0": {"scale": jnp.array([1.5]), "bias": jnp.array([0.1])},
        },
    }


def _grads(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), _params())


def _run(cfg, grads_per_step, total_steps=100, params=None):
    """Applies one update per gradient tree; returns (params history, last opt_state)."""
    tx, _ = optim.make_optimizer(cfg, total_steps)
    params = _params() if params is None else params
    state = tx.init(params)
    history = [params]
    for grads in grads_per_step:
        updates, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, updates)
        history.append(params)
    return history, state


def _np(tree):
    return jax.tree.map(np.asarray, tree)


# --- Schedules --------------------------------------------------------------------------------


def _lrs(cfg, total_steps, steps):
    schedule = optim.make_schedule(cfg, total_steps)
    return np.array([float(schedule(s)) for s in steps])


def test_constant_schedule_with_warmup():
    cfg = _cfg(learning_rate=0.1, warmup_steps=4)
    steps = [0, 1, 2, 4, 5, 19, 20, 25]
    # Linear from 0 at step 0 to the peak at step 4, then flat (also past total_steps).
    expected = [0.0, 0.025, 0.05, 0.1, 0.1, 0.1, 0.1, 0.1]
    np.testing.assert_allclose(_lrs(cfg, 20, steps), expected, rtol=1e-6)


def test_step_schedule_boundaries_are_global_steps():
    cfg = _cfg(learning_rate=1.0, schedule="step", warmup_steps=2, step_boundaries=(5, 8))
    steps = [0, 1, 2, 4, 5, 7, 8, 9, 10]
    expected = [0.0, 0.5, 1.0, 1.0, 0.1, 0.1, 0.01, 0.01, 0.01]
    np.testing.assert_allclose(_lrs(cfg, 10, steps), expected, rtol=1e-6)


def test_poly_schedule_reaches_zero_at_total_steps():
    cfg = _cfg(learning_rate=2.0, schedule="poly")
    steps = [0, 1, 5, 9, 10, 12]
    expected = [2.0 * max(0.0, 1 - s / 10) ** 0.9 for s in steps]
    np.testing.assert_allclose(_lrs(cfg, 10, steps), expected, rtol=1e-5, atol=1e-7)
    assert expected[-2] == 0.0

    warm = _cfg(learning_rate=2.0, schedule="poly", warmup_steps=2, poly_power=2.0)
    steps = [0, 1, 2, 6, 10]
    expected = [0.0, 1.0, 2.0, 2.0 * (1 - 4 / 8) ** 2, 0.0]
    np.testing.assert_allclose(_lrs(warm, 10, steps), expected, rtol=1e-5, atol=1e-7)


def test_cosine_schedule_with_warmup_and_end_factor():
    cfg = _cfg(learning_rate=1.0, schedule="cosine", warmup_steps=2, cosine_end_factor=0.1)
    steps = [0, 1, 2, 4, 6, 10, 15]

    def oracle(s):
        if s < 2:
            return s / 2
        t = min(s - 2, 8) / 8
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t))

    expected = [oracle(s) for s in steps]
    np.testing.assert_allclose(_lrs(cfg, 10, steps), expected, rtol=1e-5)
    assert expected[2] == 1.0 and expected[4] == pytest.approx(0.55) and expected[5] == 0.1


def test_optimizer_follows_schedule_and_resumes_it():
    """The update at step k is -lr(k) * g for plain SGD; a rebuilt optimiser continues."""
    cfg = _cfg(learning_rate=1.0, schedule="cosine", warmup_steps=2)
    total = 6
    params = {"w": jnp.zeros(())}
    ones = {"w": jnp.ones(())}
    tx, schedule = optim.make_optimizer(cfg, total)
    state = tx.init(params)
    observed = []
    for step in range(total):
        if step == 3:
            # As after a restart: a fresh transformation, the restored (host-copied) state.
            tx, _ = optim.make_optimizer(cfg, total)
            state = jax.tree.map(np.asarray, state)
        updates, state = tx.update(ones, state, params)
        observed.append(-float(updates["w"]))
    expected = [float(schedule(s)) for s in range(total)]
    np.testing.assert_allclose(observed, expected, rtol=1e-6)
    assert expected[0] == 0.0 and expected[2] == 1.0


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"schedule": "linear"}, r"schedule='linear'.*\['constant', 'cosine', 'poly', 'step'\]"),
        ({"optimizer": "adam"}, r"optimizer='adam'.*\['adamw', 'sgd'\]"),
        ({"weight_decay_mode": "l2"}, r"weight_decay_mode='l2'.*\['coupled', 'decoupled'\]"),
        ({"warmup_steps": 10}, r"warmup_steps=10"),
        ({"schedule": "step", "step_boundaries": (6, 3)}, r"step_boundaries=\(6, 3\)"),
        ({"lr_multipliers": (("bias", 0.0),)}, r"frozen"),
        ({"frozen": ("[",)}, r"optim.frozen: bad regex"),
    ],
)
def test_bad_config_raises_naming_the_field(overrides, match):
    with pytest.raises(ValueError, match=match):
        optim.make_optimizer(_cfg(**overrides), total_steps=10)


@pytest.mark.parametrize(
    "overrides, match",
    [
        # Gradient ascent, a no-op run and a NaN one, each named before anything trains.
        (
            {"learning_rate": -0.01},
            r"config\.optim\.learning_rate=-0\.01: must be a finite .* \(0, inf\)",
        ),
        ({"learning_rate": 0.0}, r"config\.optim\.learning_rate=0\.0"),
        ({"learning_rate": math.nan}, r"config\.optim\.learning_rate=nan"),
        ({"learning_rate": math.inf}, r"config\.optim\.learning_rate=inf"),
        ({"momentum": 1.0}, r"config\.optim\.momentum=1\.0: .* \[0, 1\) \(sgd reads it\)"),
        ({"optimizer": "adamw", "b1": -0.1}, r"config\.optim\.b1=-0\.1"),
        ({"optimizer": "adamw", "b2": 1.0}, r"config\.optim\.b2=1\.0"),
        ({"optimizer": "adamw", "eps": 0.0}, r"config\.optim\.eps=0\.0"),
        ({"weight_decay": math.nan}, r"config\.optim\.weight_decay=nan"),
        ({"weight_decay": -1e-4}, r"config\.optim\.weight_decay=-0\.0001: .* \[0, inf\)"),
        ({"grad_clip_norm": -1.0}, r"config\.optim\.grad_clip_norm=-1\.0"),
        ({"schedule": "step", "step_factor": 0.0}, r"config\.optim\.step_factor=0\.0"),
        ({"schedule": "poly", "poly_power": -1.0}, r"config\.optim\.poly_power=-1\.0"),
        ({"schedule": "cosine", "cosine_end_factor": 1.5}, r"config\.optim\.cosine_end_factor"),
        ({"lr_multipliers": (("bias",),)}, r"config\.optim\.lr_multipliers=.*pairs"),
        ({"lr_multipliers": (("bias", math.nan),)}, r"config\.optim\.lr_multipliers"),
        ({"frozen": (3,)}, r"config\.optim\.frozen=\(3,\): must be regex strings"),
    ],
)
def test_out_of_range_optimiser_values_raise_naming_the_key(overrides, match):
    with pytest.raises(ValueError, match=match):
        optim.make_optimizer(_cfg(**overrides), total_steps=10)


def test_values_of_an_unused_optimizer_or_schedule_are_not_checked():
    # AdamW's b2 and the poly power are never read by SGD with a constant schedule.
    optim.make_optimizer(_cfg(b2=1.0, poly_power=0.0, momentum=0.0), total_steps=10)


@pytest.mark.parametrize("key", ["frozen", "lr_multipliers"])
def test_regex_matching_no_parameter_raises_at_init(key):
    value = ("decoder",) if key == "frozen" else (("decoder", 2.0),)
    tx, _ = optim.make_optimizer(_cfg(**{key: value}), total_steps=10)
    with pytest.raises(ValueError, match=f"optim.{key}: regex 'decoder' matches no"):
        tx.init(_params())


# --- Decay mask -------------------------------------------------------------------------------


def test_decay_mask_skips_biases_and_norm_params():
    params = {
        "Conv_0": {"kernel": 1, "bias": 1},
        "Dense_0": {"kernel": 1},
        "BatchNorm_0": {"scale": 1, "bias": 1},
        "block1": {"GroupNorm_2": {"scale": 1, "bias": 1}, "Conv_1": {"kernel": 1}},
        "conv1_bn": {"scale": 1, "mean_proxy": 1},
        "bn2": {"kernel": 1},
        "subnet": {"kernel": 1},  # contains the letters "bn" but is not a norm layer
    }
    expected = {
        "Conv_0": {"kernel": True, "bias": False},
        "Dense_0": {"kernel": True},
        "BatchNorm_0": {"scale": False, "bias": False},
        "block1": {"GroupNorm_2": {"scale": False, "bias": False}, "Conv_1": {"kernel": True}},
        "conv1_bn": {"scale": False, "mean_proxy": False},
        "bn2": {"kernel": False},
        "subnet": {"kernel": True},
    }
    assert optim.decay_mask(params) == expected


# --- Updates ----------------------------------------------------------------------------------


def test_sgd_momentum_with_coupled_weight_decay_matches_hand_computation():
    lr, m, wd = 0.5, 0.9, 0.1
    cfg = _cfg(learning_rate=lr, momentum=m, weight_decay=wd, weight_decay_mode="coupled")
    grads = [_grads(0), _grads(1)]
    history, _ = _run(cfg, grads)

    # Caffe / FCN: d = g + wd * w (L2 added to the gradient, never for biases or BN), v = d + m v.
    leaves = [jax.tree.leaves(_np(t)) for t in (_params(), grads[0], grads[1])]
    decayed = jax.tree.leaves(optim.decay_mask(_params()))
    got = jax.tree.leaves(_np(history[-1]))
    for w0, g0, g1, decays, w2_got in zip(*leaves, decayed, got, strict=True):
        wd_eff = wd if decays else 0.0
        v1 = g0 + wd_eff * w0
        w1 = w0 - lr * v1
        v2 = g1 + wd_eff * w1 + m * v1
        np.testing.assert_allclose(w2_got, w1 - lr * v2, rtol=1e-6)
    assert decayed.count(True) == 2  # the two conv kernels


def test_bias_lr_multiplier_doubles_the_bias_update():
    grads = [_grads(0)] * 3
    base_cfg = _cfg(momentum=0.9, weight_decay=5e-4)
    mult_cfg = _cfg(momentum=0.9, weight_decay=5e-4, lr_multipliers=((r"(^|/)bias$", 2.0),))
    base, _ = _run(base_cfg, grads)
    doubled, _ = _run(mult_cfg, grads)
    # Over several momentum steps: biases are not decayed, so their whole path scales by 2.
    step_base = jax.tree.map(lambda a, b: np.asarray(a - b), base[-1], base[0])
    step_mult = jax.tree.map(lambda a, b: np.asarray(a - b), doubled[-1], doubled[0])
    for (path, b), m in zip(
        jax.tree_util.tree_leaves_with_path(step_base), jax.tree.leaves(step_mult), strict=True
    ):
        factor = 2.0 if optim.param_path(path).endswith("bias") else 1.0
        np.testing.assert_allclose(m, factor * b, rtol=1e-6, err_msg=optim.param_path(path))


def test_frozen_params_never_move_and_hold_no_state():
    cfg = _cfg(
        optimizer="adamw",
        learning_rate=1e-2,
        weight_decay=0.1,
        weight_decay_mode="decoupled",
        grad_clip_norm=1.0,
        frozen=("^backbone/",),
    )
    history, state = _run(cfg, [_grads(i) for i in range(3)])
    start, end = _np(history[0]), _np(history[-1])
    np.testing.assert_array_equal(end["backbone"]["Conv_0"]["kernel"], [1.0, -2.0])
    np.testing.assert_array_equal(end["backbone"]["Conv_0"]["bias"], [0.5])
    for leaf_start, leaf_end in zip(
        jax.tree.leaves(start["head"]), jax.tree.leaves(end["head"]), strict=True
    ):
        assert np.all(np.abs(leaf_end - leaf_start) > 1e-4)
    # Adam moments exist for the 4 head leaves only (frozen ones are optax.MaskedNode).
    mu = optax.tree_utils.tree_get(state, "mu")
    assert sorted(optim.param_path(p) for p, _ in jax.tree_util.tree_leaves_with_path(mu)) == [
        "head/BatchNorm_0/bias",
        "head/BatchNorm_0/scale",
        "head/Conv_0/bias",
        "head/Conv_0/kernel",
    ]


def test_clipping_ignores_frozen_gradients():
    """A huge gradient on a frozen parameter must not shrink the trainable ones' update."""
    cfg = _cfg(learning_rate=1.0, grad_clip_norm=10.0, frozen=("^backbone/",))
    grads = jax.tree.map(lambda p: jnp.full(p.shape, 0.5), _params())
    grads["backbone"]["Conv_0"]["kernel"] = jnp.array([30.0, 40.0])
    history, _ = _run(cfg, [grads])
    # Trainable global norm is 0.5 * sqrt(5) < 10 (the frozen kernel alone has norm 50),
    # so their step is exactly -lr * g.
    moved = jax.tree.map(lambda a, b: np.asarray(a - b), history[1]["head"], history[0]["head"])
    for leaf in jax.tree.leaves(moved):
        np.testing.assert_allclose(leaf, -0.5, rtol=1e-6)

    clipped, _ = _run(_cfg(learning_rate=1.0, grad_clip_norm=0.5), [grads])
    total_norm = float(optax.global_norm(grads))
    head_step = np.asarray(
        clipped[1]["head"]["Conv_0"]["bias"] - clipped[0]["head"]["Conv_0"]["bias"]
    )
    np.testing.assert_allclose(head_step, -0.5 * 0.5 / total_norm, rtol=1e-5)


def test_adamw_decoupled_decay_skips_biases_and_norms():
    lr, wd = 0.1, 0.5
    cfg = _cfg(optimizer="adamw", learning_rate=lr, weight_decay=wd, weight_decay_mode="decoupled")
    zero = jax.tree.map(jnp.zeros_like, _params())
    # With zero gradients Adam's step is exactly 0, leaving only the decay: w <- w - lr * wd * w.
    history, _ = _run(cfg, [zero])
    p0, p1 = _np(history[0]), _np(history[1])
    mask = optim.decay_mask(p0)
    for w0, w1, decayed in zip(
        jax.tree.leaves(p0), jax.tree.leaves(p1), jax.tree.leaves(mask), strict=True
    ):
        np.testing.assert_allclose(w1, w0 * (1 - lr * wd) if decayed else w0, rtol=1e-6)

    # Coupled decay would instead pass wd * w through Adam's normalisation: ~lr * sign(w).
    coupled, _ = _run(_cfg(**{**cfg, "weight_decay_mode": "coupled"}), [zero])
    kernel0 = p0["head"]["Conv_0"]["kernel"]
    np.testing.assert_allclose(
        np.asarray(coupled[1]["head"]["Conv_0"]["kernel"]),
        kernel0 - lr * np.sign(kernel0),
        rtol=1e-5,
    )


def test_jitted_update_matches_eager():
    cfg = _cfg(
        optimizer="sgd",
        momentum=0.9,
        nesterov=True,
        weight_decay=1e-2,
        grad_clip_norm=1.0,
        schedule="poly",
        warmup_steps=1,
        lr_multipliers=((r"bias$", 2.0),),
        frozen=("backbone",),
    )
    tx, _ = optim.make_optimizer(cfg, total_steps=10)
    params, grads = _params(), _grads(3)
    state = tx.init(params)
    state = tx.update(grads, state, params)[1]  # past warmup's lr = 0 step
    eager, _ = tx.update(grads, state, params)
    jitted, _ = jax.jit(tx.update)(grads, state, params)
    for e, j in zip(jax.tree.leaves(_np(eager)), jax.tree.leaves(_np(jitted)), strict=True):
        np.testing.assert_allclose(j, e, rtol=1e-6)
    assert np.abs(np.asarray(eager["head"]["Conv_0"]["kernel"])).sum() > 0
