"""Start-up checks of a run's config: what would otherwise fail late (after the data set is
built and the step compiled) or obscurely, as errors that name the key and the fix.

train_lib calls `validate_config` before it builds the data set or the model.
"""

import jax
import ml_collections

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
    if config.batch_size % config.grad_accum_steps:
        raise ValueError(
            f"config.batch_size = {config.batch_size} is not divisible by "
            f"config.grad_accum_steps = {config.grad_accum_steps}"
        )
    check_class_count(config, spec)


def check_class_count(config: ml_collections.ConfigDict, spec: datasets.DatasetSpec) -> None:
    """Every per-class setting has one entry per class of `config.model.num_classes`.

    The per-class settings: the data set's classes (for image_folder,
    `config.data.folder.class_names`), `config.loss.class_weights` and, for image_folder,
    `config.data.folder.palette` (both may be () instead).
    """
    num_classes = config.model.num_classes
    folder = spec.name == "image_folder"
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
