"""Backend tuning users get by default (train.py, eval.py and the benchmarks call these).

XLA:CPU's experimental YNNPACK fusion of individual convolutions makes convolution backward
passes slower than XLA's own emitter: measured under jax 0.10.2 on an AVX-512 host and under
jax 0.12.0.1 on an AVX2 host, where without `-individual_convolution` the paper U-Net's step is
about 3x slower and the default U-Net's 1.2x (BENCHMARKS.md, section "XLA:CPU flags per jaxlib
release"; `python -m benchmarks.xla_flag_study`). The flags are experimental, so they are kept
per jaxlib release line in `MEASURED_FLAGS`: a measured line gets its own set; a line never
measured gets the nearest measured line's set only if its XLA still knows every flag and value
in it (read from jaxlib's library: XLA aborts the process at start-up on an unknown flag), else
none. Flags are only added on CPU runs and never over a setting the user made in XLA_FLAGS. Set
JAXSEG_NO_XLA_TUNING=1 to leave XLA_FLAGS untouched.

XLA:CPU allocates a program's temporary buffers at every call (the default U-Net's train step:
about 170 MB, from its worker threads) and frees them after. glibc's malloc serves such requests
from a thread's own arena with fresh `mmap`s (a thread arena's heaps hold at most 64 MiB) and
returns them with `munmap`, so every step faulted its buffers in again, 4 KiB at a time: 38
thousand page faults and about 0.11 CPU-s of kernel time per default step, a fifth of its CPU
time. `configure_host_allocator` caps malloc's arenas at the cores this process may use, turns
off `mmap` allocations and heap trimming, so threads that share the main arena reuse freed
buffers. Measured on a 2-core AVX2 host (BENCHMARKS.md, section "Host allocator"): the default
run's page faults fall to a third and its 400-step wall time by 12-18%, peak RSS 0.1-0.4 GB
higher (the heap does not shrink). Not measured on more cores, where more of XLA's threads
have arenas of their own and keep mmap'ing. It applies only where XLA:CPU runs the model (no
accelerator plugin installed, or JAX_PLATFORMS=cpu), on glibc, and never over a MALLOC_* or
GLIBC_TUNABLES setting of the user's; JAXSEG_NO_MALLOC_TUNING=1 leaves malloc as it is.
Measured and not adopted: one arena (every thread reuses, but lock contention made the run
slower than glibc's default) and transparent huge pages (`GLIBC_TUNABLES=glibc.malloc.hugetlb=1`,
which needs a restart: 7-14% on the 400-step run, less than the arenas, and slower combined).
`configure_before_jax` runs this and `configure_xla_flags`.

On the CPU backend we also switch off `jax_threefry_partitionable`: under jax 0.10.2 XLA:CPU
compiles the partitionable threefry random-bit generator very slowly for small shapes, such as
the default U-Net's jitted init (measured: BENCHMARKS.md, section "Compile time of the
initialisation"; `python -m benchmarks.bench_init_compile`). Random values differ between the two
settings, but both are deterministic and independent of the device count; accelerators keep
jax's default.

Left at jax's defaults, deliberately (measured in BENCHMARKS.md):
- Layout: models are NHWC throughout and XLA chooses physical layouts itself; there is no
  channels_last switch to remember (PyTorch needs one for its fast CPU/GPU convolutions).
- Matmul precision: jax's default, under which f32 convolutions and matmuls on recent NVIDIA
  GPUs run as TF32 (PyTorch's cuDNN convolutions do the same by default). Set
  `jax.config.update("jax_default_matmul_precision", "highest")` for full f32 products.
- bfloat16 (`config.model.dtype`): XLA:CPU computes bf16 convolutions without the CPU's bf16
  dot instructions (about f32 speed), so on CPU jaxseg's layers run bf16 convs and matmuls as
  bf16 x bf16 -> f32 dot_generals (`jaxseg/models/layers.py:conv`), which use AVX512_BF16/AMX
  where the CPU has them; on CPUs without them (AVX2 only) bf16 saves memory but not time. GPUs
  and TPUs keep XLA's native convolutions, their fast path.
- Other XLA:CPU options (`xla_cpu_use_onednn`, `xla_cpu_use_xnnpack`, the YNNPACK fusion types
  dot / eltwise / reduce / individual_dot) were measured under 0.12.0.1 and not adopted: none
  was faster than `-individual_convolution` alone beyond this VM's run-to-run spread, and
  dropping individual_dot too made the default U-Net slower.
"""

from __future__ import annotations

import contextlib
import os
import sys

_YNN = "--xla_cpu_experimental_ynn_fusion_type="
# XLA:CPU flags per jaxlib release line, each set measured on that line (BENCHMARKS.md, section
# "XLA:CPU flags per jaxlib release"; `python -m benchmarks.xla_flag_study`). Experimental flags
# come and go between releases and XLA aborts at start-up on one it does not know.
MEASURED_FLAGS: dict[tuple[int, int], tuple[str, ...]] = {
    (0, 10): (_YNN + "-individual_convolution",),
    (0, 12): (_YNN + "-individual_convolution",),
}


def _jaxlib_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("jaxlib")
    except metadata.PackageNotFoundError:
        return ""


def _release(version: str) -> tuple[int, int] | None:
    parts = version.split(".")
    try:
        return int(parts[0]), int(parts[1])
    except (IndexError, ValueError):
        return None


