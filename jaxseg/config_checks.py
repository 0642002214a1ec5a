"""Start-up checks of a run's config: what would otherwise fail late (after the data set is
built and the step compiled) or obscurely, as errors that name the key and the fix.

train_lib calls `validate_config` before it builds the data set or the model (the optimiser's
values are checked by `jaxseg.optim.make_optimizer`, which train_lib calls next). eval.py,
predict.py and export read a run's config.json through `jaxseg.workdir.RunDir.read_config`, which
applies `validate_run_config`: the checks of what they use (classes, sizes, inference).
"""

import functools
import importlib.util
import math
import numbers
import os
import types
from collections.abc import Mapping

import jax
import ml_collections

from jaxseg import inference
from jaxseg.data import datasets


def validate_config(
    config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh, spec: datasets.DatasetSpec
) -> None:
    """Raises ValueError naming the first bad key of `config` for a run on `mesh` and `spec`
    (the data set's spec, `datasets.dataset_spec(config.data)`)."""
    for key in ("total_steps", "log_every_steps", "eval_every_steps", "checkpoint_every_steps"):
        if config[key] < 1:
            raise ValueError(f"config.{key} = {config[key]}: must be >= 1 (steps)")
    if config.checkpoint_keep < 1:
        raise ValueError(f"config.checkpoint_keep = {config.checkpoint_keep}: must be >= 1")
    if config.max_steps_per_run < 0:
        raise ValueError(
            f"config.max_steps_per_run = {config.max_steps_per_run}: must be >= 0 (0 = no limit)"
        )
    devices = mesh.size
    for key in ("batch_size", "eval_batch_size"):
        if config[key] < 1 or config[key] % devices:
            raise ValueError(
                f"config.{key} = {config[key]} is not a positive multiple of the {devices} "
                f"devices the batch is split over ({jax.process_count()} process(es)); use "
                f"e.g. {max(1, round(config[key] / devices)) * devices}"
            )
    if config.data.loader_workers < -1:
        raise ValueError(
            f"config.data.loader_workers = {config.data.loader_workers}: must be >= 0 (worker "
            "processes; 0 = threads of the training process) or -1 (automatic)"
        )
    if config.batch_size % config.grad_accum_steps:
        raise ValueError(
            f"config.batch_size = {config.batch_size} is not divisible by "
            f"config.grad_accum_steps = {config.grad_accum_steps}"
        )
    validate_run_config(config, spec)


def read_run_config(raw: Mapping, where: str) -> ml_collections.ConfigDict:
    """A run's config.json (`raw`, as JSON decoded it) through the command line's typed
    validation; `where` names the file in errors.

    Each value is assigned to its field of configs/base.py, so ml_collections' own type rules
    apply exactly as to `--config.<key>=<value>` (int -> float and list -> tuple convert; "4"
    for an int does not), then `validate_run_config` checks what eval, predict and export use.
    config.json files of earlier versions load: a key they lack stays absent (readers that
    need a newer key say what a run without it meant), and a key base.py no longer defines is
    kept as written. Without configs/base.py (a copy of jaxseg outside its checkout) the values
    are returned as written.
    """
    base = _base_config()
    if base is None:
        return ml_collections.ConfigDict(dict(raw))
    typed = _typed(raw, base, "", where)
    # `base` now holds the run's values over base.py's defaults for keys the file lacks: the
    # checks see a complete config, the caller gets only what the file holds.
    try:
        validate_run_config(base, datasets.dataset_spec(base.data))
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None
    return ml_collections.ConfigDict(typed)


