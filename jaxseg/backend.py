"""Backend tuning users get by default (train.py, eval.py and the benchmarks call these).

XLA:CPU's experimental YNNPACK fusion of individual convolutions made conv backward passes
slower than XLA's own emitter on a 2-core AVX-512 CPU under jax 0.10.2 (measured: BENCHMARKS.md,
section "Train step, first measurements (host A)"); excluding it (`-individual_convolution`) is
the faster default there. The flag is experimental: it is only
added for the jaxlib releases we measured (`_MEASURED_JAXLIB`, checked at run time), only on
CPU runs, and never when the user already set it. Set JAXSEG_NO_XLA_TUNING=1 to leave
XLA_FLAGS untouched.

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
- Other XLA:CPU options in jaxlib 0.10.2 (`xla_cpu_use_onednn`,
  `xla_cpu_experimental_onednn_fusion_type`, `xla_cpu_experimental_xnn_fusion_type`, the
  YNNPACK fusion types dot / eltwise / reduce / individual_dot) were not adopted: none is
  measured here yet.
"""

from __future__ import annotations

import os
import sys

_CPU_FLAGS = ("--xla_cpu_experimental_ynn_fusion_type=-individual_convolution",)
# jaxlib releases the flags were measured on. XLA aborts at start-up on an unknown flag, and
# experimental flags come and go between releases, so other versions get none of them.
_MEASURED_JAXLIB = ("0.10.",)


def _jaxlib_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("jaxlib")
    except metadata.PackageNotFoundError:
        return ""


def configure_xla_flags() -> None:
    """Adds the measured XLA:CPU flags to XLA_FLAGS; must run before `import jax`."""
    if "jax" in sys.modules:
        raise RuntimeError("configure_xla_flags() must be called before jax is imported")
    if os.environ.get("JAXSEG_NO_XLA_TUNING"):
        return
    platforms = os.environ.get("JAX_PLATFORMS", "")
    if platforms and "cpu" not in platforms:
        return
    if not _jaxlib_version().startswith(_MEASURED_JAXLIB):
        return
    flags = os.environ.get("XLA_FLAGS", "")
    for flag in _CPU_FLAGS:
        if flag.split("=")[0] not in flags:
            flags = f"{flags} {flag}".strip()
    os.environ["XLA_FLAGS"] = flags


def configure_jax_for_backend() -> None:
    """After `jax.distributed.initialize()` (if any) and before the first random op."""
    import jax

    if jax.default_backend() == "cpu" and not os.environ.get("JAXSEG_NO_XLA_TUNING"):
        jax.config.update("jax_threefry_partitionable", False)


def hide_accelerators_from_tensorflow() -> None:
    """tf.data runs on the host; keep TensorFlow from grabbing GPU memory JAX needs."""
    import tensorflow as tf

    tf.config.set_visible_devices([], "GPU")
