"""Learning-rate schedules and optimisers, built from optax and driven by `config.optim`.

Everything here is a function of the optimiser step (the number of updates applied so far), so
the learning rate is a pure function of the step and a resumed run continues its schedule from
the `count` stored in the restored `opt_state`. Durations (`warmup_steps`, `step_boundaries`,
`total_steps`) are global optimiser steps, never epochs; warmup counts as part of `total_steps`.

The update for one step is, in order (see `make_optimizer`):

1. parameters whose '/'-joined path matches a regex in `optim.frozen` get a zero update and no
   optimiser state (e.g. a frozen backbone, or FCN's fixed bilinear upsampling);
2. for the rest: global-norm gradient clipping over the trainable gradients only;
3. weight decay added to the gradient when `weight_decay_mode == "coupled"` (classic L2, as in
   Caffe and the FCN / U-Net papers: it then passes through momentum or Adam's normalisation);
4. the optimiser's scaling: SGD momentum (Nesterov optional) or Adam's moment estimates;
5. weight decay added after that when `weight_decay_mode == "decoupled"` (AdamW / SGDW, Loshchilov
   & Hutter 2019); like `optax.adamw` it is multiplied by the scheduled learning rate below, so
   each step shrinks a weight by `lr(step) * weight_decay * w`;
6. the scheduled learning rate, then per-group multipliers from `optim.lr_multipliers`
   (e.g. 2x for biases as in the FCN reference release).

Weight decay never touches biases or normalisation parameters (`decay_mask`).

Config fields read (all under `config.optim`; defaults live in `configs/base.py`):
  optimizer: "sgd" | "adamw".      learning_rate: peak (base) learning rate, float.
  momentum, nesterov: SGD only.     b1, b2, eps: AdamW only.
  weight_decay: float, 0 = off.     weight_decay_mode: "coupled" | "decoupled".
  grad_clip_norm: float, 0 = off.   schedule: "constant" | "step" | "poly" | "cosine".
  warmup_steps: int, 0 = off.       step_boundaries: tuple[int, ...]; step_factor: float.
  poly_power: float.                cosine_end_factor: final lr as a fraction of the peak.
  lr_multipliers: tuple of (regex, factor) pairs.   frozen: tuple of regexes.
"""

import math
import re
from collections.abc import Callable, Sequence
from typing import Any

import jax
import ml_collections
import optax

PyTree = Any


# --- Schedules --------------------------------------------------------------------------------


def _constant(cfg: ml_collections.ConfigDict, peak: float, decay_steps: int) -> optax.Schedule:
    del cfg, decay_steps
    return optax.constant_schedule(peak)


def _step(cfg: ml_collections.ConfigDict, peak: float, decay_steps: int) -> optax.Schedule:
    # Boundaries arrive already shifted to be relative to the end of warmup (see make_schedule).
    del decay_steps
    factor = float(cfg.step_factor)
    return optax.piecewise_constant_schedule(peak, {int(b): factor for b in cfg.step_boundaries})


def _poly(cfg: ml_collections.ConfigDict, peak: float, decay_steps: int) -> optax.Schedule:
    # DeepLab's "poly": lr * (1 - t / T) ** power, reaching exactly 0 at total_steps.
    return optax.polynomial_schedule(
        init_value=peak, end_value=0.0, power=float(cfg.poly_power), transition_steps=decay_steps
    )


def _cosine(cfg: ml_collections.ConfigDict, peak: float, decay_steps: int) -> optax.Schedule:
    return optax.cosine_decay_schedule(
        init_value=peak, decay_steps=decay_steps, alpha=float(cfg.cosine_end_factor)
    )


# Each builder gets (cfg, peak learning rate, steps after warmup) and returns the post-warmup part.
SCHEDULES: dict[str, Callable[[ml_collections.ConfigDict, float, int], optax.Schedule]] = {
    "constant": _constant,
    "step": _step,
    "poly": _poly,
    "cosine": _cosine,
}


