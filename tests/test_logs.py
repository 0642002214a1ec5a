"""The console filter of jaxseg.logs: jaxseg's INFO lines, the libraries' warnings."""

import logging
import os

import orbax.checkpoint

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
