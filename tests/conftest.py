"""Test-wide setup: 8 fake CPU devices, set before jax is imported anywhere."""

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


import pytest  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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
        REPO,
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
