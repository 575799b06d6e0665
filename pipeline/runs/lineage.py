"""Lineage records: what produced an artifact folder, written beside its outputs as `lineage.json`.

A record holds the sha256 of every input file (paths relative to the record's folder, so a tree
can be moved), the parameters used, the code version (git revision + dirty flag), key package
versions, the sha256 of every weight file used (the autoencoder checkpoint also carries the hashes
of its training data), the run id (a DVC stage or a Prefect flow run) and the sha256 of every
output file. `pipeline.runs.audit` walks these records back to the raw videos.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import subprocess
import sys
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from pydantic import BaseModel

from pipeline.core.hashing import sha256_file

LINEAGE_FILE = "lineage.json"
# What varies from run to run (run id, time, command, code revision, package versions) lives beside the
# record, in a file `.dvcignore` excludes: rerunning a stage on the same data then leaves its DVC output,
# and so everything downstream, unchanged.
RUN_FILE = "lineage.run.json"
LINEAGE_FILES = (LINEAGE_FILE, RUN_FILE)
FORMAT = "dva-lineage-v1"
PROJECT_ROOT = Path(__file__).resolve().parent.parent
# Packages whose version changes what the pipeline computes or how it is run.
KEY_PACKAGES = ("dva-pipeline", "torch", "numpy", "av", "opencv-python-headless", "dlib-bin", "onnxruntime",
                "open-clip-torch", "safetensors", "dvc", "prefect")
CODE_PATHS = ("pipeline", "stages", "workflows", "pyproject.toml")


@functools.cache
def code_version(root: Path = PROJECT_ROOT) -> dict:
    """Git revision of the pipeline's code and whether its code files differ from that revision."""
    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    revision = git("rev-parse", "HEAD")
    if revision is None:
        return {"git_revision": None, "dirty": None}
    # Only code counts: dvc.lock and data change during a run without changing what ran.
    changes = git("status", "--porcelain", "--untracked-files=no", "--", *CODE_PATHS)
    return {"git_revision": revision, "dirty": bool(changes)}


@functools.cache
def package_versions() -> dict[str, str]:
    """Versions of the key packages that are installed, plus Python's."""
    versions = {"python": platform.python_version()}
    for name in KEY_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


# (device, inode, size, mtime) -> sha256: a flow hashes the same upstream files for several tasks.
_HASHES: dict[tuple[int, int, int, int], str] = {}


def file_sha256(path: Path) -> str:
    """sha256 of a file, memoised on its identity and modification time within this process."""
    status = os.stat(path)
    key = (status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns)
    if key not in _HASHES:
        _HASHES[key] = sha256_file(path)
    return _HASHES[key]


def folder_files(folder: Path) -> list[Path]:
    """Files under `folder` (recursively, sorted), skipping hidden temporaries."""
    return sorted(
        path for path in Path(folder).rglob("*")
        if path.is_file() and not any(part.startswith(".") for part in path.relative_to(folder).parts)
    )


def expand_inputs(inputs: Iterable[Path]) -> list[Path]:
    """Input paths with folders replaced by the files they hold."""
    files: list[Path] = []
    for path in map(Path, inputs):
        files.extend(folder_files(path) if path.is_dir() else [path])
    return files


def _jsonable(value: object) -> object:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, Mapping):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    if isinstance(value, Path):
        return str(value)
    return value


def write_lineage(
    work: Path,
    final: Path,
    *,
    stage: str,
    inputs: Iterable[Path],
    params: Mapping[str, object],
    run_id: str,
    weights: Mapping[str, Path] | None = None,
    weight_hashes: Mapping[str, str] | None = None,
) -> dict:
    """Write `work/lineage.json` for a stage whose outputs are in `work`, to be renamed to `final`.

    `weights` are weight files by role (hashed here; an autoencoder checkpoint also contributes the
    training-data hashes in its metadata); `weight_hashes` are weights identified by hash only
    (those shipped inside a package, hashed by their loader).
    """
    work, final = Path(work), Path(final)
    anchor = final.resolve()

    def relative(path: Path) -> str:
        return os.path.relpath(Path(path).resolve(), anchor)

    weight_records = {}
    for role, path in (weights or {}).items():
        # A weights file named by absolute path (a one-off `dva edit`'s model in a download folder) lies
        # outside the project: its path is recorded as given, its sha256 identifies it either way.
        shown = str(path) if Path(path).is_absolute() else relative(path)
        record = {"path": shown, "sha256": file_sha256(path)}
        training = _checkpoint_training_data(Path(path))
        if training is not None:
            record["training_data_sha256"] = training
        weight_records[role] = record
    for role, digest in (weight_hashes or {}).items():
        weight_records[role] = {"path": None, "sha256": digest}
    record = {
        "format": FORMAT,
        "stage": stage,
        "inputs": [{"path": relative(path), "sha256": file_sha256(path)} for path in expand_inputs(inputs)],
        "weights": weight_records,
        "params": _jsonable(params),
        "outputs": {
            path.relative_to(work).as_posix(): sha256_file(path)
            for path in folder_files(work) if path.name not in LINEAGE_FILES
        },
    }
    run = {
        "run_id": run_id,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "code": code_version(),
        "packages": package_versions(),
        "command": [Path(sys.argv[0]).name, *sys.argv[1:]] if sys.argv else [],
    }
    (work / LINEAGE_FILE).write_text(json.dumps(record, indent=2) + "\n")
    (work / RUN_FILE).write_text(json.dumps(run, indent=2) + "\n")
    return record | run


def _checkpoint_training_data(path: Path) -> dict | None:
    """Training-data hashes recorded in an autoencoder checkpoint's metadata, if it is one."""
    if path.suffix != ".safetensors":
        return None
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            recorded = (handle.metadata() or {}).get("training_data_sha256")
    except Exception:  # noqa: BLE001 - not a readable safetensors file: it simply has no such record
        return None
    return json.loads(recorded) if recorded else None


def read_lineage(folder: Path) -> dict | None:
    """The lineage record in `folder` with its run facts, or None when there is none."""
    path = Path(folder) / LINEAGE_FILE
    if not path.is_file():
        return None
    run = Path(folder) / RUN_FILE
    return json.loads(path.read_text()) | (json.loads(run.read_text()) if run.is_file() else {})


def cli_run_id(environ: Mapping[str, str]) -> str:
    """Run id for a stage started from the command line: the DVC stage when `dvc repro` runs it."""
    stage = environ.get("DVC_STAGE")
    return f"dvc:{stage}" if stage else f"cli:{os.getpid()}@{platform.node()}"
