"""Backend tuning users get by default: set before jax is imported (train.py, eval.py, benchmarks).

XLA:CPU's experimental YNNPACK fusion of individual convolutions made conv backward passes
~2.5x slower than XLA's own emitter on a 2-core AVX-512 CPU under jax 0.10.2; excluding it
(`-individual_convolution`) is the faster default there. The flag is experimental: it is only
added for the jax versions we measured (pinned in pyproject.toml), only on CPU runs, and never
when the user already set it. Set JAXSEG_NO_XLA_TUNING=1 to leave XLA_FLAGS untouched.
"""

from __future__ import annotations

import os
import sys

_CPU_FLAGS = ("--xla_cpu_experimental_ynn_fusion_type=-individual_convolution",)


def configure_xla_flags() -> None:
    """Adds the measured XLA:CPU flags to XLA_FLAGS; must run before `import jax`."""
    if "jax" in sys.modules:
        raise RuntimeError("configure_xla_flags() must be called before jax is imported")
    if os.environ.get("JAXSEG_NO_XLA_TUNING"):
        return
    platforms = os.environ.get("JAX_PLATFORMS", "")
    if platforms and "cpu" not in platforms:
        return
    flags = os.environ.get("XLA_FLAGS", "")
    for flag in _CPU_FLAGS:
        if flag.split("=")[0] not in flags:
            flags = f"{flags} {flag}".strip()
    os.environ["XLA_FLAGS"] = flags


def hide_accelerators_from_tensorflow() -> None:
    """tf.data runs on the host; keep TensorFlow from grabbing GPU memory JAX needs."""
    import tensorflow as tf

    tf.config.set_visible_devices([], "GPU")
