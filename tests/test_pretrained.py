"""Convolutionalization of ImageNet VGG16 (`jaxseg/models/pretrained.py`) against Keras.

Keras' own VGG16 (random weights; no download) is the oracle: its weights, saved in each file
layout we read, must transplant into our trunk so that it reproduces Keras' activations, and on a
larger image our trunk must be Keras' classifier slid over the image with a stride of 32 pixels.
"""

import functools
import os

import h5py
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxseg.models.pretrained import (
    KERAS_NAMES,
    KERNEL_SHAPES,
    load_vgg16_weights,
    save_vgg16_npz,
    transplant_into,
)
from jaxseg.models.vgg import VGG16


def _keras_backend() -> str:
    """TensorFlow where installed (the savedmodel extra), else jax: Keras 3 runs either."""
    try:
        import tensorflow  # noqa: F401
    except ImportError:
        return "jax"
    return "tensorflow"


os.environ["KERAS_BACKEND"] = _keras_backend()  # must precede the keras import
keras = pytest.importorskip("keras")

CONVS = [n for n in KERNEL_SHAPES if n.startswith("conv")]
TOL = 1e-4  # relative error: ||ours - keras|| / ||keras|| over the whole tensor


def rel_err(ours, ref) -> float:
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    return float(np.linalg.norm(ours - ref) / np.linalg.norm(ref))


def assert_trees_equal(a, b):
    assert sorted(a) == sorted(b)
    for layer in a:
        assert sorted(a[layer]) == ["bias", "kernel"], layer
        for leaf in ("kernel", "bias"):
            # np.array_equal: exact like assert_array_equal, which took 13 s on fc6's 103M values.
            x, y = np.asarray(a[layer][leaf]), np.asarray(b[layer][leaf])
            assert x.dtype == y.dtype and np.array_equal(x, y), (layer, leaf, x.shape, y.shape)


def write_legacy_h5(path, layers, *, wrap=False):
    """Writes [(layer name, [kernel, bias] or [])] as the 2016 ImageNet file lays it out.

    Root attribute `layer_names` lists every layer (weightless ones included); each layer group
    has a `weight_names` attribute, with the original release's "<layer>_W_1:0" naming. With
    wrap, everything sits under "model_weights", as in a Keras 2 `model.save` file.
    """
    with h5py.File(path, "w") as f:
        root = f.create_group("model_weights") if wrap else f
        root.attrs["layer_names"] = [name.encode() for name, _ in layers]
        for name, weights in layers:
            group = root.create_group(name)
            names = [f"{name}_{s}_1:0".encode() for s in ("W", "b")][: len(weights)]
            group.attrs["weight_names"] = names
            for weight_name, value in zip(names, weights, strict=True):
                group.create_dataset(weight_name, data=value)


@pytest.fixture(scope="module")
def keras_vgg(tmp_path_factory):
    """Keras' VGG16 with random weights, built once (138M parameters), and its .weights.h5."""
    keras.utils.set_random_seed(0)
    model = keras.applications.VGG16(weights=None)
    path = tmp_path_factory.mktemp("keras") / "vgg16.weights.h5"
    model.save_weights(path)
    return model, path


@pytest.fixture(scope="module")
def vgg_params(keras_vgg):
    return load_vgg16_weights(keras_vgg[1], include_fc8=True)


@pytest.fixture(scope="module")
def trunk(vgg_params):
    """(params, jitted apply) of our VGG16 with fc8; the structure comes from eval_shape only."""
    model = VGG16(include_fc8=True)
    image = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
    abstract = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0), image)
    params = jax.device_put(transplant_into(abstract["params"], vgg_params, prefix=()))
    # Callers trace it under jax.default_matmul_precision("float32"): the comparison is against
    # Keras' float32 at 1e-4, which reduced-precision convs (TF32, bf16 passes) would miss.
    apply = jax.jit(lambda p, x: model.apply({"params": p}, x, train=False))
    return params, apply


def keras_logits_head(keras_model):
    """Keras' `predictions` layer without its softmax: a linear Dense holding the same weights."""
    predictions = keras_model.get_layer("predictions")
    head = keras.layers.Dense(1000, activation=None)
    head.build((None, 4096))
    head.set_weights(predictions.get_weights())
    return head


