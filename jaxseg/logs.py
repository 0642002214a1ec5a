"""What the console shows: jaxseg's own log lines; the libraries' INFO chatter goes to a file.

orbax, tensorflow-datasets and jax log through absl at INFO (checkpoint-manager option dumps,
"Closing _NonBlockingMetadataStore(...)" at every save, ~130 lines in a default run) between
jaxseg's lines, burying the few a user needs (devices, resume, first step, where the report is).
`route_library_logs` keeps on the console the INFO lines logged from jaxseg's package and the
entry-point script, and every WARNING or worse from anyone but a few of orbax's that describe
jaxseg's intended use (BENIGN_LIBRARY_WARNINGS); with a `log_file`, everything at INFO
and above, the libraries' lines included, is also written there (train.py: <workdir>/train.log),
so nothing is lost for debugging.
"""

from __future__ import annotations

import logging
import os
import sys

from absl import flags
from absl import logging as absl_logging

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def _is_ours(pathname: str) -> bool:
    path = os.path.abspath(pathname)
    main = os.path.abspath(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return path.startswith(_PACKAGE_DIR + os.sep) or path == main


# orbax WARNINGs that describe jaxseg's intended use of it, not a problem: they go to the log file
# only. A newcomer's first run ended with "Given directory is read only=.../checkpoints".
BENIGN_LIBRARY_WARNINGS = (
    "Given directory is read only",  # evaluation opens the checkpoints read-only on purpose
    "Requested `tracked_metric`; did not provide metrics",  # saves between evals carry no mIoU
    # tensorflow-datasets: every builder config but the default, i.e. each data set size a
    # config sets (the synthetic scenes' sizes, the image folders).
    "Using custom data configuration",
    # tensorflow-datasets decodes images with PIL without OpenCV: the loader's throughput and
    # worker count were measured that way (BENCHMARKS.md, "Input pipeline"); the README's first
    # command printed this as its only warning.
    "OpenCV is not installed",
)


class _OwnInfoOnly(logging.Filter):
    """Passes WARNING+ from anyone (but BENIGN_LIBRARY_WARNINGS), INFO and below only from
    jaxseg and the entry point."""

    def filter(self, record: logging.LogRecord) -> bool:
        if _is_ours(record.pathname):
            return True
        if record.levelno == logging.WARNING:
            return not record.getMessage().startswith(BENIGN_LIBRARY_WARNINGS)
        return record.levelno > logging.WARNING


def route_library_logs(log_file: str | os.PathLike | None = None) -> None:
    """Filters the console (absl's handler) to jaxseg's own INFO lines; optionally tees all.

    Idempotent. `log_file` must be a local path (its folder is created); None writes no file.
    """
    handler = absl_logging.get_absl_handler()
    if not any(isinstance(f, _OwnInfoOnly) for f in handler.filters):
        handler.addFilter(_OwnInfoOnly())
    root = logging.getLogger()
    if log_file is None:
        return
    log_file = os.path.abspath(os.fspath(log_file))
    if any(getattr(h, "baseFilename", None) == log_file for h in root.handlers):
        return
    os.makedirs(os.path.dirname(log_file), exist_ok=True)
    file_handler = logging.FileHandler(log_file)
    file_handler.setLevel(logging.INFO)
    file_handler.setFormatter(
        logging.Formatter(
            "%(asctime)s %(levelname).1s %(name)s %(filename)s:%(lineno)d] %(message)s"
        )
    )
    root.addHandler(file_handler)


def route_worker_logs(worker_index: int, worker_count: int) -> None:
    """Grain's `worker_init_fn` for the loader's worker processes: their console filtered like
    the main process's (`route_library_logs`, no file). A spawned worker starts without absl's
    handler, so each one printed the libraries' warnings again, in Python's bare format."""
    del worker_index, worker_count
    if not flags.FLAGS.is_parsed():  # else absl's first line: "Logging before flag parsing ..."
        flags.FLAGS.mark_as_parsed()
    absl_logging.use_absl_handler()
    route_library_logs()
