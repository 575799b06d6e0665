"""Content hashes of files (for weights recorded in artifact metadata and lineage)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path


def file_digest(path: Path, algorithm: str = "sha256") -> str:
    """Hex digest of a file, streamed (md5 is what DVC records; sha256 everywhere else)."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, algorithm).hexdigest()


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file."""
    return file_digest(path)


def content_key(*parts: object) -> str:
    """A short stable hash of JSON-able parts (pydantic models included), for content-addressed folders."""
    blob = json.dumps(parts, sort_keys=True, default=_plain)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _plain(value: object) -> object:
    dump = getattr(value, "model_dump", None)
    return dump(mode="json") if dump else str(value)
