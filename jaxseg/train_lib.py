"""Training: the loss, a pure jitted train step, and the loop that reads like the algorithm.

`train_step(state, batch) -> (state, metrics)` is jitted once over one mesh of every device of
every process, with the batch sharded over the mesh and the state replicated (or fsdp-sharded).
The loop restores the latest checkpoint in its workdir (state + input position), so a preempted
run continues with exactly the batches and parameters an uninterrupted one would have seen.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import time
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax
import tqdm

from jaxseg import (
    checkpointing,
    evaluation,
    logs,
    losses,
    metric_writers,
    metrics,
    optim,
    preemption,
    run_info,
    sharding,
    train_state,
)
from jaxseg import workdir as workdir_lib
from jaxseg.data import datasets, loading
from jaxseg.models import build_model, input_context
from jaxseg.models.layers import center_crop
from jaxseg.train_state import TrainState


def _loss_fn(params, batch_stats, micro, dropout_rng, *, model, loss_cfg, num_classes):
    """Returns (weighted loss sum, (normaliser, new batch_stats, logits-derived stats))."""
    variables = {"params": params}
    mutable = []
    if batch_stats:
        variables["batch_stats"] = batch_stats
        mutable = ["batch_stats"]
    logits, updates = model.apply(
        variables, micro["image"], train=True, rngs={"dropout": dropout_rng}, mutable=mutable
    )
    # A valid-convolution U-Net predicts the centre of its input: score the labels there.
    out_hw = [model.output_size(s) for s in micro["label"].shape[1:3]]
    labels = center_crop(micro["label"][..., None], *out_hw)[..., 0]
    weights = micro.get("weight")
    if weights is not None:
        weights = center_crop(weights[..., None], *out_hw)[..., 0]
    class_weights = jnp.asarray(loss_cfg.class_weights) if loss_cfg.class_weights else None
    ce, norm = losses.cross_entropy(
        logits,
        labels,
        class_weights=class_weights,
        pixel_weights=weights,
        valid=micro.get("valid"),
        normalize=loss_cfg.normalize,
    )
    total = ce * norm
    if loss_cfg.dice_weight:
        dice = losses.dice_loss(logits, labels, valid=micro.get("valid"))
        total = total + loss_cfg.dice_weight * dice * norm
    scored_mask = metrics.pixel_mask(labels, num_classes, micro.get("valid"))
    correct = jnp.sum((jnp.argmax(logits, -1) == labels) & scored_mask)
    scored = jnp.sum(scored_mask)
    new_stats = updates.get("batch_stats", batch_stats) if mutable else batch_stats
    return total, (norm, new_stats, correct, scored)


def train_step(
    state: TrainState,
    batch: dict[str, jax.Array],
    *,
    model: nn.Module,
    tx: optax.GradientTransformation,
    loss_cfg: ml_collections.ConfigDict,
    num_classes: int,
    grad_accum_steps: int = 1,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimiser step on a global batch; pure, meant to be jitted once.

    With grad_accum_steps = k the batch is split into k micro-batches whose gradients are
    summed with the loss normalisers, so the update equals one step on the whole batch (for
    models without BatchNorm; BatchNorm sees k smaller batches, as in any accumulation scheme).

    Args:
      batch: {"image": [B, H, W, C] float32, "label": [B, H, W] int32 (255 = ignore),
        optional "weight": [B, H, W] float32 pixel weights}.

    Returns:
      The new state and device scalars: loss, pixel accuracy, gradient norm, learning-rate
      independent (the loop logs the schedule itself).
    """
    step_rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    grad_fn = jax.value_and_grad(
        functools.partial(_loss_fn, model=model, loss_cfg=loss_cfg, num_classes=num_classes),
        has_aux=True,
    )
    k = grad_accum_steps
    b = batch["label"].shape[0]
    if b % k:
        raise ValueError(f"batch size {b} is not divisible by grad_accum_steps {k}")
    # Micro-batch i takes rows i, i+k, ...: [B] -> [B/k, k] keeps every device's rows local.
    micro = jax.tree.map(lambda x: jnp.moveaxis(x.reshape(b // k, k, *x.shape[1:]), 1, 0), batch)

    def accumulate(carry, inputs):
        grads, batch_stats, total, norm, correct, scored = carry
        i, mb = inputs
        (t, (n, batch_stats, c, s)), g = grad_fn(
            state.params, batch_stats, mb, jax.random.fold_in(step_rng, i)
        )
        grads = jax.tree.map(jnp.add, grads, g)
        return (grads, batch_stats, total + t, norm + n, correct + c, scored + s), None

    zeros = jax.tree.map(jnp.zeros_like, state.params)
    f0, i0 = jnp.zeros((), jnp.float32), jnp.zeros((), jnp.int32)
    init = (zeros, state.batch_stats, f0, f0, i0, i0)
    if k == 1:
        carry, _ = accumulate(init, (0, jax.tree.map(lambda x: x[0], micro)))
    else:
        carry, _ = jax.lax.scan(accumulate, init, (jnp.arange(k), micro))
    grads, batch_stats, total, norm, correct, scored = carry
    norm = jnp.maximum(norm, 1e-12)  # A batch with nothing scored gives a zero, finite step.
    grads = jax.tree.map(lambda g: g / norm, grads)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    new_state = state.replace(
        step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state
    )
    metrics = {
        "loss": total / norm,
        "pixel_accuracy": correct / jnp.maximum(scored, 1),
        "grad_norm": optax.global_norm(grads),
    }
    return new_state, metrics


def make_train_step(config, model, tx, mesh, state_sharding) -> Callable:
    """The jitted train step with explicit shardings and the state donated."""
    step = functools.partial(
        train_step,
        model=model,
        tx=tx,
        loss_cfg=config.loss,
        num_classes=config.model.num_classes,
        grad_accum_steps=config.grad_accum_steps,
    )
    return jax.jit(
        step,
        in_shardings=(state_sharding, sharding.batch_sharding(mesh)),
        out_shardings=(state_sharding, sharding.replicated_sharding(mesh)),
        donate_argnums=0,
    )


class NonFiniteLossError(RuntimeError):
    """Raised when the training loss becomes NaN or infinite."""


# train.py's exit status. 75 is EX_TEMPFAIL of sysexits.h ("try again later"): a scheduler that
# requeues on it resumes the run from its checkpoint; any other non-zero status is a failure.
EXIT_FINISHED = 0
EXIT_STOPPED_EARLY = 75


def run(config: ml_collections.ConfigDict, workdir: str) -> int:
    """train.py's one call: trains, then returns the exit status.

    EXIT_FINISHED (0) once the run's latest checkpoint is at `config.total_steps`;
    EXIT_STOPPED_EARLY (75) when it stopped before (SIGTERM / preemption, max_steps_per_run)
    with a checkpoint to resume from. Failures raise (Python's exit status 1).
    """
    run_dir = workdir_lib.RunDir(workdir)
    log_file = run_dir.log_file(jax.process_index())  # None for gs://: logging appends.
    logs.route_library_logs(log_file)
    logging.info(
        "Config: %s on %s, %d steps of batch %d; in full in %s, library logs in %s",
        config.model.name,
        config.data.name,
        config.total_steps,
        config.batch_size,
        run_dir.config_json,
        log_file or "(none: remote workdir)",
    )
    train_and_evaluate(config, workdir)
    with checkpointing.Checkpointer(workdir, read_only=True) as ckpt:
        latest = ckpt.latest_step()
    return EXIT_FINISHED if latest == config.total_steps else EXIT_STOPPED_EARLY


def validate_config(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> None:
    """Start-up checks of what would otherwise fail late or obscurely; errors name the key."""
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


def _recorded_data_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """`config` with what building the data recorded (image_folder's 16-bit range) filled in,
    so that config.json, and eval.py / predict.py reading it, use the range training used."""
    recorded = datasets.recorded_intensity_range(config.data)
    if recorded == tuple(config.data.folder.intensity_range):
        return config
    config = config.copy_and_resolve_references()
    config.data.folder.intensity_range = recorded
    return config


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains `config` in `workdir`, resuming from its latest checkpoint; returns final eval.

    Workdir: config.json, checkpoints/, metrics.jsonl, tensorboard/.
    """
    mesh = sharding.make_mesh(num_data=-1, num_fsdp=config.mesh.fsdp)
    logging.info("Devices: %s", sharding.describe_devices(mesh))
    spec = datasets.dataset_spec(config.data)  # Once per run; every consumer gets this one.
    if config.model.num_classes != spec.num_classes:
        raise ValueError(
            f"config.model.num_classes = {config.model.num_classes} but data set "
            f"{spec.name!r} has {spec.num_classes} classes"
        )
    validate_config(config, mesh)
    model = build_model(config.model)
    total_steps = config.total_steps
    tx, schedule = optim.make_optimizer(config.optim, total_steps)
    abstract, state_sharding, jit_init = train_state.create_state(config, model, tx, mesh, spec)

    # One writer per workdir; process 0 speaks for the job (the others share its workdir).
    primary = jax.process_index() == 0
    lock = workdir_lib.TrainLock(workdir) if primary else contextlib.nullcontext()
    with lock, contextlib.ExitStack() as cleanup:
        ckpt = checkpointing.Checkpointer(workdir, max_to_keep=config.checkpoint_keep)
        # On every exit path (exception, NaN, Ctrl-C) wait for the in-flight save: a finished
        # save of a finite state is good data, an abandoned one is lost.
        cleanup.callback(_close_quietly, ckpt)
        # The order of jaxseg.train_state's docstring: 1. resume, else 2. init_from (onto a
        # fresh init), else 3. the fresh init.
        state = ckpt.restore_latest_intact(abstract)
        if state is not None:
            logging.info("Resumed from step %d in %s", int(jax.device_get(state.step)), workdir)
        else:
            fresh = jit_init(jax.random.key(config.seed))
            state = train_state.initial_weights(config, fresh, abstract)
        start_step = int(jax.device_get(state.step))

        p_train_step = make_train_step(config, model, tx, mesh, state_sharding)
        batch_sharding = sharding.batch_sharding(mesh)
        train_iter = loading.make_train_iterator(
            config.data,
            spec=spec,
            global_batch_size=config.batch_size,
            seed=config.seed,
            start_step=start_step,
            # A valid U-Net scores only its tile's centre: mirror-pad images by its context.
            context=input_context(model, tuple(config.data.crop_size)),
            sharding=batch_sharding,
        )
        config = _recorded_data_config(config)
        workdir_lib.write_config(workdir, config)
        # Provenance of this invocation: config, versions, commit, devices, global batch.
        run_info.record(workdir, config, mesh, abstract.params, start_step)
        evaluator = evaluation.Evaluator(config, model, mesh, spec)
        # Records past start_step came from steps this resumed run repeats: dropped.
        writer = metric_writers.MetricWriter(workdir, resume_step=start_step)
        cleanup.callback(writer.close)
        bar = tqdm.tqdm(
            total=total_steps, initial=start_step, disable=not primary, dynamic_ncols=True
        )
        cleanup.callback(bar.close)
        eval_metrics, state = _train_loop(
            config, state, start_step, p_train_step, train_iter, batch_sharding, evaluator,
            writer, ckpt, bar, schedule,
        )  # fmt: skip
    if eval_metrics and int(jax.device_get(state.step)) == total_steps:
        path = evaluation.write_report(
            workdir,
            eval_metrics,
            step=total_steps,
            dataset=spec.name,
            split=config.data.eval_split,
            inference=config.eval.mode,
            checkpoint="final",
        )
        figures = evaluation.write_figures(workdir, evaluator, state, eval_metrics)
        logging.info("Final eval: mIoU %.4f; report in %s", eval_metrics["mean_iou"], path)
        if figures:
            print(
                f"Final validation mIoU {eval_metrics['mean_iou']:.4f}. Report: {path}; figures: "
                + ", ".join(figures.values()),
                flush=True,
            )
    return eval_metrics


def _train_loop(
    config, state, start_step, p_train_step, train_iter, batch_sharding, evaluator, writer, ckpt,
    bar, schedule,
):  # fmt: skip
    """for step in range(start_step, total_steps): step, log, evaluate, checkpoint, stop early.

    Returns (the last evaluation's metrics, the final state).
    """
    total_steps = config.total_steps
    eval_metrics, last_log, t_log, compile_logged = {}, start_step, time.time(), False
    clip = config.optim.grad_clip_norm
    with preemption.PreemptionWatcher() as watcher:
        for step in range(start_step, total_steps):
            batch = next(train_iter)
            if not compile_logged:
                t0 = time.time()
            state, train_metrics = p_train_step(state, batch)
            if not compile_logged:
                jax.block_until_ready(train_metrics)
                logging.info("First train step (compile + run): %.1f s", time.time() - t0)
                compile_logged, t_log, last_log = True, time.time(), step + 1
            done = step + 1
            if done % config.log_every_steps == 0 or done == total_steps:
                scalars = _check_finite(jax.device_get(train_metrics), done, grad_clip_norm=clip)
                if done > last_log:  # Not on the first (compiling) step alone.
                    elapsed = time.time() - t_log
                    scalars["images_per_sec"] = (done - last_log) * config.batch_size / elapsed
                scalars["learning_rate"] = float(schedule(step))
                writer.write(done, scalars, "train")
                bar.set_postfix(
                    loss=f"{scalars['loss']:.4f}", img_s=f"{scalars.get('images_per_sec', 0.0):.1f}"
                )
                last_log, t_log = done, time.time()
                # Steps are dispatched asynchronously; only a log step knows they have finished.
                bar.update(done - bar.n)
            metrics_for_ckpt = None
            if done % config.eval_every_steps == 0 or done == total_steps:
                eval_metrics = evaluator.evaluate(state)
                writer.write(done, _scalar_metrics(eval_metrics), "eval")
                writer.write_image(done, "predictions", evaluator.prediction_grid(state))
                logging.info("Step %d eval: mIoU %.4f", done, eval_metrics["mean_iou"])
                metrics_for_ckpt = {"miou": eval_metrics["mean_iou"]}
            stop = watcher.should_stop(step) or done - start_step == config.max_steps_per_run
            periodic = done % config.checkpoint_every_steps == 0 or done == total_steps
            if stop or periodic or metrics_for_ckpt is not None:
                _check_finite(jax.device_get(train_metrics), done, grad_clip_norm=clip)
                ckpt.save(done, state, metrics=metrics_for_ckpt)
                # Evaluation and checkpoint time is not training throughput.
                last_log, t_log = done, time.time()
            if stop and done < total_steps:
                logging.warning(
                    "Stopping early (preemption or max_steps_per_run) at step %d; exit status "
                    "%d; rerun the same command to resume.",
                    done,
                    EXIT_STOPPED_EARLY,
                )
                break
    return eval_metrics, state


def _close_quietly(ckpt: checkpointing.Checkpointer) -> None:
    """Closes `ckpt` (waiting for its save) without masking an exception already in flight."""
    try:
        ckpt.close()
    except Exception:
        logging.exception("While waiting for the last checkpoint save in %s:", ckpt.directory)


def _check_finite(metrics: dict, step: int, *, grad_clip_norm: float = 0.0) -> dict:
    scalars = {k: float(v) for k, v in metrics.items()}
    if not math.isfinite(scalars["loss"]):
        if grad_clip_norm > 0:
            hint = (
                f"Gradients are already clipped (optim.grad_clip_norm = {grad_clip_norm}): lower "
                "optim.learning_rate, lengthen optim.warmup_steps, or look for bad inputs."
            )
        else:
            hint = "Lower optim.learning_rate or enable optim.grad_clip_norm (e.g. 1.0)."
        raise NonFiniteLossError(
            f"loss is {scalars['loss']} at step {step}; stopping without saving, so the last "
            f"checkpoint (from before the divergence) stays intact. {hint}"
        )
    return scalars


def _scalar_metrics(metrics: dict) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
