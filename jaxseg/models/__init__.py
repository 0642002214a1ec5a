"""The model zoo: one explicit dict from config name to Linen module constructor."""

from __future__ import annotations

import dataclasses
import functools

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from jaxseg.models.fcn import FCN
from jaxseg.models.unet import UNet, unet_output_size, unet_sizes, unet_valid_input_sizes

MODELS = {
    "fcn32s": functools.partial(FCN, output_stride=32),
    "fcn16s": functools.partial(FCN, output_stride=16),
    "fcn8s": functools.partial(FCN, output_stride=8),
    # The paper's network: valid convs, 64..1024 channels, output smaller than input.
    "unet": functools.partial(UNet, padding="VALID"),
    # Same-size output for any multiple-of-2**depth input; width, depth, BN, upsampling free.
    "unet_padded": functools.partial(UNet, padding="SAME"),
}

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def _fields(name: str) -> set[str]:
    """The module attributes a config can set for `MODELS[name]`."""
    ctor = MODELS[name]
    return {f.name for f in dataclasses.fields(ctor.func) if f.init} - {"parent", "name"}


def build_model(model_config: ml_collections.ConfigDict | dict) -> nn.Module:
    """Builds `MODELS[model_config.name]` with its fields of `model_config` as module attributes.

    `config.model` holds the fields of every model family (configs/base.py): the chosen module
    takes the ones it has, and another family's (the U-Net's `depth` for an FCN) are left
    unused. `model_config.dtype`, if present, is a string ("float32" or "bfloat16"). Unknown
    model names, and fields no model has, raise ValueError naming the valid ones.
    """
    cfg = dict(model_config)
    name = cfg.pop("name")
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; valid models: {sorted(MODELS)}")
    fields = _fields(name)
    unknown = sorted(set(cfg) - set().union(*map(_fields, MODELS)))
    if unknown:
        raise ValueError(
            f"model {name!r} has no field(s) {unknown}; its fields are {sorted(fields)}"
        )
    cfg = {k: v for k, v in cfg.items() if k in fields}
    if "dtype" in cfg:
        if cfg["dtype"] not in _DTYPES:
            raise ValueError(f"model.dtype must be one of {sorted(_DTYPES)}, got {cfg['dtype']!r}")
        cfg["dtype"] = _DTYPES[cfg["dtype"]]
    return MODELS[name](**cfg)


def output_size(model: nn.Module, input_hw: tuple[int, int]) -> tuple[int, int]:
    """Spatial size of the logits for an input of size input_hw (smaller for a valid U-Net).

    Every model in `MODELS` states its size rule with the same members: `input_context` (px of
    input each side of the logits), `size_step` (legal input sides step by it),
    `output_size(side)`, `valid_input_size(side)` (the next legal side up) and
    `symbolic_multiple` (for jax.export); see `UNet`. Illegal sides raise ValueError, naming them.
    """
    return tuple(model.output_size(s) for s in input_hw)


def input_context(model: nn.Module, input_hw: tuple[int, int]) -> tuple[int, int]:
    """(rows, cols) of input context each side of the logits for an input of size input_hw.

    A valid U-Net's logits cover the centre of its input; this is the margin around them
    ((572 - 388) / 2 = 92 px for the paper's network), 0 for same-size models. Training
    mirror-pads images by it, so every labelled pixel can land in the scored centre.
    """
    output_size(model, input_hw)  # input_hw must be legal
    return model.input_context, model.input_context


__all__ = [
    "FCN",
    "MODELS",
    "UNet",
    "build_model",
    "input_context",
    "output_size",
    "unet_output_size",
    "unet_sizes",
    "unet_valid_input_sizes",
]