def image(size, seed):
    # Roughly the range of Caffe-preprocessed pixels (0..255 minus the mean).
    return np.random.default_rng(seed).uniform(-120, 130, (1, size, size, 3)).astype(np.float32)


def test_224_reproduces_keras_fc7_and_logits(keras_vgg, vgg_params, trunk):
    """At 224 x 224 the convolutionalized trunk is Keras' classifier: fc7 (after ReLU) and the
    1000-way logits agree, the 1x1 spatial output being Keras' vector. Logits are compared before
    the softmax (Keras' `predictions` weights in a linear Dense), and Keras' actual softmax output
    is checked against the softmax of ours."""
    keras_model, _ = keras_vgg
    params, apply = trunk
    x = image(224, seed=1)
    outputs = [keras_model.get_layer("fc2").output, keras_model.output]
    keras_fc7, keras_probs = keras.Model(keras_model.input, outputs)(x, training=False)
    keras_fc7, keras_probs = np.asarray(keras_fc7), np.asarray(keras_probs)
    keras_logits = np.asarray(keras_logits_head(keras_model)(keras_fc7))
    with jax.default_matmul_precision("float32"):
        ours = jax.tree.map(np.asarray, apply(params, x))
    assert ours["fc7"].shape == (1, 1, 1, 4096) and ours["fc8"].shape == (1, 1, 1, 1000)
    assert np.count_nonzero(keras_fc7) > 100  # a live ReLU output, not a trivial all-zero match
    assert rel_err(ours["fc7"][:, 0, 0], keras_fc7) < TOL
    assert rel_err(ours["fc8"][:, 0, 0], keras_logits) < TOL
    np.testing.assert_allclose(jax.nn.softmax(ours["fc8"][:, 0, 0]), keras_probs, rtol=1e-5)

    # The comparison tells flatten orders apart: reading fc1's rows as channel-major (c, h, w)
    # instead of Keras' row-major (h, w, c), fc6/fc7 on our own pool5 no longer match Keras.
    dense = vgg_params["fc6"]["kernel"].reshape(25088, 4096)
    wrong = dense.reshape(512, 7, 7, 4096).transpose(1, 2, 0, 3).reshape(25088, 4096)
    fc6 = np.maximum(ours["pool5"].reshape(1, -1) @ wrong + vgg_params["fc6"]["bias"], 0)
    fc7 = fc6 @ vgg_params["fc7"]["kernel"][0, 0] + vgg_params["fc7"]["bias"]
    assert rel_err(np.maximum(fc7, 0), keras_fc7) > 0.1


def test_320_is_the_classifier_slid_with_stride_32(keras_vgg, trunk):
    """At 320 x 320 the trunk returns a 4 x 4 map of 1000-way scores (the paper's Fig. 2 heat
    map); cell (i, j) is Keras' classifier on the 224 x 224 window at pixel (32 i, 32 j).

    Exactly: the classifier head (flatten, fc1, fc2, predictions) applied by Keras to the 7 x 7
    window of pool5 at (i, j), pool5 being Keras' conv layers run on the whole image. (Keras run
    on the cropped 224 x 224 window itself differs near the crop's bottom/right edge, where its
    3x3 convs see zero padding instead of the neighbouring pixels.)
    """
    keras_model, _ = keras_vgg
    params, apply = trunk
    x = image(320, seed=2)
    with jax.default_matmul_precision("float32"):
        ours = np.asarray(apply(params, x)["fc8"])
    assert ours.shape == (1, 4, 4, 1000)

    # Keras' conv/pool layers on the full image, then its head on each 7x7 pool5 window.
    inputs = keras.Input((320, 320, 3))
    y = inputs
    for layer in keras_model.layers[1 : keras_model.layers.index(keras_model.get_layer("flatten"))]:
        y = layer(y)
    pool5 = np.asarray(keras.Model(inputs, y)(x, training=False))
    assert pool5.shape == (1, 10, 10, 512)
    windows = np.stack([pool5[0, i : i + 7, j : j + 7] for i in range(4) for j in range(4)])
    head = keras.Sequential(
        [
            keras.Input((7, 7, 512)),
            keras_model.get_layer("flatten"),
            keras_model.get_layer("fc1"),
            keras_model.get_layer("fc2"),
            keras_logits_head(keras_model),
        ]
    )
    keras_map = np.asarray(head(windows, training=False)).reshape(1, 4, 4, 1000)
    assert rel_err(ours, keras_map) < TOL
    # The cells are different windows, not one score broadcast.
    assert rel_err(ours[0, 0, 0], ours[0, 3, 3]) > 1e-2


