"""The run directory (workdir): where a path given by a user is resolved.

orbax refuses relative checkpoint paths, and a relative path means something else once anything
changes the working directory. `resolve` is applied where a workdir enters a component that
writes or reads it by path (the Checkpointer, through which train, eval, predict and
`init_from` all pass), so every caller may hand in what the user typed.
"""

from __future__ import annotations

import os

from etils import epath


def is_remote(path: str | os.PathLike) -> bool:
    """Whether `path` names an object store or other URL-style location (gs://, s3://, ...)."""
    return "://" in os.fspath(path)


def resolve(path: str | os.PathLike) -> epath.Path:
    """An absolute local path, or a URL-style path untouched.

    A relative path is taken against the current directory, where every other file of the run
    (config.json, metrics.jsonl, eval/) is written too. `~` is not expanded (no shell expands it
    in `--workdir=~/x` either), so all of the run's files stay in one place.
    """
    text = os.fspath(path)
    if is_remote(text):
        return epath.Path(text)
    return epath.Path(os.path.abspath(text))
