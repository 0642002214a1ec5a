"""Inference modes against oracles: whole-image passes, numpy tile averaging, symmetric models."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jaxseg import inference, tiling
from jaxseg.models import build_model

NUM_CLASSES = 3
TRACES = {"pointwise": 0}


class Pointwise(nn.Module):
    """A 1x1 conv: receptive field one pixel, so any tiling of it is exact."""

    # The size rule every jaxseg model states (jaxseg.models.output_size): any side, same out.
    input_context = 0
    size_step = 1

    def output_size(self, input_size):
        return input_size

    def valid_input_size(self, size):
        return size

    @nn.compact
    def __call__(self, x, *, train):
        TRACES["pointwise"] += 1  # Python runs only while tracing: counts compilations.
        return nn.Conv(NUM_CLASSES, (1, 1), name="conv")(x)


def _init(model, shape):
    return jax.jit(functools.partial(model.init, train=False))(jax.random.key(0), jnp.zeros(shape))


def _images(shape, seed=1):
    return jax.random.normal(jax.random.key(seed), shape)


@pytest.fixture(scope="module")
def pointwise():
    model = Pointwise()
    return model, _init(model, (1, 4, 4, 2))


@pytest.fixture(scope="module")
def valid_unet():
    # Depth 2: input 44 -> output 4, so the overlap-tile margin is 20 px.
    model = build_model({"name": "unet", "num_classes": NUM_CLASSES, "base_width": 2, "depth": 2})
    return model, _init(model, (1, 44, 44, 2))


@pytest.fixture(scope="module")
def padded_unet():
    model = build_model(
        {"name": "unet_padded", "num_classes": NUM_CLASSES, "base_width": 2, "depth": 2}
    )
    return model, _init(model, (1, 8, 8, 2))


@pytest.fixture(scope="module")
def padded_whole(padded_unet):
    """whole_image_logits of the padded U-Net, compiled once per input shape for all tests."""
    return jax.jit(functools.partial(inference.whole_image_logits, padded_unet[0]))


@pytest.mark.parametrize("hw", [(20, 28), (33, 17)])
def test_valid_unet_whole_image_logits_cover_the_image(valid_unet, hw):
    """Mirror-padding makes a valid U-Net's output cover any image; its centre is unchanged."""
    model, variables = valid_unet
    x = _images((1, *hw, 2))
    logits = jax.jit(functools.partial(inference.whole_image_logits, model))(variables, x)
    assert logits.shape == (1, *hw, NUM_CLASSES)
    # Pixels far from the border see only real pixels either way: compare with a direct call on
    # a valid-size crop around them (depth 2: 44 in -> 4 out, margin 20 px).
    direct = model.apply(
        variables,
        jnp.pad(x, ((0, 0), (20, 20), (20, 20), (0, 0)), mode="reflect")[:, :44, :44],
        train=False,
    )
    np.testing.assert_allclose(logits[:, :4, :4], direct, atol=1e-5)


def test_padded_unet_whole_image_logits_for_non_multiple_sizes(padded_whole, padded_unet):
    logits = padded_whole(padded_unet[1], jnp.ones((2, 13, 10, 2)))
    assert logits.shape == (2, 13, 10, NUM_CLASSES)


def test_tile_starts_hand_computed():
    assert tiling.tile_starts(10, 4, 3) == [0, 3, 6]
    assert tiling.tile_starts(10, 4, 4) == [0, 4, 6]  # last tile flush with the border
    assert tiling.tile_starts(8, 4, 4) == [0, 4]
    assert tiling.tile_starts(4, 4, 1) == [0]
    with pytest.raises(ValueError, match="tile <= size"):
        tiling.tile_starts(3, 4, 1)


@pytest.mark.parametrize(
    "hw, crop, stride",
    [
        ((13, 10), (4, 5), (4, 5)),  # stride = crop; the flush last tiles overlap the previous
        ((13, 10), (5, 4), (2, 3)),  # heavy overlap: up to 3 x 2 windows per pixel
        ((3, 10), (6, 4), (6, 4)),  # image shorter than the crop: mirror-padded, cropped back
    ],
)
def test_sliding_window_equals_whole_image_for_pointwise_model(pointwise, hw, crop, stride):
    model, variables = pointwise
    x = _images((2, *hw, 2))
    whole = jax.jit(functools.partial(inference.whole_image_logits, model))(variables, x)
    TRACES["pointwise"] = 0
    slide = jax.jit(
        functools.partial(inference.sliding_window_logits, model, crop=crop, stride=stride)
    )(variables, x)
    # Traced once for the output shape and once for the loop body, however many tiles there are.
    assert TRACES["pointwise"] <= 2
    assert slide.shape == (2, *hw, NUM_CLASSES)
    # A pixel's logits are the same 1x1 conv in every tiling, but not bit-equal: XLA may pick a
    # different kernel (vector width, FMA order) for a 4x5 tile than for the whole 13x10 image.
    # On AVX-512 hosts 3 of 780 logits differ by 1 ULP (6e-8). rtol 1e-6 is ~8 float32 ULPs; a
    # wrong tile offset, a missed window or a wrong average is off by O(1).
    np.testing.assert_allclose(slide, whole, rtol=1e-6, atol=1e-7)


