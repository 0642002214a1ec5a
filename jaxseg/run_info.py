"""Provenance of a run: `<workdir>/run_info.json`, what produced the numbers in the workdir.

train_and_evaluate calls `record` once per invocation (after restoring or initialising the
state), so a resumed run keeps one entry per invocation: a run continued on other hardware or
from another commit says so. The sweep tool reads the parameter count and the invocations'
start times (the train wall time) from here.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import time
from typing import Any

import jax
import ml_collections
import numpy as np

from jaxseg import sharding
from jaxseg import workdir as workdir_lib


def git_state(path: str) -> dict[str, Any] | None:
    """{"commit": sha, "dirty": bool} of the git checkout holding `path`, or None outside git."""
    try:
        commit = subprocess.run(
            ["git", "-C", path, "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        changes = subprocess.run(
            ["git", "-C", path, "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": bool(changes)}


def _package_version() -> str | None:
    try:
        return importlib.metadata.version("jaxseg")
    except importlib.metadata.PackageNotFoundError:  # Run from a checkout, never installed.
        return None


def num_params(params: Any) -> int:
    """Number of scalars in a parameter tree (arrays or ShapeDtypeStructs)."""
    return int(sum(np.prod(x.shape, dtype=np.int64) for x in jax.tree.leaves(params)))


def describe(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh, params: Any) -> dict:
    """This invocation's provenance (JSON-ready)."""
    devices = jax.devices()
    return {
        "time": time.time(),
        "jaxseg_version": _package_version(),
        "git": git_state(os.path.dirname(os.path.abspath(__file__))),
        "versions": {
            "python": platform.python_version(),
            "jax": jax.__version__,
            "jaxlib": importlib.metadata.version("jaxlib"),
            "flax": importlib.metadata.version("flax"),
            "optax": importlib.metadata.version("optax"),
        },
        "host": platform.node(),
        "command": sys.argv,
        "devices": {
            "summary": sharding.describe_devices(mesh),
            "platform": jax.default_backend(),
            "kinds": sorted({d.device_kind for d in devices}),
            "global": jax.device_count(),
            "local": jax.local_device_count(),
            "processes": jax.process_count(),
            "mesh": {name: int(size) for name, size in mesh.shape.items()},
        },
        "global_batch_size": config.batch_size,
        "num_params": num_params(params),
        "config": json.loads(config.to_json_best_effort()),
    }


def record(workdir: str, config, mesh, params, start_step: int) -> str | None:
    """Appends this invocation to `<workdir>/run_info.json` (process 0 only); returns the path.

    The file's top level is the latest invocation's description; "invocations" lists every
    invocation's {"time" (Unix s), "start_step", "git", "devices"}.
    """
    if jax.process_index() != 0:
        return None
    run = workdir_lib.RunDir(workdir)
    info = describe(config, mesh, params)
    previous = (run.read_run_info() or {}).get("invocations", [])
    entry = {k: info[k] for k in ("time", "git", "devices")}
    info["invocations"] = [*previous, {**entry, "start_step": int(start_step)}]
    run.path.mkdir(parents=True, exist_ok=True)
    # Atomic: a crash never leaves a truncated file.
    workdir_lib.write_json(run.run_info_json, info, indent=2, sort_keys=True)
    return os.fspath(run.run_info_json)
