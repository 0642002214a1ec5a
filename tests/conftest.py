"""Test-wide setup: 8 fake CPU devices, set before jax is imported anywhere; the fixtures and
helpers several test modules share, the end-to-end ones (train.py children) last."""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ["JAX_PLATFORMS"] = "cpu"
# The XLA:CPU flags train.py runs with (measured per jaxlib release; jaxseg/backend.py): under
# jax 0.12 XLA's default YNNPACK convolution fusion makes conv backward passes ~3x slower.
from jaxseg import backend  # noqa: E402  (imports nothing of jax)

backend.configure_xla_flags()
# What train.py does on CPU (jaxseg/backend.py): the partitionable threefry compiles ~7x slower
# on XLA:CPU for the small kernels of test-size models.
os.environ["JAX_THREEFRY_PARTITIONABLE"] = "0"
# Where TensorFlow is installed (the savedmodel extra), keep it quiet and off any accelerator.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")


import dataclasses  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def tensorflow_blocker(folder) -> str:
    """Writes `<folder>/no_tensorflow/tensorflow/__init__.py` raising ImportError; returns the
    folder to put first on PYTHONPATH so that `import tensorflow` fails as where it is not
    installed."""
    blocker = os.path.join(str(folder), "no_tensorflow")
    os.makedirs(os.path.join(blocker, "tensorflow"), exist_ok=True)
    with open(os.path.join(blocker, "tensorflow", "__init__.py"), "w") as f:
        f.write('raise ImportError("TensorFlow is blocked for this test (tensorflow_blocker)")\n')
    return blocker


@pytest.fixture
def no_tensorflow_env(tmp_path):
    """An env for subprocess.run in which `import tensorflow` fails, as where it is not installed.

    PYTHONPATH starts with `tensorflow_blocker`'s folder, then the repo root (this checkout's
    jaxseg, configs and entry points), then the PYTHONPATH already set.
    """
    paths = [
        tensorflow_blocker(tmp_path),
        str(REPO),
        *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep)),
    ]
    return dict(os.environ, PYTHONPATH=os.pathsep.join(paths))


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    """One tiny trained run (configs/smoke.py: 6 steps, evaluated and saved at 3 and 6), shared
    by every test that reads a run; a test that changes it works on a copy (shutil.copytree)."""
    from configs import smoke
    from jaxseg import train_lib

    config = smoke.get_config()
    config.data.data_dir = str(tmp_path_factory.mktemp("smoke_tfds"))
    workdir = tmp_path_factory.mktemp("smoke_run")
    train_lib.train_and_evaluate(config, str(workdir))
    return workdir


