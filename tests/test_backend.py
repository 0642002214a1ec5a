"""XLA flag tuning: added only where it was measured (CPU runs, the measured jaxlib releases)."""

import os
import sys

import pytest

from jaxseg import backend


@pytest.fixture
def env(monkeypatch):
    # configure_xla_flags refuses to run once jax is imported (other test files import it).
    monkeypatch.delitem(sys.modules, "jax", raising=False)
    for name in ("XLA_FLAGS", "JAX_PLATFORMS", "JAXSEG_NO_XLA_TUNING"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def _flags(env, jaxlib="0.10.2", **environ):
    env.setattr(backend, "_jaxlib_version", lambda: jaxlib)
    for key, value in environ.items():
        env.setenv(key, value)
    backend.configure_xla_flags()
    return os.environ.get("XLA_FLAGS", "")


def test_measured_jaxlib_on_cpu_gets_the_flags_once_and_keeps_the_users(env):
    flags = _flags(env, XLA_FLAGS="--xla_force_host_platform_device_count=8")
    assert flags.startswith("--xla_force_host_platform_device_count=8 ")
    assert flags.count("--xla_cpu_experimental_ynn_fusion_type=-individual_convolution") == 1


def test_user_setting_wins(env):
    flags = _flags(env, XLA_FLAGS="--xla_cpu_experimental_ynn_fusion_type=dot")
    assert flags == "--xla_cpu_experimental_ynn_fusion_type=dot"


@pytest.mark.parametrize(
    "jaxlib, environ",
    [
        ("0.12.0", {}),  # unmeasured release: XLA aborts on flags it no longer knows
        ("", {}),  # jaxlib metadata missing
        ("0.10.2", {"JAX_PLATFORMS": "cuda"}),
        ("0.10.2", {"JAXSEG_NO_XLA_TUNING": "1"}),
    ],
)
def test_no_flags_outside_what_was_measured(env, jaxlib, environ):
    assert _flags(env, jaxlib, **environ) == ""
