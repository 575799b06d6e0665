"""Checks that a folder handed to a stage is the artifact it expects, before anything is read."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from pipeline.errors import InputError


def require_artifact(folder: Path, files: Iterable[str], made_by: str) -> Path:
    """`folder`, after checking it holds every file in `files`; `made_by` is the `dva` command that makes them.

    A missing file is one InputError naming the file looked for and the command that makes it.
    """
    folder = Path(folder)
    for name in files:
        if not (folder / name).is_file():
            raise InputError(folder / name, f"not found: {folder} is not an output of `dva {made_by}`")
    return folder
