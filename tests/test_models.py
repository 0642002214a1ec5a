"""Models: the papers' parameter counts and sizes, the model dict, and real forward passes."""

import re

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jaxseg.models import (
    MODELS,
    build_model,
    output_size,
    unet_output_size,
    unet_sizes,
    unet_valid_input_sizes,
)
from jaxseg.models.layers import center_crop


def _abstract(model, shape):
    """(abstract variables, abstract logits) without allocating the model."""
    x = jax.ShapeDtypeStruct(shape, jnp.float32)
    variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)
    logits = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, x)
    return variables, logits


def _count(tree):
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))


@pytest.mark.parametrize(
    "name, learnable, expected",
    [
        ("fcn32s", False, 134_346_581),
        ("fcn16s", False, 134_357_354),
        ("fcn8s", False, 134_362_751),
        ("fcn8s", True, 134_489_759),
    ],
)
def test_fcn_parameter_counts_match_reference(name, learnable, expected):
    model = MODELS[name](num_classes=21, learnable_upsampling=learnable)
    variables, _ = _abstract(model, (1, 64, 64, 3))
    assert _count(variables["params"]) == expected


def test_fcn_layer_names_follow_vgg16_and_reference_release():
    variables, _ = _abstract(MODELS["fcn8s"](learnable_upsampling=True), (1, 64, 64, 3))
    params = variables["params"]
    assert sorted(params["backbone"]) == sorted(
        [f"conv{b}_{i}" for b, n in enumerate((2, 2, 3, 3, 3), 1) for i in range(1, n + 1)]
        + ["fc6", "fc7"]
    )
    assert params["backbone"]["fc6"]["kernel"].shape == (7, 7, 512, 4096)
    assert params["backbone"]["fc7"]["kernel"].shape == (1, 1, 4096, 4096)
    assert {"score_fr", "score_pool4", "score_pool3", "upscore2", "upscore_pool4"} <= set(params)
    assert params["upscore8"]["deconv"]["kernel"].shape == (16, 16, 21, 21)


def test_unet_parameter_count_matches_paper():
    variables, logits = _abstract(MODELS["unet"](num_classes=2), (1, 572, 572, 1))
    assert _count(variables["params"]) == 31_030_658
    assert logits.shape == (1, 388, 388, 2)


def test_unet_sizes_follow_paper_figure_1():
    sizes = unet_sizes(572)
    assert sizes["down"] == [570, 568, 284, 282, 280, 140, 138, 136, 68, 66, 64, 32, 30, 28]
    assert sizes["up"] == [56, 54, 52, 104, 102, 100, 200, 198, 196, 392, 390, 388]
    assert unet_output_size(572) == 388
    valid = unet_valid_input_sizes(700)
    assert 572 in valid and 570 not in valid
    assert all(b - a == 16 for a, b in zip(valid, valid[1:]))
    with pytest.raises(ValueError, match=r"odd size.*nearest valid sizes: \[556, 572\]"):
        unet_sizes(570)
    with pytest.raises(ValueError, match=r"too small.*\[188\]"):
        unet_sizes(92)


@pytest.mark.parametrize("name", ["fcn32s", "fcn16s", "fcn8s"])
@pytest.mark.parametrize("alignment", ["reference", "padded"])
@pytest.mark.parametrize("learnable", [False, True])
def test_fcn_logits_at_input_size_for_odd_sizes(name, alignment, learnable):
    model = MODELS[name](num_classes=5, alignment=alignment, learnable_upsampling=learnable)
    _, logits = _abstract(model, (2, 37, 53, 3))
    assert logits.shape == (2, 37, 53, 5) and logits.dtype == jnp.float32


@pytest.mark.parametrize("hw", [(16, 16), (48, 80), (64, 32)])
def test_padded_unet_keeps_size(hw):
    model = MODELS["unet_padded"](num_classes=3, base_width=4, depth=4, use_batchnorm=True)
    _, logits = _abstract(model, (1, *hw, 1))
    assert logits.shape == (1, *hw, 3)
    assert output_size(model, hw) == hw


def test_padded_unet_rejects_non_multiple_sizes():
    with pytest.raises(ValueError, match="multiples of 16"):
        _abstract(MODELS["unet_padded"](num_classes=2, base_width=4), (1, 40, 40, 1))


def test_valid_unet_real_forward_gives_paper_size():
    """A narrow (width 2) paper U-Net really runs on 572 x 572 and returns 388 x 388."""
    model = MODELS["unet"](num_classes=2, base_width=2)
    x = jax.random.normal(jax.random.key(0), (1, 572, 572, 1))
    variables = model.init(jax.random.key(1), x[:, :188, :188], train=False)
    logits = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
    assert logits.shape == (1, 388, 388, 2)
    assert output_size(model, (572, 572)) == (388, 388)
    assert np.isfinite(np.asarray(logits)).all() and float(jnp.std(logits)) > 0


