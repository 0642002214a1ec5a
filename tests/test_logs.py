"""The console filter of jaxseg.logs: jaxseg's INFO lines, the libraries' warnings."""

import logging
import os
import subprocess
import sys

import orbax.checkpoint
from conftest import REPO

from jaxseg import logs


def _record(pathname: str, level: int, message: str) -> logging.LogRecord:
    return logging.LogRecord("absl", level, pathname, 1, message, None, None)


def test_console_filter_keeps_our_info_and_real_library_warnings():
    console = logs._OwnInfoOnly()
    orbax_file = os.path.join(os.path.dirname(orbax.checkpoint.__file__), "checkpoint_manager.py")
    ours = os.path.join(os.path.dirname(logs.__file__), "train_lib.py")
    assert console.filter(_record(ours, logging.INFO, "First train step (compile + run): 6.9 s"))
    assert not console.filter(_record(orbax_file, logging.INFO, "Closing _NonBlockingMetadata"))
    assert console.filter(_record(orbax_file, logging.WARNING, "Checkpoint step 3 is corrupt"))
    assert console.filter(_record(orbax_file, logging.ERROR, "Given directory is read only=x"))
    # orbax's words for what jaxseg does on purpose (evaluation reads checkpoints read-only; saves
    # between evaluations have no mIoU) stay off the console, as its logger formats them.
    for message, args in (
        ("Given directory is read only=%s", ("/w/runs/default/checkpoints",)),
        ("Requested `tracked_metric`; did not provide metrics.", None),
    ):
        record = logging.LogRecord("absl", logging.WARNING, orbax_file, 1, message, args, None)
        assert not console.filter(record)
    # tensorflow-datasets' words for the data set sizes a config sets and for decoding with PIL.
    tfds_file = "/site-packages/tensorflow_datasets/core/dataset_builder.py"
    for message in (
        "Using custom data configuration: SyntheticScenesConfig(name='s128_train64_val24_seed0')",
        "OpenCV is not installed. We recommend using OpenCV because it is faster ...",
    ):
        assert not console.filter(_record(tfds_file, logging.WARNING, message))
    assert console.filter(_record(tfds_file, logging.WARNING, "Dataset is using deprecated text"))


def test_a_loader_worker_console_shows_real_warnings_once_formatted_like_the_main_one():
    # What grain runs first in each spawned loader worker: a fresh process without absl's handler.
    code = (
        "import logging\n"
        "from jaxseg import logs\n"
        "logs.route_worker_logs(0, 2)\n"
        "logging.getLogger('absl').warning('OpenCV is not installed. We recommend OpenCV.')\n"
        "logging.getLogger('absl').warning('a record %s could not be read', 17)\n"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO))
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("W") and lines[0].endswith("] a record 17 could not be read")