def test_legacy_h5_files_read_like_keras(keras_vgg, vgg_params, tmp_path):
    """The cached ImageNet file's layout (and Keras 2's) gives the same tree as .weights.h5;
    the `_notop` variant needs convs_only=True; Keras itself reads our imitation of it."""
    keras_model, _ = keras_vgg
    layers = [(layer.name, layer.get_weights()) for layer in keras_model.layers]
    full = tmp_path / "vgg16_weights_tf_dim_ordering_tf_kernels.h5"
    write_legacy_h5(full, layers)
    assert_trees_equal(load_vgg16_weights(full, include_fc8=True), vgg_params)

    notop = tmp_path / "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"
    flatten_at = [name for name, _ in layers].index("flatten")
    write_legacy_h5(notop, layers[:flatten_at])
    with pytest.raises(ValueError, match=r"no layer fc6 \(Keras 'fc1'\).*convs_only=True"):
        load_vgg16_weights(notop)
    conv_params = {n: vgg_params[n] for n in CONVS}
    assert_trees_equal(load_vgg16_weights(notop, convs_only=True), conv_params)

    # Oracle for the imitation: Keras' own legacy reader loads it into a fresh random model...
    keras_notop = keras.applications.VGG16(weights=None, include_top=False)
    assert not np.array_equal(
        keras_notop.get_layer("block1_conv1").get_weights()[0], layers[1][1][0]
    )
    keras_notop.load_weights(notop)
    for name in CONVS:
        kernel, bias = keras_notop.get_layer(KERAS_NAMES[name]).get_weights()
        np.testing.assert_array_equal(kernel, conv_params[name]["kernel"], err_msg=name)
    # ... and a file Keras writes in the legacy format (weights under "model_weights", Keras 2
    # naming "block1_conv1/kernel") reads back the same.
    saved = tmp_path / "keras_saved_notop.h5"
    keras_notop.save(saved)
    with h5py.File(saved) as f:
        assert "model_weights" in f
    assert_trees_equal(load_vgg16_weights(saved, convs_only=True), conv_params)

    # Keras 3 files from versions that do not record layer names are read in layer order
    # (conv2d, conv2d_1, ..., conv2d_9, conv2d_10: numeric, not string order).
    unnamed = tmp_path / "notop.weights.h5"
    keras_notop.save_weights(unnamed)
    with h5py.File(unnamed, "r+") as f:
        groups = []
        f["layers"].visit(groups.append)  # collect first: a non-None return stops visit()
        for group in groups:
            f["layers"][group].attrs.pop("name", None)
        assert not any("name" in f["layers"][g].attrs for g in groups)
    assert_trees_equal(load_vgg16_weights(unnamed, convs_only=True), conv_params)


def test_npz_round_trip(vgg_params, tmp_path):
    """Without fc8 (the default), as FCN uses it; asking for fc8 then names the missing layer."""
    no_fc8 = {n: leaves for n, leaves in vgg_params.items() if n != "fc8"}
    path = tmp_path / "vgg16"  # no suffix on purpose: the file must land at exactly this path
    save_vgg16_npz(no_fc8, path)
    renamed = path.rename(tmp_path / "vgg16.npz")
    assert_trees_equal(load_vgg16_weights(renamed), no_fc8)
    with pytest.raises(ValueError, match=r"vgg16\.npz: no layer fc8.*include_fc8=False"):
        load_vgg16_weights(renamed, include_fc8=True)
    with pytest.raises(ValueError, match="not VGG16 layers.*backbone"):
        save_vgg16_npz({"backbone": vgg_params}, tmp_path / "bad.npz")


