"""The videos of a batch: every video file in a folder, or the entries of a manifest file.

A manifest is a `.txt` (one path per line, `#` comments), a `.csv` (a `path` column, optional `id`)
or a `.yaml` (a list of paths, or a mapping id -> path). Manifest paths are relative to the
manifest's folder and may not leave it, so a manifest cannot point the pipeline at arbitrary files.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import yaml

from pipeline.core.errors import InputError

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v")
MANIFEST_SUFFIXES = (".txt", ".csv", ".yaml", ".yml")


@dataclass(frozen=True)
class VideoSource:
    """One input video and the id its outputs are published under."""

    video_id: str
    path: str


def _safe_id(text: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("._") or "video"
    return cleaned[:80]


def _unique_ids(entries: list[tuple[str, Path]]) -> list[VideoSource]:
    seen: dict[str, int] = {}
    sources = []
    for wanted, path in entries:
        base = _safe_id(wanted)
        seen[base] = seen.get(base, 0) + 1
        video_id = base if seen[base] == 1 else f"{base}-{seen[base]}"
        sources.append(VideoSource(video_id, str(path)))
    return sources


def _inside(manifest: Path, entry: str, where: str) -> Path:
    relative = PurePosixPath(entry.strip())
    if relative.is_absolute() or ".." in relative.parts or not relative.parts:
        raise InputError(manifest, f"{where}: path {entry!r} must be relative and stay inside the manifest's folder")
    return manifest.parent / relative


def _manifest_entries(manifest: Path) -> list[tuple[str, Path]]:
    text = manifest.read_text(encoding="utf-8")
    suffix = manifest.suffix.lower()
    if suffix == ".txt":
        lines = [(number, line.strip()) for number, line in enumerate(text.splitlines(), 1)]
        return [(Path(line).stem, _inside(manifest, line, f"line {number}"))
                for number, line in lines if line and not line.startswith("#")]
    if suffix == ".csv":
        rows = list(csv.DictReader(text.splitlines()))
        if rows and "path" not in rows[0]:
            raise InputError(manifest, "a CSV manifest needs a `path` column")
        return [(row.get("id") or Path(row["path"]).stem, _inside(manifest, row["path"], f"row {number}"))
                for number, row in enumerate(rows, 2)]
    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InputError(manifest, f"not valid YAML ({str(exc).splitlines()[0]})") from None
    if isinstance(loaded, list) and all(isinstance(item, str) for item in loaded):
        return [(Path(item).stem, _inside(manifest, item, f"entry {item!r}")) for item in loaded]
    if isinstance(loaded, dict) and all(isinstance(item, str) for item in loaded.values()):
        return [(str(key), _inside(manifest, item, f"entry {key!r}")) for key, item in loaded.items()]
    raise InputError(manifest, "a YAML manifest must be a list of paths or a mapping id -> path")


def discover_videos(location: Path) -> list[VideoSource]:
    """The videos of a folder (its video files, sorted by name) or of a manifest file."""
    location = Path(location)
    if location.is_dir():
        files = sorted(path for path in location.iterdir()
                       if path.is_file() and path.suffix.lower() in VIDEO_SUFFIXES and not path.name.startswith("."))
        entries = [(path.stem, path) for path in files]
    elif location.is_file() and location.suffix.lower() in MANIFEST_SUFFIXES:
        entries = _manifest_entries(location)
    elif location.exists():
        raise InputError(location, f"not a folder of videos or a manifest ({', '.join(MANIFEST_SUFFIXES)})")
    else:
        raise InputError(location, "not found")
    if not entries:
        raise InputError(location, f"no videos found ({', '.join(VIDEO_SUFFIXES)})")
    return _unique_ids(entries)
