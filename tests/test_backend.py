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


NO_YNN_CONV = "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution"


@pytest.mark.parametrize(
    "jaxlib, expected",
    [  # BENCHMARKS.md, "XLA:CPU flags per jaxlib release": what each release measured best with
        ("0.10.2", NO_YNN_CONV),
        ("0.10.0", NO_YNN_CONV),
        ("0.12.0.1", NO_YNN_CONV),  # 3x on the paper U-Net's step, 1.2x on the default's
        ("0.12.0", NO_YNN_CONV),
    ],
)
def test_each_measured_release_gets_its_measured_flags_without_a_probe(env, jaxlib, expected):
    env.setattr(backend, "_xla_knows", lambda flags: pytest.fail("measured: no probe needed"))
    assert _flags(env, jaxlib) == expected


@pytest.mark.parametrize(
    "jaxlib, nearest", [("0.11.2", (0, 12)), ("0.13.0", (0, 12)), ("0.9.2", (0, 10))]
)
def test_unmeasured_release_gets_the_nearest_measured_set_only_if_xla_knows_it(
    env, jaxlib, nearest
):
    asked = []
    env.setattr(backend, "_xla_knows", lambda flags: asked.append(flags) or True)
    assert _flags(env, jaxlib) == " ".join(backend.MEASURED_FLAGS[nearest])
    assert asked == [backend.MEASURED_FLAGS[nearest]]
    env.delenv("XLA_FLAGS")
    env.setattr(backend, "_xla_knows", lambda flags: False)
    assert _flags(env, jaxlib) == ""


def test_xla_knows_reads_the_installed_jaxlib():
    import jaxlib

    installed = backend._release(jaxlib.__version__)
    if installed in backend.MEASURED_FLAGS:
        assert backend._xla_knows(backend.MEASURED_FLAGS[installed])
    assert not backend._xla_knows(("--xla_cpu_no_such_flag_anywhere=1",))
    assert not backend._xla_knows(("--xla_cpu_experimental_ynn_fusion_type=-no_such_fusion",))


def test_user_setting_wins(env):
    flags = _flags(env, XLA_FLAGS="--xla_cpu_experimental_ynn_fusion_type=dot")
    assert flags == "--xla_cpu_experimental_ynn_fusion_type=dot"


@pytest.mark.parametrize(
    "jaxlib, environ",
    [
        ("", {}),  # jaxlib metadata missing
        ("0.10.2", {"JAX_PLATFORMS": "cuda"}),
        ("0.12.0.1", {"JAX_PLATFORMS": "tpu"}),
        ("0.10.2", {"JAXSEG_NO_XLA_TUNING": "1"}),
    ],
)
def test_no_flags_outside_what_was_measured(env, jaxlib, environ):
    assert _flags(env, jaxlib, **environ) == ""


def test_flags_we_added_are_hidden_from_tensorflow_and_restored(env):
    env.setattr(backend, "_ADDED", [])
    _flags(env, "0.12.0.1", XLA_FLAGS="--xla_force_host_platform_device_count=8")
    full = os.environ["XLA_FLAGS"]
    assert NO_YNN_CONV in full
    with backend.xla_flags_hidden_from_tensorflow():
        assert os.environ["XLA_FLAGS"] == "--xla_force_host_platform_device_count=8"
    assert os.environ["XLA_FLAGS"] == full