def test_rgb_input_reverses_conv1_1_channels(keras_vgg):
    """conv1_1 with rgb_input=True on an RGB patch = the original conv1_1 on the BGR patch."""
    bgr = load_vgg16_weights(keras_vgg[1], convs_only=True)
    rgb = load_vgg16_weights(keras_vgg[1], convs_only=True, rgb_input=True)
    patch_rgb = np.random.default_rng(3).normal(size=(3, 3, 3)).astype(np.float32)
    out_rgb = np.einsum("hwc,hwco->o", patch_rgb, rgb["conv1_1"]["kernel"])
    out_bgr = np.einsum("hwc,hwco->o", patch_rgb[..., ::-1], bgr["conv1_1"]["kernel"])
    np.testing.assert_allclose(out_rgb, out_bgr, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(rgb["conv1_2"]["kernel"], bgr["conv1_2"]["kernel"])


def test_transplant_into_fcn_tree(vgg_params):
    """FCN holds the trunk under "backbone": those layers are replaced, other layers shared,
    the input untouched, and a layer the model lacks (fc8 in FCN) is an error."""
    convs_fc = {n: vgg_params[n] for n in CONVS + ["fc6", "fc7"]}
    abstract = {
        n: {k: jax.ShapeDtypeStruct(v.shape, jnp.float32) for k, v in leaves.items()}
        for n, leaves in convs_fc.items()
    }
    score_fr = {"kernel": np.zeros((1, 1, 4096, 21), np.float32)}
    fcn_params = {"backbone": abstract, "score_fr": score_fr}
    out = transplant_into(fcn_params, convs_fc)
    assert_trees_equal(out["backbone"], convs_fc)
    assert out["score_fr"] is score_fr
    assert isinstance(fcn_params["backbone"]["fc6"]["kernel"], jax.ShapeDtypeStruct)
    with pytest.raises(ValueError, match=r"no layer backbone/fc8.*include_fc8=False"):
        transplant_into(fcn_params, {"fc8": vgg_params["fc8"]})
    with pytest.raises(ValueError, match=r"no 'backbone' under <root>"):
        transplant_into({"trunk": abstract}, convs_fc)


def test_shape_mismatches_name_layer_and_shapes(vgg_params, tmp_path):
    # In a file: a VGG-like model with 8 conv1_1 filters.
    small = tmp_path / "small.h5"
    write_legacy_h5(small, [("block1_conv1", [np.zeros((3, 3, 3, 8)), np.zeros(8)])])
    pattern = r"small\.h5: layer conv1_1 \(Keras 'block1_conv1'\): kernel shape \(3, 3, 3, 8\), "
    with pytest.raises(ValueError, match=pattern + r"expected \(3, 3, 3, 64\)"):
        load_vgg16_weights(small, convs_only=True)
    # A channels-first (Theano) kernel gets a hint.
    theano = tmp_path / "theano.h5"
    write_legacy_h5(theano, [("block1_conv1", [np.zeros((64, 3, 3, 3)), np.zeros(64)])])
    with pytest.raises(ValueError, match="channels-first"):
        load_vgg16_weights(theano, convs_only=True)
    # In a model: a trunk whose fc7 has 1024 filters.
    target = {
        n: {k: jax.ShapeDtypeStruct(v.shape, jnp.float32) for k, v in leaves.items()}
        for n, leaves in vgg_params.items()
    }
    target["fc7"]["kernel"] = jax.ShapeDtypeStruct((1, 1, 4096, 1024), jnp.float32)
    with pytest.raises(
        ValueError,
        match=r"backbone/fc7/kernel: the model expects shape \(1, 1, 4096, 1024\), "
        r"the weights have \(1, 1, 4096, 4096\)",
    ):
        transplant_into({"backbone": target}, vgg_params)


def test_missing_file_says_how_to_get_it(tmp_path):
    path = tmp_path / "nowhere" / "vgg16_weights_tf_dim_ordering_tf_kernels.h5"
    with pytest.raises(FileNotFoundError) as info:
        load_vgg16_weights(path)
    assert str(path) in str(info.value)
    assert "keras.applications.VGG16(weights='imagenet')" in str(info.value)