@functools.cache
def _base_module() -> types.ModuleType | None:
    # Loaded by path, not as `configs.base`: another `configs` package on sys.path must not
    # stand in for it. base.py imports only ml_collections.
    path = os.path.join(os.path.dirname(os.path.dirname(__file__)), "configs", "base.py")
    if not os.path.isfile(path):
        return None
    spec = importlib.util.spec_from_file_location("_jaxseg_base_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _base_config() -> ml_collections.ConfigDict | None:
    module = _base_module()
    return None if module is None else module.get_config()


def _typed(raw: Mapping, base: ml_collections.ConfigDict, prefix: str, where: str) -> dict:
    """`raw`'s values assigned into `base` (which they update), as a nested dict of the
    converted values; errors name `config.<key>` and `where`."""
    out = {}
    for key, value in raw.items():
        name = f"config.{prefix}{key}"
        if key not in base:
            out[key] = value  # A field of an earlier version: kept for the readers that know it.
            continue
        if isinstance(base[key], ml_collections.ConfigDict):
            if not isinstance(value, Mapping):
                raise ValueError(f"{name} in {where} is {value!r}, not a group of settings")
            out[key] = _typed(value, base[key], f"{prefix}{key}.", where)
            continue
        field_type = base.get_type(key)
        wrong = (value is None and base[key] is not None) or (
            (field_type is tuple and not isinstance(value, (tuple, list)))
            or (field_type in (int, float) and isinstance(value, bool))
        )
        try:
            if not wrong:
                base[key] = value  # ml_collections' type rules, as for a command-line override
        except TypeError:
            wrong = True
        if wrong:
            raise ValueError(
                f"{name} in {where} is {value!r} ({type(value).__name__}) but must be a "
                f"{field_type.__name__} (configs/base.py: {base[key]!r}); correct the file"
            )
        out[key] = base[key]
    return out


def validate_run_config(config: ml_collections.ConfigDict, spec: datasets.DatasetSpec) -> None:
    """The checks of what evaluating or applying a trained model reads too: the class count,
    every size and per-channel tuple, and `config.eval` (jaxseg.inference's one reader of it)."""
    check_class_count(config, spec)
    check_sizes(config, spec)
    inference.InferenceSettings.from_eval_config(config.eval)


def check_class_count(config: ml_collections.ConfigDict, spec: datasets.DatasetSpec) -> None:
    """Every per-class setting has one entry per class of `config.model.num_classes`.

    The per-class settings: the data set's classes (for image_folder,
    `config.data.folder.class_names`), `config.loss.class_weights` and, for image_folder,
    `config.data.folder.palette` (both may be () instead).
    """
    num_classes = config.model.num_classes
    folder = spec.name == "image_folder"
    if num_classes < 2 and num_classes == spec.num_classes:
        # One class: every pixel is that class, so the loss and its gradients are exactly 0
        # and the mIoU is a perfect 1.0 whatever the model does.
        names = "config.data.folder.class_names and " if folder else ""
        raise ValueError(
            f"config.model.num_classes = {num_classes}: segmentation needs at least 2 classes "
            f"(e.g. background and foreground): set {names}config.model.num_classes to include "
            "the background"
        )
    if num_classes != spec.num_classes:
        if folder:
            raise ValueError(
                f"config.data.folder.class_names has {spec.num_classes} names but "
                f"config.model.num_classes = {num_classes}: give one name per class id "
                f"0..{num_classes - 1} (or set config.model.num_classes={spec.num_classes})"
            )
        raise ValueError(
            f"config.model.num_classes = {num_classes} but data set {spec.name!r} has "
            f"{spec.num_classes} classes"
        )
    weights = tuple(config.loss.class_weights)
    if weights and len(weights) != num_classes:
        raise ValueError(
            f"config.loss.class_weights has {len(weights)} values {weights} but "
            f"config.model.num_classes = {num_classes}: give one weight per class "
            f"({num_classes} values) or set --config.loss.class_weights=() for uniform weights "
            "(configs/base.py, the config for your own data, sets none)"
        )
    palette = tuple(config.data.folder.palette)
    if folder and palette and len(palette) != num_classes:
        raise ValueError(
            f"config.data.folder.palette has {len(palette)} colours but "
            f"config.model.num_classes = {num_classes}: give one RGB colour per class or () "
            "(index masks only: a generated palette)"
        )


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _sequence(value) -> bool:
    return isinstance(value, (tuple, list))


def check_sizes(config: ml_collections.ConfigDict, spec: datasets.DatasetSpec) -> None:
    """Every tuple-valued field of `config.data` has its length and element type: the (height,
    width) sizes, one mean/std per image channel of `spec`, and for image_folder the RGB
    colours. (`config.eval`'s sizes and scales are checked by
    `inference.InferenceSettings`, `config.loss.class_weights` by `check_class_count`,
    `config.optim`'s tuples by `optim.make_optimizer`, the folder's id options and
    intensity_range where the data set is built.)"""
    data = config.data
    for key in ("crop_size", "eval_pad_size"):
        value = data[key]
        if not (_sequence(value) and len(value) == 2 and all(_is_int(v) and v > 0 for v in value)):
            raise ValueError(
                f"config.data.{key} = {value!r}: must be (height, width), two positive integers "
                f"(px), e.g. --config.data.{key}='(96, 96)'"
            )
    channels = spec.image_channels
    for key in ("mean", "std"):
        value = data[key]
        if not (_sequence(value) and len(value) == channels and all(map(_is_number, value))):
            raise ValueError(
                f"config.data.{key} = {value!r}: must be {channels} finite number(s), one per "
                f"channel of {spec.name}'s {channels}-channel images ([0, 1] units)"
            )
    if min(data.std) <= 0:
        raise ValueError(f"config.data.std = {tuple(data.std)}: every value must be > 0")
    if spec.name != "image_folder":
        return
    folder = data.folder
    if not all(isinstance(n, str) and n for n in folder.class_names):
        raise ValueError(
            f"config.data.folder.class_names = {tuple(folder.class_names)!r}: must be non-empty "
            "strings, one per class id"
        )
    for key in ("palette", "ignore_colors"):
        colours = folder[key]
        if not all(
            _sequence(c) and len(c) == 3 and all(_is_int(v) and 0 <= v <= 255 for v in c)
            for c in colours
        ):
            raise ValueError(
                f"config.data.folder.{key} = {tuple(colours)!r}: must be RGB colours, each "
                "three integers 0..255, e.g. ((0, 0, 0), (128, 0, 0))"
            )
