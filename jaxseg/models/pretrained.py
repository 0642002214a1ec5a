"""ImageNet VGG16 weights for the FCN trunk: read, convolutionalize, transplant.

Long et al. (2015, section 3.1) start FCN from an ImageNet classifier whose fully connected layers
are recast as convolutions: fc6 `Dense(7*7*512 -> 4096)` over the flattened pool5 becomes a 7x7
conv with 4096 filters, fc7 and fc8 become 1x1 convs. The network then slides the classifier over
larger inputs with a stride of 32 pixels, returning a map of scores instead of one vector.

The weights come from the file `keras.applications.VGG16(weights="imagenet")` caches (converted
from the original Caffe model), read with h5py only, so loading needs neither Keras nor
TensorFlow. Three layouts are understood:
  - legacy Keras HDF5 (the cached `vgg16_weights_tf_dim_ordering_tf_kernels[_notop].h5`, and
    Keras 2 `save_weights`/`save` files): a `layer_names` attribute, one group per layer with
    a `weight_names` attribute;
  - Keras 3 `.weights.h5` (`model.save_weights`): `layers/<object path>/vars/{0,1}`;
  - `.npz` with our names, `conv1_1/kernel`, ..., `fc6/kernel` (written by `save_vgg16_npz`).

The Caffe-converted weights expect Caffe's preprocessing: BGR channel order, pixel values in
0..255 minus `IMAGENET_BGR_MEAN`, no scaling. `load_vgg16_weights(..., rgb_input=True)` reorders
conv1_1's input channels so that the network takes RGB (still 0..255 minus the mean, in RGB order).
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from jaxseg.models.vgg import VGG16_BLOCKS

KERAS_WEIGHTS_FILE = "vgg16_weights_tf_dim_ordering_tf_kernels.h5"
KERAS_NOTOP_WEIGHTS_FILE = "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"
HOW_TO_DOWNLOAD = (
    "on a machine with internet run "
    "python -c \"import keras; keras.applications.VGG16(weights='imagenet')\" "
    f"and copy ~/.keras/models/{KERAS_WEIGHTS_FILE} here"
)
# Caffe's ImageNet mean pixel, in the BGR order the weights expect (keras' "caffe" preprocessing).
IMAGENET_BGR_MEAN = (103.939, 116.779, 123.68)

_FC_LAYERS = ("fc6", "fc7", "fc8")


def _conv_layers() -> dict[str, tuple[int, int, int, int]]:
    """Our conv layer names -> kernel shapes [3, 3, C_in, C_out], in network order."""
    shapes, c_in = {}, 3
    for block, (num_convs, channels) in enumerate(VGG16_BLOCKS, start=1):
        for i in range(1, num_convs + 1):
            shapes[f"conv{block}_{i}"] = (3, 3, c_in, channels)
            c_in = channels
    return shapes


# Kernel shapes of every VGG16 layer as our trunk holds them (fc layers convolutionalized).
KERNEL_SHAPES: dict[str, tuple[int, ...]] = {
    **_conv_layers(),
    "fc6": (7, 7, 512, 4096),
    "fc7": (1, 1, 4096, 4096),
    "fc8": (1, 1, 4096, 1000),
}
# Our layer names -> Keras' (keras.applications.VGG16).
KERAS_NAMES: dict[str, str] = {
    **{name: "block{}_conv{}".format(*name[4:].split("_")) for name in _conv_layers()},
    "fc6": "fc1",
    "fc7": "fc2",
    "fc8": "predictions",
}
_OUR_NAMES = {keras: ours for ours, keras in KERAS_NAMES.items()}

# Raw (kernel, bias) per our layer name, as found in a file: arrays or lazy h5py datasets.
_RawLayers = Mapping[str, tuple[Any, Any]]


def keras_cache_path(*, include_top: bool = True) -> Path:
    """Where `keras.applications.VGG16(weights="imagenet")` caches its file ($KERAS_HOME aware)."""
    home = Path(os.environ.get("KERAS_HOME", Path("~/.keras").expanduser()))
    return home / "models" / (KERAS_WEIGHTS_FILE if include_top else KERAS_NOTOP_WEIGHTS_FILE)


def load_vgg16_weights(
    path: str | os.PathLike,
    *,
    include_fc8: bool = False,
    convs_only: bool = False,
    rgb_input: bool = False,
) -> dict[str, dict[str, np.ndarray]]:
    """Reads ImageNet VGG16 weights into our `jaxseg.models.vgg.VGG16` parameter tree.

    Args:
      path: a legacy Keras HDF5 file (e.g. `keras_cache_path()`), a Keras 3 `.weights.h5`, or an
        `.npz` from `save_vgg16_npz`.
      include_fc8: also return fc8, the 1000-way ImageNet classifier, as a 1x1 conv.
      convs_only: return conv1_1 ... conv5_3 only; required for the `_notop` file, which has no
        fully connected layers.
      rgb_input: reverse conv1_1's input channels so the network takes RGB instead of BGR.

    Returns:
      {"conv1_1": {"kernel": [3, 3, 3, 64], "bias": [64]}, ..., "conv5_3",
       "fc6": {"kernel": [7, 7, 512, 4096], "bias": [4096]}, "fc7": {"kernel": [1, 1, 4096, 4096]},
       "fc8": {"kernel": [1, 1, 4096, 1000]} (with include_fc8)}, numpy float32.

    Raises:
      FileNotFoundError: path does not exist (the message says how to obtain the file).
      ValueError: the file is not in a known layout, lacks a layer, or a layer's shape differs
        from VGG16's; the message names the file, the layer and both shapes.
    """
    if include_fc8 and convs_only:
        raise ValueError("load_vgg16_weights: include_fc8=True contradicts convs_only=True")
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"VGG16 weights file {path} does not exist; {HOW_TO_DOWNLOAD}")
    wanted = [
        n
        for n in KERNEL_SHAPES
        if not (convs_only and n in _FC_LAYERS) and (include_fc8 or n != "fc8")
    ]
    params = {}
    with _open_layers(path) as found:
        for name in wanted:
            if name not in found:
                raise ValueError(_missing_layer_message(path, name, found))
            kernel, bias = found[name]
            params[name] = _convert_layer(path, name, kernel, bias)
    if rgb_input:
        params["conv1_1"]["kernel"] = np.ascontiguousarray(params["conv1_1"]["kernel"][:, :, ::-1])
    return params


def save_vgg16_npz(params: Mapping[str, Mapping[str, Any]], path: str | os.PathLike) -> None:
    """Writes a VGG16 parameter tree (from `load_vgg16_weights`) to `path` as float32 `.npz`.

    Keys are "<layer>/kernel" and "<layer>/bias" with our layer names and shapes; the file is
    written at exactly `path` (numpy would otherwise append ".npz").
    """
    unknown = sorted(set(params) - set(KERNEL_SHAPES))
    if unknown:
        raise ValueError(
            f"save_vgg16_npz({path}): {unknown} are not VGG16 layers {list(KERNEL_SHAPES)}; "
            "pass the trunk's own tree (e.g. params['backbone'] of an FCN)"
        )
    arrays = {
        f"{layer}/{leaf}": np.asarray(value, np.float32)
        for layer, leaves in params.items()
        for leaf, value in leaves.items()
    }
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def transplant_into(
    params: Mapping[str, Any],
    vgg_params: Mapping[str, Mapping[str, Any]],
    prefix: Sequence[str] = ("backbone",),
) -> dict[str, Any]:
    """Returns a copy of `params` whose VGG16 layers under `prefix` are `vgg_params`' arrays.

    Args:
      params: a model's "params" collection (nested dicts of arrays, or of `jax.ShapeDtypeStruct`
        from `jax.eval_shape(model.init, ...)`). FCN holds the trunk under "backbone"; pass
        `prefix=()` for a bare `VGG16`.
      vgg_params: {layer: {"kernel", "bias"}} from `load_vgg16_weights`.
      prefix: path of the trunk's subtree inside `params`.

    Returns:
      A new tree (the input is not modified; untouched subtrees are shared): every layer of
      `vgg_params` is replaced by numpy arrays in the target leaf's dtype, ready for
      `jax.device_put` with the run's sharding. Layers of the model that `vgg_params` lacks
      (e.g. fc6/fc7 after `convs_only=True`) keep their values.

    Raises:
      ValueError: the prefix or a layer is missing from `params`, or a shape differs; the
        message names the layer path, the expected and the found shapes.
    """
    trunk: Any = params
    for depth, key in enumerate(prefix):
        if not isinstance(trunk, Mapping) or key not in trunk:
            where = "/".join(prefix[:depth]) or "<root>"
            keys = sorted(trunk) if isinstance(trunk, Mapping) else type(trunk).__name__
            raise ValueError(f"transplant_into: no {key!r} under {where}; found {keys}")
        trunk = trunk[key]
    new_trunk = dict(trunk)
    for name, leaves in vgg_params.items():
        where = "/".join((*prefix, name))
        if name not in trunk:
            raise ValueError(
                f"transplant_into: the model has no layer {where} (its layers: {sorted(trunk)}); "
                + ("load with include_fc8=False" if name == "fc8" else "wrong prefix?")
            )
        target = trunk[name]
        if set(target) != set(leaves):
            raise ValueError(
                f"transplant_into: {where} has leaves {sorted(target)}, "
                f"the weights have {sorted(leaves)}"
            )
        new_layer = {}
        for leaf, value in leaves.items():
            expected, found = tuple(target[leaf].shape), tuple(np.shape(value))
            if expected != found:
                raise ValueError(
                    f"transplant_into: {where}/{leaf}: the model expects shape {expected}, "
                    f"the weights have {found}"
                )
            new_layer[leaf] = np.asarray(value, dtype=target[leaf].dtype)
        new_trunk[name] = new_layer
    return _replace_subtree(params, tuple(prefix), new_trunk)


def _replace_subtree(tree: Mapping[str, Any], path: tuple[str, ...], value: Any) -> Any:
    if not path:
        return value
    new = dict(tree)
    new[path[0]] = _replace_subtree(tree[path[0]], path[1:], value)
    return new


def _convert_layer(path: Path, name: str, kernel: Any, bias: Any) -> dict[str, np.ndarray]:
    """Checks a layer's shapes; convolutionalizes a Dense kernel [K, C_out] to [h, w, c, C_out].

    Keras flattens pool5 [7, 7, 512] in row-major (h, w, c) order, so Dense row (h * 7 + w) * 512
    + c multiplies pool5[h, w, c]: a plain reshape gives the 7x7x512 conv kernel
    (tests/test_pretrained.py checks this against Keras' own forward pass).
    """
    expected = KERNEL_SHAPES[name]
    dense_shape = (math.prod(expected[:3]), expected[3])
    kernel = np.asarray(kernel, np.float32)
    bias = np.asarray(bias, np.float32)
    where = f"{path}: layer {name} (Keras {KERAS_NAMES[name]!r})"
    if name in _FC_LAYERS and kernel.shape == dense_shape:
        kernel = kernel.reshape(expected)
    if kernel.shape != expected:
        also = f" or Dense {dense_shape}" if name in _FC_LAYERS else ""
        hint = ""
        if sorted(kernel.shape) == sorted(expected):
            hint = " (channels-first/Theano kernels? use the tf_dim_ordering_tf_kernels file)"
        raise ValueError(f"{where}: kernel shape {kernel.shape}, expected {expected}{also}{hint}")
    if bias.shape != expected[-1:]:
        raise ValueError(f"{where}: bias shape {bias.shape}, expected {expected[-1:]}")
    return {"kernel": kernel, "bias": bias}


def _missing_layer_message(path: Path, name: str, found: _RawLayers) -> str:
    have = [n for n in KERNEL_SHAPES if n in found]
    msg = f"{path}: no layer {name} (Keras {KERAS_NAMES[name]!r}); VGG16 layers found: {have}"
    if name == "fc8":
        return msg + ". Load with include_fc8=False."
    if name in _FC_LAYERS:
        return msg + (
            f". A '_notop' file ({KERAS_NOTOP_WEIGHTS_FILE}) has no fully connected layers: pass "
            f"convs_only=True to load the convs alone, or use {KERAS_WEIGHTS_FILE}."
        )
    return msg + ". Is this a VGG16 weights file?"


@contextlib.contextmanager
def _open_layers(path: Path) -> Iterator[_RawLayers]:
    """Yields {our layer name: (kernel, bias)} from any supported file, lazily where possible."""
    if path.suffix == ".npz":
        with np.load(path) as npz:
            names = {key.rsplit("/", 1)[0] for key in npz.files}
            yield {
                n: (npz[f"{n}/kernel"], npz[f"{n}/bias"])
                for n in names
                if f"{n}/kernel" in npz.files and f"{n}/bias" in npz.files
            }
        return
    if not h5py.is_hdf5(path):
        raise ValueError(f"{path}: neither an .npz nor an HDF5 file; cannot read VGG16 weights")
    with h5py.File(path, "r") as f:
        root = f["model_weights"] if "layer_names" not in f.attrs and "model_weights" in f else f
        if "layer_names" in root.attrs or "layer_names0" in root.attrs:
            yield _legacy_layers(path, root)
        elif isinstance(f.get("layers"), h5py.Group):
            yield _keras3_layers(path, f)
        else:
            raise ValueError(
                f"{path}: unknown HDF5 layout: neither legacy Keras (a 'layer_names' attribute) "
                f"nor Keras 3 .weights.h5 (a 'layers' group); top-level keys {sorted(f)}"
            )


def _string_list_attr(group: h5py.Group, name: str) -> list[str]:
    """A list-of-strings attribute; Keras splits long ones into name0, name1, ... chunks."""
    if name in group.attrs:
        values = list(group.attrs[name])
    else:
        values, chunk = [], 0
        while f"{name}{chunk}" in group.attrs:
            values.extend(group.attrs[f"{name}{chunk}"])
            chunk += 1
    return [v.decode("utf8") if isinstance(v, bytes) else str(v) for v in values]


def _kernel_and_bias(path: Path, where: str, weights: list[h5py.Dataset]) -> tuple[Any, Any]:
    # Keras stores [kernel, bias]; go by rank rather than by name, which differs across versions
    # ("block1_conv1_W_1:0" in the 2016 ImageNet file, "block1_conv1/kernel:0" in Keras 2).
    if len(weights) != 2 or sorted(w.ndim for w in weights)[0] != 1:
        shapes = [w.shape for w in weights]
        raise ValueError(f"{path}: {where} holds weights of shapes {shapes}, not (kernel, bias)")
    kernel, bias = weights if weights[1].ndim == 1 else weights[::-1]
    return kernel, bias


def _legacy_layers(path: Path, root: h5py.Group) -> dict[str, tuple[Any, Any]]:
    layers = {}
    for keras_name in _string_list_attr(root, "layer_names"):
        if keras_name not in _OUR_NAMES:
            continue  # input, pooling, flatten: no weights
        group = root[keras_name]
        weights = [group[w] for w in _string_list_attr(group, "weight_names")]
        layers[_OUR_NAMES[keras_name]] = _kernel_and_bias(path, f"layer {keras_name!r}", weights)
    return layers


def _keras3_layers(path: Path, f: h5py.File) -> dict[str, tuple[Any, Any]]:
    """Keras 3 `.weights.h5`: groups are object paths ("layers/conv2d_3/vars"), not layer names.

    Recent Keras records the layer name as a `name` attribute of each `vars` group; without it,
    fall back to VGG16's order: conv2d, conv2d_1, ..., conv2d_12, then dense, dense_1, dense_2.
    """
    named, unnamed = {}, {}

    def visit(group_path: str, obj: Any) -> None:
        if not (isinstance(obj, h5py.Group) and group_path.endswith("/vars") and len(obj) == 2):
            return
        weights = [obj[k] for k in sorted(obj, key=int)]
        keras_name = obj.attrs.get("name")
        keras_name = keras_name.decode("utf8") if isinstance(keras_name, bytes) else keras_name
        if keras_name in _OUR_NAMES:
            if _OUR_NAMES[keras_name] in named:
                raise ValueError(f"{path}: two layers named {keras_name!r}")
            named[_OUR_NAMES[keras_name]] = _kernel_and_bias(path, group_path, weights)
        elif keras_name is None and group_path.count("/") == 2:
            unnamed[group_path.split("/")[1]] = _kernel_and_bias(path, group_path, weights)

    f["layers"].visititems(lambda p, obj: visit(f"layers/{p}", obj))
    if named:
        return named

    def order(object_name: str) -> tuple[str, int]:
        base, _, index = object_name.rpartition("_")
        return (base, int(index) + 1) if index.isdigit() else (object_name, 0)

    convs = sorted((n for n in unnamed if n.startswith("conv2d")), key=order)
    denses = sorted((n for n in unnamed if n.startswith("dense")), key=order)
    ours = [n for n in KERNEL_SHAPES if n not in _FC_LAYERS]
    layers = {o: unnamed[k] for o, k in zip(ours, convs, strict=False)}
    layers.update({o: unnamed[k] for o, k in zip(_FC_LAYERS, denses, strict=False)})
    return layers
