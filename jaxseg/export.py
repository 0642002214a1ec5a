"""Exports a trained run for serving: StableHLO (`jax.export`) or a TensorFlow SavedModel.

Both formats hold one function, images uint8 [N, H, W, C] -> {"labels": int32 [N, H, W],
"probabilities": float32 [N, H, W, K], "logits": float32 [N, H, W, K]}, with the run's
normalisation ((x / 255 - mean) / std) before the network and softmax/argmax after it, and the
parameters folded in: a consumer needs neither jaxseg nor the config. The inference is a single
whole-image pass (`jaxseg.inference.whole_image_logits`); tiling and TTA stay with the caller.

Shapes. The batch is always symbolic. Height and width are symbolic where every layer of the
model is shape-polymorphic, checked per model:
- padded U-Net with transposed up-convolutions: any multiple of 2**depth;
- FCN with `alignment="padded"` and `learnable_upsampling=True`: any multiple of 32;
- everything else is exported at one fixed size (default `config.data.eval_pad_size`): frozen
  FCN upsampling and the bilinear U-Net build their interpolation matrices from static sizes
  (numpy), FCN reference alignment crops by offsets computed from static sizes, and the valid
  U-Net mirror-pads by amounts computed from the static size.
The rule is written in the card (`card.json`), with classes, palette, channels, mean/std, the
jaxseg version and the source run.

Files in the output folder:
- stablehlo: `model.jax_export` (`jax.export.Exported.serialize()`; reload with
  `load_stablehlo`), `model.mlirbc` (the StableHLO portable artifact, for non-JAX runtimes),
  `card.json`. Lowered for CPU and CUDA.
- savedmodel: a TF SavedModel (via `jax.experimental.jax2tf`, native serialization; its
  `serving_default` signature takes `images` uint8 [N, H, W, C]), and `card.json`. The only
  format that needs TensorFlow, an optional extra (`pip install -e ".[savedmodel]"`); TensorFlow
  is imported here and nowhere else in the export.

jax2tf rather than orbax-export: orbax-export is a wrapper over jax2tf (JaxModule converts with
it), so it would add a dependency for the same conversion.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from jaxseg import backend, inference, prediction
from jaxseg import workdir as workdir_lib

FORMATS = ("stablehlo", "savedmodel")
CARD = "card.json"
STABLEHLO_FILE = "model.jax_export"
PLATFORMS = ("cpu", "cuda")


def symbolic_multiple(model: nn.Module) -> int | None:
    """The side multiple a model accepts for symbolic height/width, or None (fixed size only)."""
    return model.symbolic_multiple


def size_rule(model: nn.Module, fixed_hw: tuple[int, int]) -> dict:
    """The input size rule written in the card: {"kind": "multiple", "multiple": m} (any
    height and width that are multiples of m) or {"kind": "fixed", "height", "width"}."""
    m = symbolic_multiple(model)
    if m is not None:
        return {"kind": "multiple", "multiple": m}
    return {"kind": "fixed", "height": int(fixed_hw[0]), "width": int(fixed_hw[1])}


def serving_fn(model: nn.Module, mean, std, rule: dict) -> Callable:
    """fn(variables, images uint8 [N, H, W, C]) -> {"labels", "probabilities", "logits"}."""
    mean = jnp.asarray(mean, jnp.float32)
    std = jnp.asarray(std, jnp.float32)

    def serve(variables, images):
        x = (images.astype(jnp.float32) / 255.0 - mean) / std
        if rule["kind"] == "multiple":
            # Sides are multiples the model takes as they are: whole_image_logits would pad by
            # zero, and its static-size checks do not trace under symbolic shapes.
            logits = model.apply(variables, x, train=False).astype(jnp.float32)
        else:
            logits = inference.whole_image_logits(model, variables, x)
        return {
            "labels": jnp.argmax(logits, axis=-1).astype(jnp.int32),
            "probabilities": jax.nn.softmax(logits, axis=-1),
            "logits": logits,
        }

    return serve


def input_spec(rule: dict, channels: int) -> tuple[jax.ShapeDtypeStruct, str]:
    """(abstract uint8 input, the jax2tf polymorphic shape string) of a size rule."""
    if rule["kind"] == "multiple":
        m = rule["multiple"]
        poly = f"(b, {m}*h, {m}*w, {channels})"
    else:
        poly = f"(b, {rule['height']}, {rule['width']}, {channels})"
    shape = jax.export.symbolic_shape(poly[1:-1])
    return jax.ShapeDtypeStruct(shape, jnp.uint8), poly


def jaxseg_version() -> str:
    try:
        return importlib.metadata.version("jaxseg")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed)"


def model_card(predictor, workdir: str, checkpoint, rule: dict, fmt: str, files) -> dict:
    """What a consumer needs to feed the export and read its outputs."""
    config = workdir_lib.read_config(workdir)
    return {
        "format": fmt,
        "files": list(files),
        "classes": list(predictor.class_names),
        "palette": [list(c) for c in predictor.palette],
        "input": {
            "name": "images",
            "dtype": "uint8",
            "layout": "NHWC",
            "channels": predictor.channels,
            "normalisation": "(images / 255 - mean) / std, per channel (inside the export)",
        },
        "mean": [float(v) for v in predictor.mean],
        "std": [float(v) for v in predictor.std],
        "size_rule": rule,
        "outputs": {
            "labels": "int32 [N, H, W] class ids",
            "probabilities": "float32 [N, H, W, K] softmax over classes",
            "logits": "float32 [N, H, W, K]",
        },
        "inference": "whole_image (one pass; pad or tile larger images yourself)",
        "platforms": list(PLATFORMS) if fmt == "stablehlo" else ["tensorflow"],
        "jaxseg_version": jaxseg_version(),
        "jax_version": jax.__version__,
        "source": {
            "workdir": os.fspath(workdir_lib.resolve(workdir)),  # gs:// kept as a URL
            "checkpoint": str(checkpoint),
            "step": predictor.step,
            "model": config.model.to_dict(),
            "dataset": config.data.name,
        },
    }


def _host_variables(predictor):
    # One host copy: the export embeds them as constants / TF variables, whatever the mesh.
    return jax.tree.map(np.asarray, jax.device_get(predictor.variables))


def export_stablehlo(predictor, rule: dict, output_dir: str) -> list[str]:
    """Writes `model.jax_export` and `model.mlirbc` into `output_dir`; returns their names."""
    variables = _host_variables(predictor)
    serve = serving_fn(predictor.model, predictor.mean, predictor.std, rule)
    spec, _ = input_spec(rule, predictor.channels)
    exported = jax.export.export(
        jax.jit(lambda images: serve(variables, images)), platforms=PLATFORMS
    )(spec)
    with open(os.path.join(output_dir, STABLEHLO_FILE), "wb") as f:
        f.write(exported.serialize())
    with open(os.path.join(output_dir, "model.mlirbc"), "wb") as f:
        f.write(exported.mlir_module_serialized)
    return [STABLEHLO_FILE, "model.mlirbc"]


SAVEDMODEL_EXTRA = (
    'pip install -e ".[savedmodel]" in a jaxseg checkout, or pip install "jaxseg[savedmodel]"'
)


def import_tensorflow():
    """TensorFlow, or an ImportError that says how to install it (only the SavedModel needs it)."""
    try:
        import tensorflow as tf
    except ImportError as e:
        raise ImportError(
            f"the SavedModel export needs TensorFlow, which is not installed ({e}). Install the "
            f"extra: {SAVEDMODEL_EXTRA} (on a Python that TensorFlow ships wheels for); or "
            "export with --format stablehlo, which needs no TensorFlow. Nothing was written."
        ) from e
    return tf


def export_savedmodel(predictor, rule: dict, output_dir: str) -> list[str]:
    """Writes a TF SavedModel (signature "serving_default": images uint8 -> outputs)."""
    tf = import_tensorflow()
    from jax.experimental import jax2tf  # imports TensorFlow

    serve = serving_fn(predictor.model, predictor.mean, predictor.std, rule)
    _, poly = input_spec(rule, predictor.channels)
    module = tf.Module()
    # tf.Variables, not constants: the SavedModel stores the weights once, as checkpoints do.
    module.variables_ = tf.nest.map_structure(tf.Variable, _host_variables(predictor))
    converted = jax2tf.convert(
        serve, polymorphic_shapes=[None, poly], native_serialization_platforms=PLATFORMS
    )
    hw = [None, None] if rule["kind"] == "multiple" else [rule["height"], rule["width"]]
    signature = tf.TensorSpec([None, *hw, predictor.channels], tf.uint8, name="images")

    @tf.function(autograph=False, input_signature=[signature])
    def serving_default(images):
        return converted(module.variables_, images)

    module.serving_default = serving_default
    tf.saved_model.save(module, output_dir, signatures={"serving_default": serving_default})
    _check_tensorflow_runs_it(output_dir, rule, predictor.channels)
    return ["saved_model.pb", "variables/"]


def _check_tensorflow_runs_it(output_dir: str, rule: dict, channels: int) -> None:
    """Runs the written SavedModel once in this TensorFlow; if it cannot, removes it and says why.

    jax serializes the model as StableHLO four weeks newer than its own release
    (`jax.export`'s WEEK_4 target); a TensorFlow whose XLA is older cannot deserialize it (jax
    0.12.0.1 with tensorflow 2.21: "failed to deserialize portable artifact"), and such a
    SavedModel would only fail later, in serving.
    """
    import tensorflow as tf

    hw = (rule["multiple"],) * 2 if rule["kind"] == "multiple" else (rule["height"], rule["width"])
    serve = tf.saved_model.load(output_dir).signatures["serving_default"]
    try:
        with backend.xla_flags_hidden_from_tensorflow():
            serve(images=tf.zeros((1, *hw, channels), tf.uint8))
    except (tf.errors.OpError, ValueError) as e:
        if "deserialize portable artifact" not in str(e):
            raise
        for name in os.listdir(output_dir):  # export_run made sure it was empty before
            path = os.path.join(output_dir, name)
            shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
        raise RuntimeError(
            f"tensorflow {tf.__version__} cannot run the StableHLO that jax {jax.__version__} "
            "serializes (its XLA is older than the StableHLO version jax targets); nothing was "
            "written. Export with a jax release at most as new as your TensorFlow (e.g. jax "
            "0.10.2 on Python 3.11 with tensorflow 2.20-2.21), or use --format stablehlo"
        ) from None


def export_run(
    workdir: str,
    output_dir: str,
    fmt: str,
    checkpoint: str = "best",
    size: tuple[int, int] | None = None,
) -> dict:
    """export.py's one call: restore `checkpoint` of `workdir`, write `fmt` into `output_dir`
    with `card.json`. `size` (height, width) is the fixed input size for models without
    symbolic sides (default: config.data.eval_pad_size). Returns the card."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; valid formats: {FORMATS}")
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise ValueError(f"--output {output_dir} exists and is not a folder")
    if os.path.isdir(output_dir) and os.listdir(output_dir):
        raise ValueError(f"--output {output_dir} is not empty: refusing to mix two exports")
    if fmt == "savedmodel":
        # Before anything is restored or written. TensorFlow only checks the export once, on the
        # host: it must not take the GPU memory jax needs (and must be told before its first op).
        import_tensorflow().config.set_visible_devices([], "GPU")
    config = workdir_lib.read_config(workdir)
    predictor = prediction.load_predictor(workdir, checkpoint)
    fixed = tuple(size) if size else tuple(config.data.eval_pad_size)
    rule = size_rule(predictor.model, fixed)
    if rule["kind"] == "fixed" and size is None:
        logging.info(
            "export: %s takes one fixed size, %s (--size to change)", config.model.name, fixed
        )
    os.makedirs(output_dir, exist_ok=True)
    write = export_stablehlo if fmt == "stablehlo" else export_savedmodel
    files = write(predictor, rule, output_dir)
    card = model_card(predictor, workdir, checkpoint, rule, fmt, files)
    with open(os.path.join(output_dir, CARD), "w") as f:
        json.dump(card, f, indent=2)
    return card


def read_card(export_dir: str) -> dict:
    path = os.path.join(export_dir, CARD)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no {CARD} in {export_dir}: not a jaxseg export")
    with open(path) as f:
        return json.load(f)


def load_stablehlo(export_dir: str) -> tuple[Callable, dict]:
    """(fn(images uint8 [N, H, W, C]) -> outputs dict, card) of a stablehlo export."""
    card = read_card(export_dir)
    with open(os.path.join(export_dir, STABLEHLO_FILE), "rb") as f:
        exported = jax.export.deserialize(bytearray(f.read()))
    return exported.call, card
