"""The networks the benchmarks compare, by name, as jaxseg configs (shared by JAX and PyTorch).

Each preset is a config file plus overrides; `load` also accepts a config file path, so any
config can be benchmarked. The PyTorch peer (`peer_torch.py`) builds its network from the same
config, so both frameworks always time the same architecture, optimiser and loss.
"""

from __future__ import annotations

import ast
import importlib.util
import os

import ml_collections

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# name -> (config file, overrides)
PRESETS = {
    # The paper's U-Net (64..1024 channels, 2x2 up-convs, no BN, SGD momentum 0.99) with padded
    # convs, so any multiple of 16 is a valid input: the network the performance issue timed.
    # RGB input (ISBI is greyscale), as in the PyTorch measurement.
    "unet_paper": (
        "configs/unet_isbi.py",
        ("model.name=unet_padded", "loss.class_weights=()", "data.folder.channels=3"),
    ),
    # The paper's valid-convolution U-Net (572 -> 388 tiles).
    "unet_paper_valid": (
        "configs/unet_isbi.py",
        ("loss.class_weights=()", "data.folder.channels=3"),
    ),
    # The embedded default: width 16, BatchNorm, AdamW with clipping.
    "unet_default": ("configs/default.py", ()),
    # The FCN reference recipes (pad 100, ceil pools, crops; SGD momentum 0.99, summed loss).
    "fcn8s": ("configs/fcn8s_voc.py", ()),
    "fcn32s": ("configs/fcn32s_voc.py", ()),
}


def _load_file(path: str) -> ml_collections.ConfigDict:
    if not os.path.isabs(path) and not os.path.exists(path):
        path = os.path.join(_ROOT, path)
    spec = importlib.util.spec_from_file_location("bench_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def apply_override(config: ml_collections.ConfigDict, override: str) -> None:
    """Sets "a.b.c=value" (a Python literal, or a bare string) on an existing field."""
    key, _, text = override.partition("=")
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        value = text
    *parents, leaf = key.split(".")
    node = config
    for part in parents:
        node = node[part]
    if leaf not in node:
        raise KeyError(f"unknown config key {key!r}")
    node[leaf] = value


def load(name_or_path: str, overrides=()) -> ml_collections.ConfigDict:
    """A preset's config (or a config file's), with "key=value" overrides applied."""
    if name_or_path in PRESETS:
        path, preset_overrides = PRESETS[name_or_path]
        overrides = (*preset_overrides, *overrides)
    elif name_or_path.endswith(".py"):
        path = name_or_path
    else:
        raise ValueError(f"unknown model {name_or_path!r}: a preset {sorted(PRESETS)} or a .py")
    config = _load_file(path)
    for override in overrides:
        apply_override(config, override)
    return config