def write_blob_images(folder, sizes: dict) -> None:
    """Writes `<stem>.png` RGB images of smooth random blobs, {stem: (height, width)}: smooth
    rather than noise, so a model's argmax is not dominated by near-ties."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for stem, (h, w) in sizes.items():
        base = rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3), np.uint8)
        Image.fromarray(base).resize((w, h), Image.BILINEAR).save(folder / f"{stem}.png")


# ---------------------------------------------------------------------------------------------
# End-to-end helpers: train.py children and their shared caches (test_train_e2e.py,
# test_multiprocess.py, test_sweeps.py, test_readme.py).
#
# Every such training run is `configs/smoke.py` with the same OVERRIDES (TOTAL_STEPS steps), so
# any run that reaches TOTAL_STEPS, however interrupted and resumed, ends in the same TrainState.
# Children share, session-wide under pytest's basetemp, one tfds data dir and one persistent XLA
# compilation cache (`shared_dir`): the first run compiles, later ones load from disk.

TOTAL_STEPS = 8
HALF = TOTAL_STEPS // 2
# Smoke's lr (3e-3) moves the loss by ~2% in 8 steps; 0.05 gives a ~20% drop, still stable.
OVERRIDES = {
    "total_steps": TOTAL_STEPS,
    "log_every_steps": 1,
    "eval_every_steps": HALF,
    "optim.learning_rate": 0.05,
}
RUN_TIMEOUT_S = 480  # One cold run (compiles everything) takes ~60-120 s on 2 busy cores.
TMP_SUFFIX = ".orbax-checkpoint-tmp"  # orbax's in-progress step directories: <step><suffix>.


def shared_dir(tmp_path_factory) -> Path:
    """Session-wide folder for the tfds data and the XLA cache, shared by every e2e module."""
    path = tmp_path_factory.getbasetemp() / "jaxseg_e2e_shared"
    path.mkdir(exist_ok=True)
    return path


def child_env(shared: Path, num_devices: int, **extra: str) -> dict[str, str]:
    """Environment of a train.py child: CPU only, `num_devices` fake devices, shared caches."""
    env = dict(os.environ)
    env.update(
        JAX_PLATFORMS="cpu",
        CUDA_VISIBLE_DEVICES="",
        XLA_FLAGS=f"--xla_force_host_platform_device_count={num_devices}",
        TFDS_DATA_DIR=str(shared / "tfds"),  # Never ~/tensorflow_datasets.
        JAX_COMPILATION_CACHE_DIR=str(shared / "xla_cache"),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        PYTHONPATH=str(REPO),
        TF_CPP_MIN_LOG_LEVEL="2",
    )
    env.update(extra)
    return env


def config_flags(**extra) -> list[str]:
    """`--config.<key>=<value>` flags for OVERRIDES plus `extra` (top-level keys)."""
    return [f"--config.{k}={v}" for k, v in {**OVERRIDES, **extra}.items()]


def expected_config(**extra):
    """configs/smoke.py with the same overrides applied in-process: what config.json must hold."""
    from configs import smoke

    config = smoke.get_config()
    for key, value in {**OVERRIDES, **extra}.items():
        *parents, leaf = key.split(".")
        node = config
        for p in parents:
            node = node[p]
        node[leaf] = value
    return config


@dataclasses.dataclass
class Run:
    """One finished train.py process: its workdir, exit status and combined stdout/stderr."""

    workdir: Path
    log_path: Path
    returncode: int

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def tail(self, n: int = 40) -> str:
        """The last `n` log lines that are not absl INFO lines (warnings, errors, tracebacks)."""
        lines = [ln for ln in self.log.splitlines() if not re.match(r"I\d{4} ", ln)]
        return f"--- {self.log_path} (rc {self.returncode}) ---\n" + "\n".join(lines[-n:])


def start(workdir: Path, args: list[str], env: dict[str, str], name: str):
    """Starts `python train.py --config configs/smoke.py --workdir workdir *args`."""
    log_path = workdir.parent / f"{workdir.name}.{name}.log"
    cmd = [sys.executable, "train.py", "--config", "configs/smoke.py", "--workdir", str(workdir)]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd + args, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    return proc, log_path


def finish(proc: subprocess.Popen, workdir: Path, log_path: Path) -> Run:
    """Waits for `proc` (killing it after RUN_TIMEOUT_S) and returns its Run."""
    try:
        proc.wait(timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError(
            f"train.py ran over {RUN_TIMEOUT_S} s:\n"
            + Run(workdir, log_path, proc.returncode).tail()
        ) from None
    return Run(workdir, log_path, proc.returncode)


def train(workdir: Path, args: list[str], env: dict[str, str], name: str = "run") -> Run:
    proc, log_path = start(workdir, args, env, name)
    return finish(proc, workdir, log_path)


def checkpoint_steps(workdir: Path) -> tuple[list[int], list[str]]:
    """(complete steps as the train loop's Checkpointer sees them, names of partial step dirs)."""
    from jaxseg import checkpointing

    ckpt = checkpointing.Checkpointer(workdir, read_only=True)
    try:
        complete = ckpt.all_steps()
    finally:
        ckpt.close()
    partial = sorted(p.name for p in (workdir / "checkpoints").glob("*" + TMP_SUFFIX))
    return complete, partial


def make_restore(config):
    """fn(workdir, step) -> host TrainState, restored through the train loop's path."""
    import jax

    from jaxseg import checkpointing, optim, sharding, train_state
    from jaxseg.data import datasets
    from jaxseg.models import build_model

    model = build_model(config.model)
    tx, _ = optim.make_optimizer(config.optim, config.total_steps)
    spec = datasets.dataset_spec(config.data)
    abstract, _, _ = train_state.create_state(config, model, tx, sharding.make_mesh(), spec)

    def restore(workdir: Path, step: int | str = "latest"):
        ckpt = checkpointing.Checkpointer(workdir, read_only=True)
        try:
            state = ckpt.restore(abstract, step)
        finally:
            ckpt.close()
        return jax.device_get(state)

    return restore


def max_param_change(a, b) -> float:
    """The largest absolute difference between two parameter trees' leaves."""
    import jax
    import numpy as np

    return max(float(np.max(np.abs(x - y))) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def read_metrics(workdir: Path) -> list[dict]:
    """Every record of `<workdir>/metrics.jsonl`, in order."""
    with open(workdir / "metrics.jsonl") as f:
        return [json.loads(line) for line in f]
