"""Write outputs under a temporary name and rename them into place only when complete."""

from __future__ import annotations

import os
import shutil
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pipeline.core.errors import DvaError

# Part of temporary names, which are parsed back: no "-" or "." inside.
HOST = socket.gethostname().replace("-", "_").replace(".", "_")


def _temporary_sibling(final: Path) -> Path:
    return final.parent / f".{final.name}.tmp-{HOST}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(final: Path) -> list[Path]:
    """Remove temporaries of `final` left by killed processes of this host; returns what was removed.

    A temporary is stale when the process named in it is gone. Those of other hosts (a shared
    folder) are left alone: their processes cannot be checked from here.
    """
    removed = []
    for candidate in Path(final).parent.glob(f".{Path(final).name}.tmp-*"):
        parts = candidate.name.rsplit(".tmp-", 1)[1].split(".")[0].rsplit("-", 2)
        if len(parts) != 3:
            continue
        host, pid, _ = parts
        if host == HOST and pid.isdigit() and not _alive(int(pid)):
            _remove(candidate)
            removed.append(candidate)
    return removed


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
    remove_stale_temporaries(final)
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
    remove_stale_temporaries(final)
    # Keep the suffix: some writers pick the format from it.
    temporary = final.parent / f"{_temporary_sibling(final).name}{final.suffix}"
    try:
        yield temporary
    except BaseException:
        _remove(temporary)
        raise
    os.replace(temporary, final)