@pytest.mark.parametrize("upsampling", ["transpose", "bilinear"])
def test_padded_unet_trains_with_batchnorm_and_dropout(upsampling):
    model = MODELS["unet_padded"](
        num_classes=3, base_width=4, depth=2, use_batchnorm=True, upsampling=upsampling
    )
    x = jax.random.normal(jax.random.key(0), (2, 16, 16, 3))
    variables = model.init(jax.random.key(1), x, train=False)
    logits, updates = model.apply(
        variables, x, train=True, rngs={"dropout": jax.random.key(2)}, mutable=["batch_stats"]
    )
    assert logits.shape == (2, 16, 16, 3)
    changed = jax.tree.map(
        lambda a, b: not np.allclose(a, b), variables["batch_stats"], updates["batch_stats"]
    )
    assert all(jax.tree.leaves(changed))


def test_unet_bilinear_branch_equals_resize_then_conv():
    """The bilinear decoder convolves before resizing; that equals resize-then-conv exactly."""
    model = MODELS["unet_padded"](num_classes=2, base_width=4, depth=1, upsampling="bilinear")
    x = jax.random.normal(jax.random.key(0), (1, 8, 8, 1))
    variables = model.init(jax.random.key(1), x, train=False)
    _, state = model.apply(variables, x, train=False, capture_intermediates=True, mutable=True)
    inter = state["intermediates"]
    bottom = inter["bottom"]["__call__"][0]
    conv = variables["params"]["upconv1"]
    resized = jax.image.resize(bottom, (1, 8, 8, bottom.shape[-1]), "bilinear")
    expected = jnp.einsum("nhwc,cd->nhwd", resized, conv["kernel"][0, 0]) + conv["bias"]
    got = inter["upconv1"]["__call__"][0]
    # The module's capture is the 1x1 conv output before its resize; resize it the same way.
    got = jax.image.resize(got, (1, 8, 8, got.shape[-1]), "bilinear")
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_build_model_names_valid_choices():
    model = build_model(ml_collections.ConfigDict({"name": "fcn8s", "num_classes": 6}))
    assert model.output_stride == 8 and model.num_classes == 6
    bf16 = build_model({"name": "unet_padded", "num_classes": 2, "dtype": "bfloat16"})
    assert bf16.dtype == jnp.bfloat16
    with pytest.raises(ValueError, match="valid models: .*fcn8s.*unet"):
        build_model({"name": "segnet", "num_classes": 2})
    with pytest.raises(ValueError, match="no field.*'widht'"):
        build_model({"name": "unet", "num_classes": 2, "widht": 3})


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_in_dict_builds_and_maps_shapes(name):
    model = build_model({"name": name, "num_classes": 4})
    hw = (188, 188) if name == "unet" else (64, 64)
    _, logits = _abstract(model, (1, *hw, 3))
    assert logits.shape == (1, *output_size(model, hw), 4)


# name -> (fields, sides to try): legal ones, and for the U-Nets illegal ones (odd at a max-pool,
# too small, not a multiple of 2**depth).
SIZE_RULE_CASES = {
    "unet": ({"depth": 2, "base_width": 2}, [44, 48, 64, 46, 57, 30]),
    "unet_padded": ({"depth": 3, "base_width": 2}, [8, 24, 20]),
    "fcn8s padded": ({"alignment": "padded"}, [37, 64]),
    "fcn32s reference": ({"alignment": "reference"}, [5, 37]),
}


@pytest.mark.parametrize("case", sorted(SIZE_RULE_CASES))
def test_each_models_stated_size_rule_is_its_real_output_shape(case):
    """input_context, size_step, output_size and valid_input_size against eval_shape."""
    fields, sides = SIZE_RULE_CASES[case]
    model = MODELS[case.split()[0]](num_classes=2, **fields)
    legal = []
    for side in sides:
        hw = (side, side + model.size_step)  # the next legal side: both axes, two sizes
        if model.valid_input_size(side) != side:
            with pytest.raises(ValueError, match=str(side)) as error:
                model.output_size(side)
            # Clear: it names the side and what would be legal.
            assert re.search(r"nearest valid sizes: \[\d+|multiples of \d+", str(error.value))
            with pytest.raises(ValueError, match=str(side)):
                _abstract(model, (1, *hw, 3))
            continue
        legal.append(side)
        _, logits = _abstract(model, (1, *hw, 3))
        assert logits.shape == (1, *output_size(model, hw), 2)
        assert [i - o for i, o in zip(hw, logits.shape[1:3])] == [2 * model.input_context] * 2
    assert len(legal) >= 2
    # valid_input_size rounds up to the next legal side: everything between is illegal.
    for side in sides:
        up = model.valid_input_size(side)
        assert up >= side and model.output_size(up) > 0
        for smaller in range(side, up):
            with pytest.raises(ValueError):
                model.output_size(smaller)


