"""Analytic FLOP counts of jitted programs, from their jaxprs (for throughput and "MFU" figures).

Counts the multiply-adds of convolutions and matrix products (2 FLOPs each) in a traced
function, recursing into nested jaxprs (jit, remat, custom derivatives, scans times their
length, the most expensive branch of a cond). Element-wise work (activations, norms, optimiser
updates) is ignored, as in the usual model-FLOPs convention. Counting the traced train step
itself gives the exact forward + backward count (the backward pass's transposed convolutions are
in its jaxpr), including what a 3x-forward rule of thumb gets wrong, such as the first layer's
input gradient, which is never computed.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax


def _conv_flops(eqn) -> int:
    lhs, rhs = (v.aval for v in eqn.invars[:2])
    dn = eqn.params["dimension_numbers"]
    out = eqn.outvars[0].aval
    # rhs_spec = (out feature dim, in feature dim, *spatial dims); the in-feature size is already
    # per group. With batch_group_count > 1 (weight gradients) each output element sums over the
    # batch / groups images instead, which is the same count: out * in * window * batch_share.
    rhs_in, spatial = dn.rhs_spec[1], dn.rhs_spec[2:]
    window = math.prod(rhs.shape[d] for d in spatial)
    per_output = rhs.shape[rhs_in] * window
    batch_groups = eqn.params.get("batch_group_count", 1)
    if batch_groups > 1:
        per_output *= lhs.shape[dn.lhs_spec[0]] // batch_groups
    return 2 * math.prod(out.shape) * per_output


def _dot_flops(eqn) -> int:
    lhs = eqn.invars[0].aval
    (lhs_contract, _), _ = eqn.params["dimension_numbers"]
    out = eqn.outvars[0].aval
    return 2 * math.prod(out.shape) * math.prod(lhs.shape[d] for d in lhs_contract)


def _sub_jaxprs(value):
    if hasattr(value, "eqns"):
        yield value
    elif hasattr(value, "jaxpr") and hasattr(value.jaxpr, "eqns"):
        yield value.jaxpr
    elif isinstance(value, (tuple, list)):
        for item in value:
            yield from _sub_jaxprs(item)


def jaxpr_flops(jaxpr) -> int:
    """FLOPs of conv_general_dilated and dot_general equations in a (closed) jaxpr."""
    jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
    total = 0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "conv_general_dilated":
            total += _conv_flops(eqn)
        elif name == "dot_general":
            total += _dot_flops(eqn)
        elif name == "cond":
            total += max(jaxpr_flops(b) for b in eqn.params["branches"])
        elif name == "while":
            raise ValueError("cannot count FLOPs through a while loop (unknown trip count)")
        else:
            multiplier = eqn.params.get("length", 1) if name == "scan" else 1
            for value in eqn.params.values():
                for sub in _sub_jaxprs(value):
                    total += multiplier * jaxpr_flops(sub)
    return total


def count_flops(fn: Callable, *args, **kwargs) -> int:
    """FLOPs of one call fn(*args, **kwargs), traced (never run) at the arguments' shapes."""
    return jaxpr_flops(jax.make_jaxpr(fn)(*args, **kwargs))
