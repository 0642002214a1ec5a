"""Training: the loss, a pure jitted train step, and the loop that reads like the algorithm.

`train_step(state, batch) -> (state, metrics)` is jitted once over one mesh of every device of
every process, with the batch sharded over the mesh and the state replicated (or fsdp-sharded).
The loop restores the latest checkpoint in its workdir (state + input position), so a preempted
run continues with exactly the batches and parameters an uninterrupted one would have seen.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import math
import shlex
import time
from collections.abc import Callable, Iterator

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax
import tqdm

from jaxseg import (
    checkpointing,
    config_checks,
    evaluation,
    logs,
    metric_writers,
    objective,
    optim,
    preemption,
    run_info,
    sharding,
    train_state,
)
from jaxseg import workdir as workdir_lib
from jaxseg.data import datasets, loading
from jaxseg.models import build_model, input_context
from jaxseg.train_state import TrainState


def _loss_fn(params, batch_stats, micro, dropout_rng, *, model, loss_cfg, num_classes):
    """The model's forward pass and `objective.segmentation_loss`; differentiated by train_step.

    Returns (loss sum, (counts, new batch_stats)).
    """
    variables = {"params": params}
    mutable = []
    if batch_stats:
        variables["batch_stats"] = batch_stats
        mutable = ["batch_stats"]
    logits, updates = model.apply(
        variables, micro["image"], train=True, rngs={"dropout": dropout_rng}, mutable=mutable
    )
    total, counts = objective.segmentation_loss(
        logits, micro, model=model, loss_cfg=loss_cfg, num_classes=num_classes
    )
    new_stats = updates.get("batch_stats", batch_stats) if mutable else batch_stats
    return total, (counts, new_stats)


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
        grads, batch_stats, total, counts = carry
        i, mb = inputs
        (t, (c, batch_stats)), g = grad_fn(
            state.params, batch_stats, mb, jax.random.fold_in(step_rng, i)
        )
        grads = jax.tree.map(jnp.add, grads, g)
        return (grads, batch_stats, total + t, jax.tree.map(jnp.add, counts, c)), None

    zeros = jax.tree.map(jnp.zeros_like, state.params)
    f0, i0 = jnp.zeros((), jnp.float32), jnp.zeros((), jnp.int32)
    init = (zeros, state.batch_stats, f0, {"norm": f0, "correct": i0, "scored": i0})
    if k == 1:
        carry, _ = accumulate(init, (0, jax.tree.map(lambda x: x[0], micro)))
    else:
        carry, _ = jax.lax.scan(accumulate, init, (jnp.arange(k), micro))
    grads, batch_stats, total, counts = carry
    # A batch with nothing scored gives a zero, finite step.
    counts["norm"] = jnp.maximum(counts["norm"], 1e-12)
    grads = jax.tree.map(lambda g: g / counts["norm"], grads)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    new_state = state.replace(
        step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state
    )
    metrics = objective.train_metrics(total, counts)
    metrics["grad_norm"] = optax.global_norm(grads)
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

    EXIT_FINISHED (0) once the run's latest checkpoint is at (or past) `config.total_steps`;
    EXIT_STOPPED_EARLY (75) when it stopped before (SIGTERM / preemption, max_steps_per_run)
    with a checkpoint to resume from, or SIGTERM came before training (e.g. while the data set
    was being built, which is then removed, not left half-done). Failures raise (Python's exit
    status 1).
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
    try:
        with preemption.sigterm_raises():
            train_and_evaluate(config, workdir)
    except preemption.Interrupted as e:
        logging.warning(
            "Stopped: %s; nothing half-written was kept. Exit status %d: rerun the same command "
            "to resume.",
            e,
            EXIT_STOPPED_EARLY,
        )
        return EXIT_STOPPED_EARLY
    with checkpointing.Checkpointer(workdir, read_only=True) as ckpt:
        latest = ckpt.latest_step()
    return EXIT_FINISHED if latest >= config.total_steps else EXIT_STOPPED_EARLY


def _recorded_data_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """`config` with what building the data recorded (image_folder's 16-bit range) filled in,
    so that config.json, and eval.py / predict.py reading it, use the range training used."""
    recorded = datasets.recorded_intensity_range(config.data)
    if recorded == tuple(config.data.folder.intensity_range):
        return config
    config = config.copy_and_resolve_references()
    config.data.folder.intensity_range = recorded
    return config


# Config sections that shape the checkpointed arrays (parameters, optimiser state; the class
# count is model.num_classes): listed first when a resume is refused.
_STATE_SECTIONS = ("model", "optim", "loss")


def _resume_refused(
    config: ml_collections.ConfigDict, workdir: str, error: checkpointing.CheckpointMismatchError
) -> ValueError:
    """The error for a resume whose checkpoint does not fit `config`'s state: the config keys
    that differ from the run's config.json (state-shaping sections first), what to do, and the
    first differing arrays. Nothing in the workdir has been written at this point."""
    run = workdir_lib.RunDir(workdir)
    changes = []
    try:
        # config.json holds the recorded 16-bit range; compare like with like.
        changes = workdir_lib.config_changes(run.read_config(), _recorded_data_config(config))
    except Exception as e:  # Advice only: it must never hide the mismatch itself.
        found = f"Its config could not be compared with {run.config_json}: {e}"
    else:
        changes.sort(key=lambda c: (_section_rank(c.key), c.key))
        found = f"This config differs from the run's {run.config_json} in:\n" + "\n".join(
            f"  {c}" for c in changes
        )
        if not changes:
            found = (
                f"This config equals the run's {run.config_json}: the code that builds the "
                "model or optimiser changed (another jaxseg version?)."
            )
    state_changes = [c for c in changes if _section_rank(c.key) < len(_STATE_SECTIONS)]
    back = " ".join(
        f"--config.{c.key}={_flag_value(c.old)}"
        for c in state_changes or changes
        if c.old is not workdir_lib.ABSENT
    )
    return ValueError(
        f"Cannot resume the run in {run.path}: its latest checkpoint {error.path} does not fit "
        f"the model and optimiser this config builds.\n{found}\n"
        f"To resume the run, rerun with its values{f' ({back})' if back else ''}. To train this "
        "config instead, give a new --workdir; to start that new run from this run's weights "
        f"where they still fit, add --config.init_from={run.path}.\n"
        f"Arrays that differ:\n{error.arrays(limit=3)}"
    )


def _section_rank(key: str) -> int:
    """A dotted config key's place in a listing: _STATE_SECTIONS in order, then the rest."""
    section = key.split(".")[0]
    return _STATE_SECTIONS.index(section) if section in _STATE_SECTIONS else len(_STATE_SECTIONS)


def _flag_value(value) -> str:
    """A config.json value as a `--config.key=...` command-line value, quoted for a shell."""
    return shlex.quote(str(tuple(value) if isinstance(value, list) else value))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains `config` in `workdir`, resuming from its latest checkpoint; returns final eval.

    Workdir: config.json, checkpoints/, metrics.jsonl, tensorboard/.
    """
    mesh = sharding.make_mesh(num_data=-1, num_fsdp=config.mesh.fsdp)
    logging.info("Devices: %s", sharding.describe_devices(mesh))
    spec = datasets.dataset_spec(config.data)  # Once per run; every consumer gets this one.
    config_checks.validate_config(config, mesh, spec)  # Before the data set is built.
    model = build_model(config.model)
    total_steps = config.total_steps
    tx, schedule = optim.make_optimizer(config.optim, total_steps)
    abstract, state_sharding, jit_init = train_state.create_state(config, model, tx, mesh, spec)

    # One writer per workdir; process 0 speaks for the job (the others share its workdir).
    primary = jax.process_index() == 0
    lock = workdir_lib.TrainLock(workdir) if primary else contextlib.nullcontext()
    with lock, contextlib.ExitStack() as cleanup:
        ckpt = checkpointing.Checkpointer(workdir, max_to_keep=config.checkpoint_keep)
        cleanup.enter_context(_saves_finished(ckpt))
        # The order of jaxseg.train_state's docstring: 1. resume, else 2. init_from (onto a
        # fresh init), else 3. the fresh init.
        try:
            state = ckpt.restore_latest_intact(abstract)
        except checkpointing.CheckpointMismatchError as e:
            raise _resume_refused(config, workdir, e) from e
        if state is not None:
            logging.info("Resumed from step %d in %s", int(jax.device_get(state.step)), workdir)
        else:
            fresh = jit_init(jax.random.key(config.seed))
            state = train_state.initial_weights(config, fresh, abstract)
        start_step = int(jax.device_get(state.step))
        if start_step > total_steps:
            # A finished run whose total_steps was lowered afterwards: nothing to train, and
            # not "stopped early" (a scheduler requeueing on exit status 75 would loop).
            logging.warning(
                "The latest checkpoint in %s is at step %d, past config.total_steps = %d: the "
                "run is finished; nothing was trained or changed. To evaluate that checkpoint "
                "run eval.py; to train it further raise config.total_steps.",
                workdir,
                start_step,
                total_steps,
            )
            return {}

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
        trainer = Trainer(config, p_train_step, train_iter, evaluator, writer, ckpt, bar, schedule)
        eval_metrics, state = trainer.run(state, start_step)
    if eval_metrics and int(jax.device_get(state.step)) == total_steps:
        path = evaluation.write_report(
            workdir,
            eval_metrics,
            step=total_steps,
            dataset=spec.name,
            split=config.data.eval_split,
            inference=evaluator.settings.mode,
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


@dataclasses.dataclass
class Trainer:
    """The training loop and what it needs, built once by `train_and_evaluate`.

    `run` reads like the algorithm: for each step, train; log every `log_every_steps`;
    evaluate every `eval_every_steps`; checkpoint periodically, after each evaluation and when
    asked to stop (SIGTERM / preemption, `max_steps_per_run`).
    """

    config: ml_collections.ConfigDict
    train_step: Callable  # jitted (state, batch) -> (state, metrics), `make_train_step`
    batches: Iterator  # augmented global batches from the start step on
    evaluator: evaluation.Evaluator
    writer: metric_writers.MetricWriter
    ckpt: checkpointing.Checkpointer
    bar: tqdm.tqdm
    schedule: optax.Schedule
    # Throughput bookkeeping: the step and time of the last log (or of the last eval / save,
    # which are not training throughput).
    _last_log: int = 0
    _t_log: float = 0.0
    _saved: int = 0  # the last step saved (or restored)

    def run(self, state: TrainState, start_step: int) -> tuple[dict, TrainState]:
        """Trains from `start_step` to `config.total_steps` or an early stop.

        Returns (the last evaluation's metrics, the final state).
        """
        config, total_steps = self.config, self.config.total_steps
        eval_metrics, train_metrics = {}, None
        self._last_log, self._t_log, self._saved = start_step, time.time(), start_step
        with preemption.PreemptionWatcher() as watcher:
            for step in range(start_step, total_steps):
                # A failing input (an unreadable example) or evaluation (a bad eval config)
                # must not cost the steps trained since the last checkpoint: save, then raise.
                with self._saved_on_error(step, state, train_metrics):
                    batch = next(self.batches)
                state, train_metrics = self._step(state, batch, step, first=step == start_step)
                done = step + 1
                if done % config.log_every_steps == 0 or done == total_steps:
                    self._log(done, train_metrics)
                metrics_for_ckpt = None
                if done % config.eval_every_steps == 0 or done == total_steps:
                    with self._saved_on_error(done, state, train_metrics):
                        eval_metrics = self._evaluate(done, state)
                    metrics_for_ckpt = {"miou": eval_metrics["mean_iou"]}
                stop = watcher.should_stop(step) or done - start_step == config.max_steps_per_run
                periodic = done % config.checkpoint_every_steps == 0 or done == total_steps
                if stop or periodic or metrics_for_ckpt is not None:
                    self._save(done, state, train_metrics, metrics_for_ckpt)
                if stop and done < total_steps:
                    logging.warning(
                        "Stopping early (preemption or max_steps_per_run) at step %d; exit "
                        "status %d; rerun the same command to resume.",
                        done,
                        EXIT_STOPPED_EARLY,
                    )
                    break
        return eval_metrics, state

    def _step(self, state: TrainState, batch: dict, step: int, *, first: bool):
        if not first:
            return self.train_step(state, batch)
        t0 = time.time()
        state, train_metrics = self.train_step(state, batch)
        jax.block_until_ready(train_metrics)
        logging.info("First train step (compile + run): %.1f s", time.time() - t0)
        self._last_log, self._t_log = step + 1, time.time()
        return state, train_metrics

    def _log(self, done: int, train_metrics: dict) -> None:
        clip = self.config.optim.grad_clip_norm
        scalars = _check_finite(jax.device_get(train_metrics), done, grad_clip_norm=clip)
        if done > self._last_log:  # Not on the first (compiling) step alone.
            elapsed = time.time() - self._t_log
            scalars["images_per_sec"] = (done - self._last_log) * self.config.batch_size / elapsed
        scalars["learning_rate"] = float(self.schedule(done - 1))
        self.writer.write(done, scalars, "train")
        self.bar.set_postfix(
            loss=f"{scalars['loss']:.4f}", img_s=f"{scalars.get('images_per_sec', 0.0):.1f}"
        )
        self._last_log, self._t_log = done, time.time()
        # Steps are dispatched asynchronously; only a log step knows they have finished.
        self.bar.update(done - self.bar.n)

    def _evaluate(self, done: int, state: TrainState) -> dict:
        eval_metrics = self.evaluator.evaluate(state)
        self.writer.write(done, _scalar_metrics(eval_metrics), "eval")
        self.writer.write_image(done, "predictions", self.evaluator.prediction_grid(state))
        logging.info("Step %d eval: mIoU %.4f", done, eval_metrics["mean_iou"])
        return eval_metrics

    def _save(self, done: int, state: TrainState, train_metrics: dict, metrics) -> None:
        clip = self.config.optim.grad_clip_norm
        _check_finite(jax.device_get(train_metrics), done, grad_clip_norm=clip)
        self.ckpt.save(done, state, metrics=metrics)
        # Evaluation and checkpoint time is not training throughput.
        self._last_log, self._t_log, self._saved = done, time.time(), done

    @contextlib.contextmanager
    def _saved_on_error(self, step: int, state: TrainState, train_metrics: dict | None):
        """Within: an exception first saves `state` (at `step`, finite, not yet saved) as a
        checkpoint without metrics, then goes on; a failing save is logged, not raised over it."""
        try:
            yield
        except Exception:
            if step > self._saved and train_metrics is not None:
                try:
                    self._save(step, state, train_metrics, None)
                    logging.warning(
                        "Saved checkpoint %d before stopping on the error below: the steps "
                        "since the last checkpoint are kept.",
                        step,
                    )
                except Exception:
                    logging.exception("Could not save step %d before stopping:", step)
            raise


@contextlib.contextmanager
def _saves_finished(ckpt: checkpointing.Checkpointer) -> Iterator[None]:
    """On every exit path (exception, NaN, Ctrl-C) waits for the in-flight save: a finished
    save of a finite state is good data, an abandoned one is lost. A save that failed (a full
    disk) raises, naming the directory, unless an error is already on its way out (then it is
    logged, not masking that error): the run must not go on to report a step it did not keep."""
    try:
        yield
    except BaseException:
        _close_quietly(ckpt)
        raise
    ckpt.close()


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