def _xla_knows(flags: tuple[str, ...]) -> bool:
    """Whether the installed jaxlib's XLA has every flag name and every enum value named in `flags`.

    Read from the strings of jaxlib's XLA library (flag names as they are; YNNPACK fusion types as
    their `LIBRARY_FUSION_TYPE_*` enum names), since asking XLA itself would abort the process.
    """
    import importlib.util
    import mmap

    spec = importlib.util.find_spec("jaxlib")
    if spec is None or not spec.submodule_search_locations:
        return False
    (folder,) = spec.submodule_search_locations
    library = os.path.join(folder, "libjax_common.so")
    if not os.path.isfile(library):
        return False
    needles = []
    for flag in flags:
        name, _, value = flag.lstrip("-").partition("=")
        needles.append(name)
        if name == _YNN.strip("-="):
            needles += ["LIBRARY_FUSION_TYPE_" + v.lstrip("-").upper() for v in value.split(",")]
    with open(library, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
        return all(data.find(needle.encode()) >= 0 for needle in needles)


def measured_flags(version: str) -> tuple[str, ...]:
    """The XLA:CPU flags for jaxlib `version`: its release line's measured set; for a line never
    measured, the nearest measured line's set (the newer on a tie) if this XLA knows every flag in
    it, else none."""
    release = _release(version)
    if release is None:
        return ()
    if release in MEASURED_FLAGS:
        return MEASURED_FLAGS[release]
    nearest = min(
        MEASURED_FLAGS,
        key=lambda r: (abs((r[0] - release[0]) * 1000 + r[1] - release[1]), -r[0], -r[1]),
    )
    flags = MEASURED_FLAGS[nearest]
    return flags if _xla_knows(flags) else ()


def configure_before_jax() -> None:
    """What an entry point runs first, before `import jax`: the host allocator and the measured
    XLA flags (the module docstring)."""
    configure_host_allocator()
    configure_xla_flags()


# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity mask, where the OS has one)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return cores or 1


def malloc_settings() -> tuple[tuple[int, int], ...]:
    """(mallopt parameter, value): arenas capped at this process's usable cores (2 measured),
    no mmap'd chunks, no trimming."""
    return (
        (_M_ARENA_MAX, max(2, usable_cores())),
        (_M_MMAP_MAX, 0),
        (_M_TRIM_THRESHOLD, 2**31 - 1),
    )


_USER_MALLOC_ENV = ("MALLOC_", "GLIBC_TUNABLES", "LD_PRELOAD")


def _runs_on_cpu() -> bool:
    """Whether XLA:CPU will run the model, decided without importing jax: JAX_PLATFORMS names
    cpu first, or it is unset and no accelerator plugin (CUDA / ROCm / TPU) is installed."""
    import importlib.util

    platforms = os.environ.get("JAX_PLATFORMS", "")
    if platforms:
        return platforms.split(",")[0].strip() == "cpu"
    return not any(importlib.util.find_spec(name) for name in ("jax_plugins", "libtpu"))


def _is_glibc() -> bool:
    import platform

    return platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


def configure_host_allocator() -> bool:
    """Lets XLA:CPU reuse freed temporary buffers (the module docstring); True if applied.

    Call it before `import jax`, while the process has no other threads: a thread is bound to
    an arena at its first allocation.
    """
    import ctypes

    if "jax" in sys.modules:
        raise RuntimeError("configure_host_allocator() must be called before jax is imported")
    if os.environ.get("JAXSEG_NO_MALLOC_TUNING") or not _runs_on_cpu() or not _is_glibc():
        return False
    if any(name.startswith(_USER_MALLOC_ENV) for name in os.environ):
        return False  # the user's own allocator settings (or allocator) win
    mallopt = ctypes.CDLL(None).mallopt
    return all(mallopt(param, value) == 1 for param, value in malloc_settings())


def configure_xla_flags() -> None:
    """Adds the measured XLA:CPU flags to XLA_FLAGS; must run before `import jax`."""
    if "jax" in sys.modules:
        raise RuntimeError("configure_xla_flags() must be called before jax is imported")
    if os.environ.get("JAXSEG_NO_XLA_TUNING"):
        return
    platforms = os.environ.get("JAX_PLATFORMS", "")
    if platforms and "cpu" not in platforms:
        return
    wanted = measured_flags(_jaxlib_version())
    if not wanted:
        return
    flags = os.environ.get("XLA_FLAGS", "")
    for flag in wanted:
        if flag.split("=")[0] not in flags:
            flags = f"{flags} {flag}".strip()
            _ADDED.append(flag)
    os.environ["XLA_FLAGS"] = flags


_ADDED: list[str] = []  # what configure_xla_flags added to XLA_FLAGS in this process


@contextlib.contextmanager
def xla_flags_hidden_from_tensorflow():
    """Runs its body with XLA_FLAGS as the user set it, without the flags added here.

    TensorFlow links its own, older XLA, which parses XLA_FLAGS at its first use (running a
    SavedModel's XlaCallModule) and aborts the process on a flag it does not know (tensorflow
    2.20 on --xla_cpu_experimental_ynn_fusion_type). jax parsed the flags at its start-up.
    Flags the user set in XLA_FLAGS themselves stay.
    """
    before = os.environ.get("XLA_FLAGS")
    if before is not None and _ADDED:
        os.environ["XLA_FLAGS"] = " ".join(f for f in before.split() if f not in _ADDED)
    try:
        yield
    finally:
        if before is not None:
            os.environ["XLA_FLAGS"] = before


def configure_jax_for_backend() -> None:
    """After `jax.distributed.initialize()` (if any) and before the first random op."""
    import jax

    if jax.default_backend() == "cpu" and not os.environ.get("JAXSEG_NO_XLA_TUNING"):
        jax.config.update("jax_threefry_partitionable", False)