def test_size_rules_state_the_papers_numbers():
    unet = MODELS["unet"]()
    assert (unet.input_context, unet.size_step, unet.output_size(572)) == (92, 16, 388)
    assert unet.valid_input_size(570) == 572 and unet.valid_input_size(1) == 188
    padded = MODELS["unet_padded"]()
    assert (padded.input_context, padded.size_step, padded.valid_input_size(50)) == (0, 16, 64)
    fcn = MODELS["fcn8s"]()
    assert (fcn.input_context, fcn.size_step) == (0, 1)
    assert fcn.output_size(37) == 37 and fcn.valid_input_size(5) == 5


@pytest.fixture(scope="module")
def valid_unet():
    """A depth-2 valid U-Net of width 16 (44 px in -> 4 px out) and its initial variables."""
    model = build_model({"name": "unet", "num_classes": 2, "base_width": 16, "depth": 2})
    x = jax.random.normal(jax.random.key(0), (1, 44, 44, 1))
    return model, model.init(jax.random.key(1), x, train=False), x


def test_unet_dropout_sits_at_the_end_of_the_contracting_path_and_on_its_skip(valid_unet):
    """As in the authors' release: the last contracting level's output is dropped out before it
    feeds both its skip and the bottom block, and the bottom block's output is dropped out."""
    import flax.linen as nn

    model, variables, x = valid_unet
    up2_inputs = []

    def record(next_fun, args, kwargs, context):
        if context.module.name == "up2" and context.method_name == "__call__":
            up2_inputs.append(args[0])
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
        _, state = model.apply(
            variables, x, train=True, rngs={"dropout": jax.random.key(2)},
            capture_intermediates=True, mutable=["intermediates"],
        )  # fmt: skip
    inter = state["intermediates"]
    down2, dropped = inter["down2"]["__call__"][0], inter["dropout2"]["__call__"][0]
    active, kept = down2 != 0, dropped != 0  # ReLU outputs: many are 0 before dropout
    assert 0.4 < float(kept.sum() / active.sum()) < 0.6 and not (kept & ~active).any()
    np.testing.assert_allclose(dropped[kept], down2[kept] / 0.5, rtol=1e-6)
    # The skip concatenated into up2 (its first 32 channels) is the dropped-out tensor, cropped.
    skip = up2_inputs[0][..., :32]
    np.testing.assert_array_equal(skip, center_crop(dropped, *skip.shape[1:3]))
    bottom, dropped_bottom = inter["bottom"]["__call__"][0], inter["dropout_bottom"]["__call__"][0]
    assert dropped_bottom.shape == bottom.shape == (1, 4, 4, 64)
    assert 0 < float((dropped_bottom == 0).mean()) < 1
    # Dropout sits nowhere else: the modules drawing dropout RNGs are exactly these two.
    assert {k for k in inter if k.startswith("dropout")} == {"dropout2", "dropout_bottom"}


def test_unet_init_is_untruncated_he_normal_on_every_conv(valid_unet):
    """std sqrt(2 / N), N = inputs of one output neuron: k*k*C_in for convs (1x1 output too),
    C_in for the non-overlapping 2x2 stride-2 up-convs; untruncated Gaussian tails."""
    _, variables, _ = valid_unet
    z_all = []
    for path, w in jax.tree_util.tree_leaves_with_path(variables["params"]):
        name = "/".join(str(getattr(k, "key", k)) for k in path)
        w = np.asarray(w, np.float64)
        if name.endswith("bias"):
            assert (w == 0).all(), name
            continue
        fan_in = w.shape[2] if name.startswith("upconv") else int(np.prod(w.shape[:-1]))
        std = np.sqrt(2.0 / fan_in)
        assert abs(w.std() / std - 1) < 4 / np.sqrt(2 * w.size) + 0.01, (name, w.std(), std)
        assert abs(w.mean()) < 4 * std / np.sqrt(w.size), name
        z_all.append(w.ravel() / std)
    assert len(z_all) == 2 * 3 + 2 + 2 * 2 + 1  # 6 down/bottom convs, 2 up-convs, 4 up, output
    z = np.concatenate(z_all)
    # A Gaussian has 1.24% beyond 2.5 std; flax's he_normal (truncated at 2) has none beyond 2.28.
    assert 0.009 < np.mean(np.abs(z) > 2.5) < 0.016


def test_paper_unet_context_is_92_px_from_its_size_rule():
    from configs import unet_isbi
    from jaxseg.models import input_context

    config = unet_isbi.get_config()
    model = build_model(config.model)
    assert input_context(model, tuple(config.data.crop_size)) == (92, 92)
    assert input_context(build_model({"name": "unet_padded"}), (64, 64)) == (0, 0)