def make_schedule(cfg: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
    """Returns the learning rate as a pure function of the optimiser step.

    Args:
      cfg: the `config.optim` section (fields listed in the module docstring).
      total_steps: optimiser steps in the whole run, warmup included. "poly" reaches 0 and
        "cosine" reaches `cosine_end_factor * learning_rate` exactly at this step and stay there.

    Returns:
      `schedule(step) -> lr`, step an int (or int array), lr a float32 scalar. With
      `warmup_steps = W > 0` the rate rises linearly from 0 at step 0 to `learning_rate` at step
      W, then the named schedule runs over the remaining `total_steps - W` steps. For "step",
      `step_boundaries` are global steps (like everything else), each multiplying the rate by
      `step_factor` from that step on.

    Raises:
      ValueError: unknown `optim.schedule` (the message lists valid names), or durations that
        do not fit in `total_steps`.
    """
    name = cfg.schedule
    if name not in SCHEDULES:
        raise ValueError(
            f"config.optim.schedule={name!r} is not a known schedule; "
            f"valid names: {sorted(SCHEDULES)}"
        )
    total_steps = int(total_steps)
    warmup = int(cfg.warmup_steps)
    peak = float(cfg.learning_rate)
    if total_steps <= 0:
        raise ValueError(f"total_steps must be positive, got {total_steps}")
    if not 0 <= warmup < total_steps:
        raise ValueError(
            f"config.optim.warmup_steps={warmup} must be in [0, total_steps={total_steps})"
        )
    if name == "step":
        bounds = [int(b) for b in cfg.step_boundaries]
        if bounds != sorted(set(bounds)) or any(not warmup < b < total_steps for b in bounds):
            raise ValueError(
                f"config.optim.step_boundaries={tuple(cfg.step_boundaries)} must be strictly "
                f"increasing global steps in (warmup_steps={warmup}, total_steps={total_steps})"
            )
        # join_schedules hands the second schedule `step - warmup`, so shift absolute boundaries.
        cfg = ml_collections.ConfigDict(
            {"step_factor": cfg.step_factor, "step_boundaries": tuple(b - warmup for b in bounds)}
        )
    main = SCHEDULES[name](cfg, peak, total_steps - warmup)
    if warmup == 0:
        return main
    ramp = optax.linear_schedule(init_value=0.0, end_value=peak, transition_steps=warmup)
    return optax.join_schedules([ramp, main], boundaries=[warmup])


# --- Parameter groups -------------------------------------------------------------------------


def param_path(key_path: Sequence[Any]) -> str:
    """'/'-joined names of a pytree key path, e.g. 'Encoder_0/Conv_0/kernel'."""
    return jax.tree_util.keystr(tuple(key_path), simple=True, separator="/")


# Flax names its norm layers BatchNorm_0 / LayerNorm_0 / GroupNorm_0; hand-named ones are often
# "bn", "bn1", "conv1_bn". "bn" must stand alone as a word so that e.g. "subnet" is not caught.
_NORM_MODULE = re.compile(r"norm|(?<![a-z])bn(?![a-z])")
_NO_DECAY_LEAVES = frozenset({"bias", "scale"})


def _decays(key_path: Sequence[Any]) -> bool:
    *modules, leaf = param_path(key_path).split("/")
    if leaf in _NO_DECAY_LEAVES:
        return False
    return not any(_NORM_MODULE.search(module.lower()) for module in modules)


def decay_mask(params: PyTree) -> PyTree:
    """Which parameters weight decay applies to.

    Args:
      params: a parameter pytree (nested dicts of arrays, as from `model.init(...)["params"]`).

    Returns:
      The same tree structure with a Python bool per leaf: False for a leaf named "bias" or
      "scale" and for every leaf of a module whose name contains "norm" (any case, e.g.
      BatchNorm_0, GroupNorm_3) or the word "bn" (bn, bn1, conv1_bn); True otherwise (conv and
      dense kernels). Decaying biases or norm scales only pulls activations towards zero
      without regularising the function's complexity, so the FCN release and most recipes skip
      them.
    """
    return jax.tree_util.tree_map_with_path(lambda path, _: _decays(path), params)


def _compile_patterns(key: str, patterns: Sequence[str]) -> list[re.Pattern[str]]:
    compiled = []
    for pattern in patterns:
        try:
            compiled.append(re.compile(pattern))
        except re.error as e:
            raise ValueError(f"config.optim.{key}: bad regex {pattern!r}: {e}") from e
    return compiled


def _check_all_match(key: str, patterns: Sequence[re.Pattern[str]], paths: list[str]) -> None:
    # A typo in a freeze or multiplier regex would otherwise silently train everything alike.
    for pattern in patterns:
        if not any(pattern.search(p) for p in paths):
            raise ValueError(
                f"config.optim.{key}: regex {pattern.pattern!r} matches no trainable parameter; "
                f"parameter paths look like {paths[:4]}"
            )


def _paths(tree: PyTree) -> list[str]:
    return [param_path(path) for path, _ in jax.tree_util.tree_leaves_with_path(tree)]


def _frozen_labels(patterns: list[re.Pattern[str]]) -> Callable[[PyTree], PyTree]:
    def labels(params: PyTree) -> PyTree:
        _check_all_match("frozen", patterns, _paths(params))
        return jax.tree_util.tree_map_with_path(
            lambda path, _: (
                "frozen" if any(p.search(param_path(path)) for p in patterns) else "trainable"
            ),
            params,
        )

    return labels


def _multiplier_labels(patterns: list[re.Pattern[str]]) -> Callable[[PyTree], PyTree]:
    # Called on the trainable subtree only: frozen leaves arrive as optax.MaskedNode, which has
    # no leaves, so tree_map_with_path passes them through untouched.
    def label(path: Sequence[Any]) -> str:
        name = param_path(path)
        # The first matching pattern wins, so an ordered tuple in the config is unambiguous.
        for i, pattern in enumerate(patterns):
            if pattern.search(name):
                return f"group_{i}"
        return "default"

    def labels(params: PyTree) -> PyTree:
        _check_all_match("lr_multipliers", patterns, _paths(params))
        return jax.tree_util.tree_map_with_path(lambda path, _: label(path), params)

    return labels


# --- Optimisers -------------------------------------------------------------------------------


def _sgd(cfg: ml_collections.ConfigDict) -> optax.GradientTransformation:
    # optax's trace keeps v = g + m * v and steps by lr * v; Caffe keeps v = m * v + lr * g. The
    # two agree exactly for a constant lr and differ only while the lr is changing.
    return optax.trace(decay=float(cfg.momentum), nesterov=bool(cfg.nesterov))


def _adamw(cfg: ml_collections.ConfigDict) -> optax.GradientTransformation:
    # "adamw" names Adam's scaling; the decay is decoupled only if weight_decay_mode says so.
    return optax.scale_by_adam(b1=float(cfg.b1), b2=float(cfg.b2), eps=float(cfg.eps))


OPTIMIZERS: dict[str, Callable[[ml_collections.ConfigDict], optax.GradientTransformation]] = {
    "sgd": _sgd,
    "adamw": _adamw,
}
WEIGHT_DECAY_MODES = ("coupled", "decoupled")


# (key, lowest, highest, whether each bound is allowed, which optimizer/schedule reads the key;
# None = always). Only the keys the chosen optimizer and schedule read are checked, so an unused
# field never stops a run.
_RANGES = (
    ("learning_rate", 0.0, math.inf, (False, False), None),
    ("weight_decay", 0.0, math.inf, (True, False), None),
    ("grad_clip_norm", 0.0, math.inf, (True, False), None),
    ("momentum", 0.0, 1.0, (True, False), "sgd"),
    ("b1", 0.0, 1.0, (True, False), "adamw"),
    ("b2", 0.0, 1.0, (True, False), "adamw"),
    ("eps", 0.0, math.inf, (False, False), "adamw"),
    ("step_factor", 0.0, math.inf, (False, False), "step"),
    ("poly_power", 0.0, math.inf, (False, False), "poly"),
    ("cosine_end_factor", 0.0, 1.0, (True, True), "cosine"),
)


def _check_values(cfg: ml_collections.ConfigDict) -> None:
    """Every number of `config.optim` that this optimizer and schedule read is finite and in
    range, and the per-parameter lists are well formed; errors name the key.

    A negative learning rate would train by gradient ascent, and a NaN one only show up as a
    NaN loss; both stop here, before anything is built.
    """
    for key, low, high, (low_ok, high_ok), used_by in _RANGES:
        if used_by not in (None, cfg.optimizer, cfg.schedule):
            continue
        value = cfg[key]
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = math.nan
        inside = (low <= number if low_ok else low < number) and (
            number <= high if high_ok else number < high
        )
        if not (math.isfinite(number) and inside):
            bounds = f"{'[' if low_ok else '('}{low:g}, {high:g}{']' if high_ok else ')'}"
            raise ValueError(
                f"config.optim.{key}={value!r}: must be a finite number in {bounds}"
                + (f" ({used_by} reads it)" if used_by else "")
            )
    multipliers = tuple(cfg.lr_multipliers)
    pairs = all(
        isinstance(m, (tuple, list)) and len(m) == 2 and isinstance(m[0], str) for m in multipliers
    )
    factors = [m[1] for m in multipliers] if pairs else []
    if not pairs or not all(_positive_number(f) for f in factors):
        raise ValueError(
            f"config.optim.lr_multipliers={multipliers}: must be ((regex, factor), ...) pairs "
            "with finite factors > 0; put parameters that should not train in "
            "config.optim.frozen"
        )
    if not all(isinstance(p, str) for p in cfg.frozen):
        raise ValueError(f"config.optim.frozen={tuple(cfg.frozen)}: must be regex strings")


def _positive_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < math.inf


def make_optimizer(
    cfg: ml_collections.ConfigDict, total_steps: int
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """Builds the optax transformation described in the module docstring.

    Args:
      cfg: the `config.optim` section.
      total_steps: optimiser steps in the run, for the schedule (see `make_schedule`).

    Returns:
      (tx, schedule). tx: a GradientTransformation for parameter pytrees; `update` needs
      `params` (weight decay reads them). Its state holds the step count that drives the
      schedule, so checkpointing `opt_state` is enough to resume the schedule. `init` raises
      ValueError if a regex in `frozen` or `lr_multipliers` matches no parameter path.
      schedule: step -> the learning rate the update at that step uses (before
      `lr_multipliers`), for logging.

    Raises:
      ValueError: unknown `optimizer`, `schedule` or `weight_decay_mode` (the message lists the
        valid names); a number this optimizer or schedule reads that is not finite or out of
        its range (`learning_rate` > 0, `momentum`/`b1`/`b2` in [0, 1), `eps` > 0,
        `weight_decay`/`grad_clip_norm` >= 0, `step_factor`/`poly_power` > 0,
        `cosine_end_factor` in [0, 1]); durations that do not fit in `total_steps`; bad regexes;
        or multipliers that are not (regex, factor > 0) pairs. train_lib calls this at start-up,
        before the data set or the model is built.
    """
    if cfg.optimizer not in OPTIMIZERS:
        raise ValueError(
            f"config.optim.optimizer={cfg.optimizer!r} is not a known optimizer; "
            f"valid names: {sorted(OPTIMIZERS)}"
        )
    if cfg.weight_decay_mode not in WEIGHT_DECAY_MODES:
        raise ValueError(
            f"config.optim.weight_decay_mode={cfg.weight_decay_mode!r} is not valid; "
            f"valid names: {list(WEIGHT_DECAY_MODES)}"
        )
    _check_values(cfg)
    schedule = make_schedule(cfg, total_steps)
    weight_decay = float(cfg.weight_decay)
    clip = float(cfg.grad_clip_norm)

    multiplier_patterns = _compile_patterns("lr_multipliers", [p for p, _ in cfg.lr_multipliers])
    factors = [float(f) for _, f in cfg.lr_multipliers]
    groups = {f"group_{i}": optax.scale(f) for i, f in enumerate(factors)}
    groups["default"] = optax.identity()

    decay = optax.add_decayed_weights(weight_decay, mask=decay_mask)
    no_op = optax.identity()
    trainable = optax.chain(
        optax.clip_by_global_norm(clip) if clip > 0 else no_op,
        decay if weight_decay > 0 and cfg.weight_decay_mode == "coupled" else no_op,
        OPTIMIZERS[cfg.optimizer](cfg),
        decay if weight_decay > 0 and cfg.weight_decay_mode == "decoupled" else no_op,
        optax.scale_by_learning_rate(schedule),
        optax.multi_transform(groups, _multiplier_labels(multiplier_patterns)),
    )
    # Frozen parameters sit outside `trainable`: no momentum/Adam state, no decay, and their
    # gradients do not count towards the clipping norm.
    frozen_patterns = _compile_patterns("frozen", list(cfg.frozen))
    tx = optax.multi_transform(
        {"trainable": trainable, "frozen": optax.set_to_zero()}, _frozen_labels(frozen_patterns)
    )
    return tx, schedule
