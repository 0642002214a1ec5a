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


_PROBE = """
import ctypes, resource, sys
from jaxseg import backend
applied = backend.configure_host_allocator()
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
size, faults = 96 << 20, []
for _ in range(3):  # what XLA:CPU does at each call: a big temporary buffer, written, freed
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    buffer = libc.malloc(size)
    ctypes.memset(buffer, 1, size)
    libc.free(buffer)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(repr((applied, faults)))
"""


def _probe(**environ):
    import ast
    import subprocess

    env = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_", "JAX"))}
    env.update(environ, PYTHONPATH=os.pathsep.join(sys.path))
    out = subprocess.run(
        [sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, check=True
    ).stdout
    return ast.literal_eval(out.strip().splitlines()[-1])


@pytest.mark.skipif(not backend._is_glibc(), reason="the allocator settings are glibc's")
def test_host_allocator_reuses_a_freed_big_buffer_instead_of_faulting_it_in_again():
    pages = (96 << 20) // os.sysconf("SC_PAGE_SIZE")
    applied, faults = _probe()
    assert applied
    # Faulted in once, then reused from the heap (neither unmapped nor trimmed).
    assert faults[0] > pages // 2 and max(faults[1:]) < pages // 50, faults
    applied, faults = _probe(JAXSEG_NO_MALLOC_TUNING="1")
    assert not applied
    assert min(faults) > pages // 2, faults  # glibc's default: mmap'd anew, faulted anew


def test_malloc_settings_cap_the_arenas_at_the_usable_cores(env):
    env.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5}, raising=False)
    assert dict(backend.malloc_settings()) == {-8: 6, -4: 0, -1: 2**31 - 1}
    env.setattr(os, "sched_getaffinity", lambda pid: {3}, raising=False)
    assert dict(backend.malloc_settings())[-8] == 2  # 2: the smallest measured


@pytest.mark.parametrize(
    "environ",
    [
        {"JAX_PLATFORMS": "cuda"},  # an accelerator runs the model
        {"JAX_PLATFORMS": "tpu,cpu"},
        {"JAXSEG_NO_MALLOC_TUNING": "1"},
        {"MALLOC_ARENA_MAX": "4"},  # the user's own allocator settings win
        {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"},
        {"LD_PRELOAD": "libjemalloc.so.2"},
    ],
)
def test_host_allocator_left_alone(env, environ):
    for key, value in environ.items():
        env.setenv(key, value)
    assert backend.configure_host_allocator() is False


def test_host_allocator_is_refused_after_jax_is_imported():
    import jax  # noqa: F401

    with pytest.raises(RuntimeError, match="before jax is imported"):
        backend.configure_host_allocator()


def test_an_accelerator_plugin_means_no_cpu_tuning(env):
    import importlib.util

    real = importlib.util.find_spec
    env.setattr(
        importlib.util, "find_spec", lambda n, *a: object() if n == "jax_plugins" else real(n, *a)
    )
    assert not backend._runs_on_cpu()
    env.setenv("JAX_PLATFORMS", "cpu")
    assert backend._runs_on_cpu()
    env.setenv("JAX_PLATFORMS", "cuda,cpu")
    assert not backend._runs_on_cpu()
