"""What every benchmark script shares: the timing loop, the machine, peaks, and result lines.

Framework-neutral at import (the PyTorch peer uses it without jax); `jax_matmul_peak` imports jax
when called. Every script prints a human-readable line and a `RESULT {json}` line per
measurement, which `side_by_side.py` collects into one table.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import time
from collections.abc import Callable


def machine() -> str:
    """CPU model, logical CPU count and OS (the GPU, if any, is named by each framework)."""
    model = platform.processor() or platform.machine()
    flags = ""
    try:
        with open("/proc/cpuinfo") as f:
            lines = f.readlines()
        names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
        model = names[0] if names else model
        cpu_flags = next((line for line in lines if line.startswith("flags")), "").split()
        flags = "avx512" if "avx512f" in cpu_flags else "avx2" if "avx2" in cpu_flags else ""
    except OSError:
        pass
    flags = f", {flags}" if flags else ""
    system = f"{platform.system()} {platform.release()}"
    return f"{model}{flags}, {os.cpu_count()} logical CPUs, {system}"


def time_repeats(step: Callable[[], object], repeats: int) -> dict[str, float]:
    """Times the first call (compile + run), one more warm-up, then `repeats` calls.

    `step` must block until its work is done. Returns first_step_s, the median, min and max
    of the timed calls, and the process's minor page faults and kernel CPU seconds per timed
    call (what the host allocator tuning of `jaxseg.backend` is about).
    """
    t0 = time.perf_counter()
    step()
    first = time.perf_counter() - t0
    step()
    times = []
    before = resource.getrusage(resource.RUSAGE_SELF)
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    after = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "first_step_s": first,
        "page_faults_per_step": (after.ru_minflt - before.ru_minflt) / repeats,
        "system_s_per_step": (after.ru_stime - before.ru_stime) / repeats,
        "step_s_median": statistics.median(times),
        "step_s_min": min(times),
        "step_s_max": max(times),
    }


def interleaved_summary(times: dict[str, list[float]]) -> list[dict]:
    """Programs timed in turn, round by round ({name: seconds per step, one per round}): per
    program (in order) the median and min, and its speed relative to the first program as the
    median over rounds of (first's time / its time) in the same round, which a VM's drift
    between rounds does not move."""
    first = next(iter(times.values()))
    return [
        {
            "variant": name,
            "step_s": statistics.median(t),
            "min_s": min(t),
            "vs_first": statistics.median(a / b for a, b in zip(first, t)),
        }
        for name, t in times.items()
    ]


def peak_rss_mb() -> float:
    """This process's peak resident memory so far (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def jax_matmul_peak(dtype: str = "float32", n: int = 2048, repeats: int = 5) -> float:
    """Measured matmul GFLOP/s of the default jax device: median of `repeats` n x n products.

    bfloat16 multiplies bf16 inputs accumulating in f32 (preferred_element_type), the way the
    models' bf16 matmuls run. On accelerators a larger n is used to reach the peak.
    """
    import jax
    import jax.numpy as jnp

    if jax.default_backend() != "cpu":
        n = max(n, 8192)
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32).astype(dtype)
    matmul = jax.jit(lambda a, b: jnp.matmul(a, b, preferred_element_type=jnp.float32))
    stats = time_repeats(lambda: matmul(a, a).block_until_ready(), repeats)
    return 2 * n**3 / stats["step_s_median"] / 1e9


def device_peak_mb(compiled) -> dict[str, float]:
    """XLA's planned bytes for one call (arguments + outputs + temporaries - donated) and the
    measured peak: the device's on accelerators, the process RSS on CPU."""
    import jax

    out = {}
    analysis = compiled.memory_analysis()
    if analysis is not None:
        planned = (
            analysis.argument_size_in_bytes
            + analysis.output_size_in_bytes
            + analysis.temp_size_in_bytes
            - analysis.alias_size_in_bytes
        )
        out["xla_planned_mb"] = planned / 2**20
    stats = jax.devices()[0].memory_stats() if jax.default_backend() != "cpu" else None
    if stats and "peak_bytes_in_use" in stats:
        out["peak_mem_mb"] = stats["peak_bytes_in_use"] / 2**20
    else:
        out["peak_mem_mb"] = peak_rss_mb()
    return out


def jax_peak_for(dtype: str) -> float:
    """The matmul peak a `dtype` network is measured against: for bfloat16 the higher of the bf16
    and f32 peaks, since bf16 values multiply exactly in f32 and CPUs without bf16 arithmetic
    (XLA computes bf16 in f32 there) reach the f32 peak, not the slower bf16 one."""
    peak = jax_matmul_peak(dtype)
    return max(peak, jax_matmul_peak("float32")) if dtype == "bfloat16" else peak


def rate_text(flops_per_image: float, gflops: float, peak: float | None, mem_mb: float) -> str:
    """The tail every JAX result line shares: FLOPs, GFLOP/s, fraction of peak, peak memory."""
    text = f"{flops_per_image / 1e9:.1f} GFLOP/img, {gflops:.1f} GFLOP/s"
    if peak:
        text += f" = {gflops / peak:.0%} of matmul peak {peak:.0f}"
    return text + f", peak mem {mem_mb:.0f} MB"


def emit(record: dict, human: str) -> None:
    """Prints a human-readable line and the machine-readable `RESULT {json}` line."""
    print(human, flush=True)
    print("RESULT " + json.dumps(record, sort_keys=True), flush=True)
