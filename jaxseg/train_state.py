"""The train state: what it holds, how it is created, restored and initialised from elsewhere.

Training (jaxseg.train_lib), evaluation, prediction and export all meet here, so none of them
imports another: train_lib imports evaluation, never the other way round.

Where a run's first state comes from, in order (`train_lib.train_and_evaluate`):
  1. resume: the workdir's latest intact checkpoint, optimiser state and rng included; a
     resumed run ignores `config.init_from`, which already shaped its first checkpoint;
  2. init_from: else a fresh `init_state`, then `initial_weights` copies in what
     `config.init_from` names (ImageNet VGG16 weights, or the params of another run);
  3. from scratch: else the fresh `init_state` as it is.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jaxseg import checkpointing, optim, sharding
from jaxseg import workdir as workdir_lib
from jaxseg.data import datasets
from jaxseg.models import build_model, pretrained

PyTree = Any


@flax.struct.dataclass
class TrainState:
    """Everything a run needs to continue: step, params, BatchNorm stats, optimiser state, rng.

    `rng` holds raw key data (uint32 [2]) so that the state is a plain array pytree that orbax
    saves and restores like any other. A state restored for inference (`params_only`) has
    `opt_state=None`.
    """

    step: jax.Array
    params: PyTree
    batch_stats: PyTree
    opt_state: optax.OptState | None
    rng: jax.Array


def init_state(
    rng: jax.Array,
    *,
    model: nn.Module,
    tx: optax.GradientTransformation | None,
    input_shape: tuple[int, ...],
) -> TrainState:
    """A fresh TrainState for inputs of `input_shape` ([N, H, W, C]); pure, jit-able.

    `tx=None` gives a state without optimiser state (`opt_state=None`), for inference.
    """
    init_rng, state_rng = jax.random.split(rng)
    variables = model.init(init_rng, jnp.zeros(input_shape, jnp.float32), train=False)
    params = variables["params"]
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=variables.get("batch_stats", {}),
        opt_state=None if tx is None else tx.init(params),
        rng=jax.random.key_data(state_rng),
    )


def variables_of(state: TrainState) -> dict:
    """Model variables of a TrainState (BatchNorm statistics only when the model has them)."""
    variables = {"params": state.params}
    if state.batch_stats:
        variables["batch_stats"] = state.batch_stats
    return variables


def create_state(config, model, tx, mesh, spec: datasets.DatasetSpec):
    """(abstract state with shardings, shardings, jitted init) from `jax.eval_shape`.

    Initialised on one crop of `config.data.crop_size` with `spec.image_channels` channels
    (the parameters do not depend on the batch size). `tx=None`: no optimiser state.
    """
    h, w = config.data.crop_size
    init = functools.partial(
        init_state, model=model, tx=tx, input_shape=(1, h, w, spec.image_channels)
    )
    abstract = jax.eval_shape(init, jax.random.key(0))
    shardings = sharding.state_shardings(abstract, mesh, min_fsdp_size=config.mesh.fsdp_min_size)
    jit_init = jax.jit(init, out_shardings=shardings)
    return sharding.with_shardings(abstract, shardings), shardings, jit_init


def restore_checkpoint(
    config: ml_collections.ConfigDict,
    workdir: str,
    checkpoint: str | int = "latest",
    mesh: jax.sharding.Mesh | None = None,
    *,
    spec: datasets.DatasetSpec | None = None,
    params_only: bool = False,
) -> tuple[nn.Module, TrainState]:
    """(model, TrainState) of `checkpoint` ("best", "latest" or a step) of the run in `workdir`.

    "best" falls back to "latest" while no evaluation has ranked a checkpoint yet.

    Args:
      config: the run's config (`workdir.read_config(workdir)`).
      mesh: where the state goes; default: all devices, params replicated or as config.mesh.
      spec: `datasets.dataset_spec(config.data)` if the caller has it.
      params_only: read step, params, BatchNorm statistics and rng only; the state's
        `opt_state` is None. What evaluation, prediction, export and `init_from` need: no
        optimiser is built and its state (2x the params for Adam) is never read.
    """
    mesh = mesh or sharding.make_mesh(num_fsdp=config.mesh.fsdp)
    spec = spec or datasets.dataset_spec(config.data)
    model = build_model(config.model)
    tx = None if params_only else optim.make_optimizer(config.optim, config.total_steps)[0]
    abstract, _, _ = create_state(config, model, tx, mesh, spec)
    with checkpointing.Checkpointer(workdir, read_only=True) as ckpt:
        if not ckpt.all_steps():
            raise FileNotFoundError(f"no checkpoints in {ckpt.directory}: train first (train.py)")
        which = int(checkpoint) if str(checkpoint).isdigit() else checkpoint
        if which == "best" and ckpt.best_step() is None:
            which = "latest"
        try:
            state = ckpt.restore(abstract, which, partial=params_only)
        except checkpointing.CorruptCheckpointError as e:
            others = [s for s in ckpt.all_steps() if s != e.step]
            raise checkpointing.CorruptCheckpointError(
                e.step, e.path, f"{e.cause} (other checkpoints: {others}; pick one by step)"
            ) from e
    return model, state


def initial_weights(config, state: TrainState, abstract: TrainState) -> TrainState:
    """`state` with `config.init_from` applied: "" (none), a run's workdir, "vgg16:<file>".

    Step 2 of the module docstring's order: only a run that has no checkpoint gets here.
    """
    source = config.init_from
    if not source:
        return state
    if source.startswith("vgg16:"):
        # Our pipeline feeds RGB; the Caffe-trained weights expect BGR: flip conv1_1 once here.
        vgg = pretrained.load_vgg16_weights(source.removeprefix("vgg16:"), rgb_input=True)
        params = pretrained.transplant_into(jax.device_get(state.params), vgg)
        params = jax.tree.map(
            lambda p, a: jax.device_put(np.asarray(p, a.dtype), a.sharding), params, abstract.params
        )
        logging.info("Initialised the VGG16 trunk from %s", source)
        return state.replace(params=params)
    # Another run: restore it with its own model's tree, then copy every parameter both models
    # share (same path, same shape). FCN-16s from FCN-32s keeps its new score_pool4 init.
    other_config = workdir_lib.read_config(source)
    mesh = jax.tree.leaves(abstract)[0].sharding.mesh
    _, restored = restore_checkpoint(other_config, source, "latest", mesh, params_only=True)
    params, copied = _merge_shared(state.params, restored.params)
    batch_stats, _ = _merge_shared(state.batch_stats, restored.batch_stats)
    logging.info("Initialised %d parameter arrays from run %s", copied, source)
    if not copied:
        raise ValueError(f"config.init_from={source!r}: no parameter matches this model's")
    return state.replace(params=params, batch_stats=batch_stats)


def _merge_shared(target: PyTree, source: PyTree) -> tuple[PyTree, int]:
    """`target` with every leaf that `source` has at the same path and shape replaced."""
    flat_source = {optim.param_path(p): x for p, x in jax.tree_util.tree_leaves_with_path(source)}
    copied = 0

    def pick(path, x):
        nonlocal copied
        y = flat_source.get(optim.param_path(path))
        if y is not None and y.shape == x.shape:
            copied += 1
            return jax.device_put(y.astype(x.dtype), x.sharding)
        return x

    return jax.tree_util.tree_map_with_path(pick, target), copied
