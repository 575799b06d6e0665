"""Write outputs under a temporary name and rename them into place only when complete."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pipeline.errors import DvaError


def _temporary_sibling(final: Path) -> Path:
    return final.parent / f".{final.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


@contextmanager
def atomic_output_dir(final: Path) -> Iterator[Path]:
    """Yield an empty temporary folder beside `final`; on success it replaces `final`.

    On any exception the temporary folder is removed and `final` is left as it was, so a
    partial artifact is never visible under its final name.
    """
    final = Path(final)
    if final.exists() and not final.is_dir():
        raise DvaError(f"{final}: output folder path is an existing file; refusing to replace it")
    final.parent.mkdir(parents=True, exist_ok=True)
    temporary = _temporary_sibling(final)
    temporary.mkdir()
    try:
        yield temporary
    except BaseException:
        _remove(temporary)
        raise
    if final.exists():
        # Two renames keep the window without a complete `final` as short as possible.
        retired = _temporary_sibling(final)
        final.rename(retired)
        temporary.rename(final)
        _remove(retired)
    else:
        temporary.rename(final)


@contextmanager
def atomic_output_file(final: Path) -> Iterator[Path]:
    """Yield a temporary file path beside `final` (same suffix); on success it replaces `final`."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    temporary = _temporary_sibling(final).with_suffix(final.suffix)
    try:
        yield temporary
    except BaseException:
        _remove(temporary)
        raise
    os.replace(temporary, final)
