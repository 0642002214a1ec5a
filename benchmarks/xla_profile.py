"""Reading an XLA profile: executed ops with their device time, matched to the compiled HLO.

`device_op_times` sums the events of a `jax.profiler.trace` by op; `hlo_instructions` maps each
op name to its opcode and the JAX operation it came from (HLO metadata); `layer_of` turns that
into the Flax module path. Used by benchmarks/profile_step.py; no jax at import.
"""

from __future__ import annotations

import collections
import re

# `[ROOT] [%]name = <shape> opcode(operands), attributes..., metadata={op_name="..." ...}`
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(\(.*?\)|\S+)\s+([\w\-]+)\((.*)$")
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_KIND = re.compile(r"kind=(k\w+)")
_TARGET = re.compile(r'custom_call_target="([^"]*)"')


def hlo_instructions(hlo_text: str) -> dict[str, dict[str, str]]:
    """{instruction name: {"opcode": ..., "op_name": ...}} of every instruction in HLO text.

    For a fusion the opcode is `fusion:<kind>`; for a custom call, `custom-call:<target>`.
    """
    table = {}
    for line in hlo_text.splitlines():
        match = _INSTRUCTION.match(line)
        if not match:
            continue
        name, _, opcode, rest = match.groups()
        if opcode == "fusion" and (kind := _KIND.search(rest)):
            opcode = f"fusion:{kind.group(1)}"
        elif opcode == "custom-call" and (target := _TARGET.search(rest)):
            opcode = f"custom-call:{target.group(1)}"
        op_name = _OP_NAME.search(rest)
        table[name] = {"opcode": opcode, "op_name": op_name.group(1) if op_name else ""}
    return table


def layer_of(op_name: str) -> str:
    """The Flax module path in a JAX op name, marked `(bwd)` for the backward pass.

    'jit(train_step)/transpose(jvp(FCN))/backbone/conv1_1/conv_general_dilated' ->
    'backbone/conv1_1 (bwd)'. Ops outside any module (loss, optimizer) keep their last part.
    """
    parts = [p for p in op_name.split("/") if p]
    if parts and parts[0].startswith(("jit(", "pjit(")):
        parts = parts[1:]
    backward = any(p.startswith("transpose(") for p in parts)
    # Module scopes are the plain names; transforms and the model's entry carry parentheses.
    modules = [p for p in parts[:-1] if "(" not in p]
    if not modules:
        return (parts[-1] if parts else "?") + (" (bwd)" if backward else "")
    return "/".join(modules) + (" (bwd)" if backward else "")


def device_op_times(xplane_path: str) -> dict[str, float]:
    """{op name: total ns} over the trace's executed XLA ops (device planes, else host thunks)."""
    from jax.profiler import ProfileData  # jax only here: importing this module configures none

    data = ProfileData.from_file(xplane_path)
    planes = list(data.planes)
    devices = [p for p in planes if p.name.startswith(("/device:GPU", "/device:TPU"))]
    totals: dict[str, float] = collections.defaultdict(float)
    for plane in devices:
        lines = list(plane.lines)
        ops_lines = [line for line in lines if line.name == "XLA Ops"]
        for line in ops_lines or lines:  # without an "XLA Ops" line: kernels naming their op
            for event in line.events:
                stats = dict(event.stats)
                name = event.name if ops_lines else stats.get("hlo_op")
                if name:
                    totals[str(name)] += event.duration_ns
    if totals:
        return dict(totals)
    for plane in planes:
        if not plane.name.startswith("/host:CPU"):
            continue
        for line in plane.lines:
            for event in line.events:
                stats = dict(event.stats)
                if "hlo_op" in stats:
                    totals[str(stats["hlo_op"])] += event.duration_ns
    return dict(totals)