def test_sliding_window_averages_window_logits_like_numpy(padded_unet, padded_whole):
    """A model with a wide receptive field: each pixel is the mean of its windows' logits."""
    model, variables = padded_unet
    hw, crop, stride = (14, 11), (8, 8), (4, 3)
    x = _images((1, *hw, 2), seed=2)
    slide = jax.jit(
        functools.partial(inference.sliding_window_logits, model, crop=crop, stride=stride)
    )(variables, x)
    window = padded_whole
    total = np.zeros((1, *hw, NUM_CLASSES))
    count = np.zeros(hw)
    for y in [0, 4, 6]:  # 14 px, crop 8, stride 4: the last start (6) is flush
        for x0 in [0, 3]:  # 11 px, crop 8, stride 3
            total[:, y : y + 8, x0 : x0 + 8] += np.asarray(
                window(variables, x[:, y : y + 8, x0 : x0 + 8])
            )
            count[y : y + 8, x0 : x0 + 8] += 1
    assert count.min() == 1 and count.max() == 6  # rows 6-7 x columns 3-7
    np.testing.assert_allclose(slide, total / count[None, :, :, None], rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def overlap_tile(valid_unet):
    model, _ = valid_unet
    # Tiles 52 x 56 in -> 12 x 16 out; one compilation serves every image size.
    return jax.jit(functools.partial(inference.overlap_tile_logits, model, tile_in=(52, 56)))


def test_overlap_tile_equals_one_pass_over_the_mirror_padded_image(valid_unet, overlap_tile):
    """The paper's Fig. 2: tiling a valid U-Net changes nothing but memory."""
    model, variables = valid_unet
    x = _images((2, 28, 36, 2), seed=3)  # 28 + 40 = 68 and 36 + 40 = 76 are valid inputs
    padded = jnp.pad(x, ((0, 0), (20, 20), (20, 20), (0, 0)), mode="reflect")
    whole = jax.jit(functools.partial(model.apply, train=False))(variables, padded)
    assert whole.shape == (2, 28, 36, NUM_CLASSES)
    # 28 = 12 + 12 + 4 (a flush third tile), 36 = 16 + 16 + 4: the tiles overlap.
    np.testing.assert_array_equal(overlap_tile(variables, x), whole)


@pytest.mark.parametrize("hw", [(30, 37), (5, 7)])
def test_overlap_tile_equals_whole_image_logits(valid_unet, overlap_tile, hw):
    """Any size, including images smaller than one output tile."""
    model, variables = valid_unet
    x = _images((1, *hw, 2), seed=4)
    whole = jax.jit(functools.partial(inference.whole_image_logits, model))(variables, x)
    tiled = overlap_tile(variables, x)
    assert tiled.shape == (1, *hw, NUM_CLASSES)
    # Same arithmetic, but XLA may block a conv over an 80 px side differently: 1-ulp slack.
    np.testing.assert_allclose(tiled, whole, rtol=1e-5, atol=1e-6)


def test_overlap_tile_steps_on_the_pooling_grid():
    """Depth 2 pools with period 4: a 30 px image with 12 px output tiles is padded to 32 and
    tiled at 0, 12, 20 (20 = 32 - 12 is flush and on the grid; 18 = 30 - 12 is not)."""
    assert tiling.overlap_tile_axis(30, 12, 4) == (32, [0, 12, 20])
    assert tiling.overlap_tile_axis(28, 12, 4) == (28, [0, 12, 16])
    assert tiling.overlap_tile_axis(5, 12, 4) == (12, [0])
    # Depth 4, the paper's 572 -> 388 tile: steps of 384, not 388.
    assert tiling.overlap_tile_axis(512, 388, 16) == (516, [0, 128])
    with pytest.raises(ValueError, match="pooling period"):
        tiling.overlap_tile_axis(30, 4, 16)


def test_overlap_tile_rejects_bad_models_and_tiles(padded_unet, valid_unet):
    x = jnp.zeros((1, 8, 8, 2))
    with pytest.raises(ValueError, match="valid-convolution UNet"):
        inference.overlap_tile_logits(padded_unet[0], padded_unet[1], x, tile_in=(8, 8))
    with pytest.raises(ValueError, match="nearest valid sizes"):
        inference.overlap_tile_logits(valid_unet[0], valid_unet[1], x, tile_in=(50, 52))


def _mirror_symmetric(variables):
    """Averages every kernel with its left-right mirror, making the network flip-equivariant."""

    def sym(path, leaf):
        if path[-1].key == "kernel":
            return (leaf + leaf[:, ::-1]) / 2
        return leaf

    return jax.tree_util.tree_map_with_path(sym, variables)


def test_flip_tta_is_identity_for_a_mirror_symmetric_model(padded_unet, padded_whole):
    # SAME 3x3 convs, 2x2 pools and 2x2 up-convs on even sides all commute with the flip once
    # their kernels do.
    model, variables = padded_unet
    variables = _mirror_symmetric(variables)
    x = _images((1, 8, 8, 2), seed=5)
    plain = padded_whole(variables, x)
    # The model really is symmetric (else the next check would prove nothing).
    np.testing.assert_allclose(
        padded_whole(variables, x[:, :, ::-1])[:, :, ::-1], plain, rtol=1e-5, atol=1e-6
    )
    assert not np.allclose(plain, plain[:, :, ::-1], atol=1e-4)  # ...and the image is not
    tta = jax.jit(functools.partial(inference.flip_tta(inference.whole_image_logits), model))
    np.testing.assert_allclose(tta(variables, x), plain, rtol=1e-5, atol=1e-6)


def test_flip_tta_averages_the_mirrored_prediction(padded_unet, padded_whole):
    model, variables = padded_unet
    x = _images((1, 8, 8, 2), seed=6)
    plain = np.asarray(padded_whole(variables, x))
    expected = (plain + np.asarray(padded_whole(variables, x[:, :, ::-1]))[:, :, ::-1]) / 2
    settings = inference.InferenceSettings(flip=True)
    tta = jax.jit(functools.partial(inference.predict_logits, model, settings=settings))
    np.testing.assert_allclose(tta(variables, x), expected, rtol=1e-5, atol=1e-6)
    assert not np.allclose(expected, plain, atol=1e-4)  # the flip mattered


def test_multiscale_tta_at_scale_one_is_plain_inference(padded_unet, padded_whole):
    model, variables = padded_unet
    x = _images((1, 8, 8, 2), seed=7)
    plain = padded_whole(variables, x)
    settings = inference.InferenceSettings(scales=[1.0])
    ms = jax.jit(functools.partial(inference.predict_logits, model, settings=settings))
    np.testing.assert_array_equal(ms(variables, x), plain)


def test_multiscale_tta_of_a_constant_image_is_constant(pointwise):
    """A 1x1 conv of a constant image is constant at every scale, so the average is too."""
    model, variables = pointwise
    x = jnp.full((1, 6, 10, 2), 0.5)
    plain = jax.jit(functools.partial(inference.whole_image_logits, model))(variables, x)
    settings = inference.InferenceSettings(scales=(0.5, 1.0, 1.5), flip=True)
    ms = jax.jit(functools.partial(inference.predict_logits, model, settings=settings))(
        variables, x
    )
    assert ms.shape == plain.shape
    np.testing.assert_allclose(ms, plain, rtol=1e-5, atol=1e-6)


def test_predict_logits_dispatches_to_the_named_mode(pointwise):
    model, variables = pointwise
    x = _images((1, 7, 9, 2), seed=8)
    direct = inference.sliding_window_logits(model, variables, x, crop=(4, 4), stride=(4, 4))
    settings = inference.InferenceSettings(mode="sliding_window", crop=(4, 4), stride=(4, 4))
    named = inference.predict_logits(model, variables, x, settings)
    np.testing.assert_array_equal(named, direct)
    with pytest.raises(ValueError, match="valid modes"):
        inference.InferenceSettings(mode="tiles")
    with pytest.raises(ValueError, match="needs crop and stride"):
        inference.InferenceSettings(mode="sliding_window", crop=(4, 4))
    with pytest.raises(ValueError, match="needs tile_in"):
        inference.InferenceSettings(mode="overlap_tile")


def test_settings_read_config_eval_and_name_its_keys():
    """config.eval is read in one place: zero sizes are unset, errors name the config key, and a
    config.json from before isbi_metrics existed still loads (as a run without it)."""
    # As config.json gives it back: lists, int scales, no isbi_metrics.
    cfg = ml_collections.ConfigDict(
        {
            "mode": "sliding_window",
            "crop": [32, 24],
            "stride": [16, 12],
            "tile_in": [0, 0],
            "flip": True,
            "scales": [1, 1.5],
        }
    )
    settings = inference.InferenceSettings.from_eval_config(cfg)
    assert settings == inference.InferenceSettings(
        mode="sliding_window", crop=(32, 24), stride=(16, 12), flip=True, scales=(1.0, 1.5)
    )
    assert settings.tile_in is None and settings.isbi_metrics is False
    # flip_tta(multiscale_tta(...)): the flip is the outer loop.
    assert settings.augmentations == [(False, 1.0), (False, 1.5), (True, 1.0), (True, 1.5)]
    cfg.stride = [0, 0]
    with pytest.raises(ValueError, match=r"^config\.eval\.crop, config\.eval\.stride: .*needs"):
        inference.InferenceSettings.from_eval_config(cfg)
    cfg.stride = [16, -12]
    with pytest.raises(ValueError, match=r"^config\.eval\.stride: .*2 positive sides"):
        inference.InferenceSettings.from_eval_config(cfg)
    cfg.mode = "tiles"
    with pytest.raises(ValueError, match=r"^config\.eval\.mode: .*valid modes"):
        inference.InferenceSettings.from_eval_config(cfg)
