"""Audit an artifact: follow lineage records back to the raw videos and verify every hash on disk.

Each record lists the sha256 of its inputs and outputs; an input with a record of its own is
followed, one without is a source (a raw video, a reference image). Records written by `dvc repro`
(run id `dvc:<stage>`) are also checked against `dvc.lock`: every file dependency and output that
DVC recorded by md5 must still match.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from pipeline.core.errors import InputError
from pipeline.core.hashing import file_digest
from pipeline.runs.lineage import LINEAGE_FILE, LINEAGE_FILES, file_sha256, read_lineage

CODE_SUFFIXES = (".py", ".toml")


@dataclass
class AuditReport:
    """The chain of records behind a target file, the sources and weights it reaches, and what failed."""

    target: str
    target_sha256: str | None = None
    records: list[dict] = field(default_factory=list)
    sources: list[dict] = field(default_factory=list)
    weights: list[dict] = field(default_factory=list)
    files_verified: int = 0
    problems: list[dict] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict:
        return {
            "target": self.target,
            "target_sha256": self.target_sha256,
            "verified": self.ok,
            "files_verified": self.files_verified,
            "records": self.records,
            "sources": self.sources,
            "weights": self.weights,
            "problems": self.problems,
        }


def _display(path: Path) -> str:
    """Relative to the working folder when inside it, absolute otherwise."""
    relative = os.path.relpath(path)
    return str(Path(path).resolve()) if relative.startswith("..") else relative


def find_record(path: Path) -> Path | None:
    """The folder whose lineage record lists `path` as an output (searching its folder and above)."""
    path = Path(path).resolve()
    for folder in path.parents:
        record = read_lineage(folder)
        if record is None:
            continue
        relative = path.relative_to(folder).as_posix()
        if relative in LINEAGE_FILES or relative in record.get("outputs", {}):
            return folder
    return None


def _dvc_root(folder: Path) -> Path | None:
    for candidate in (folder, *folder.parents):
        if (candidate / "dvc.lock").is_file():
            return candidate
    return None


class _Auditor:
    def __init__(self, report: AuditReport):
        self.report = report
        self.seen_records: set[Path] = set()
        self.seen_sources: set[Path] = set()
        self.seen_weights: set[tuple[str, str]] = set()
        self.locks: dict[Path, dict] = {}

    def problem(self, path: Path, message: str) -> None:
        self.report.problems.append({"path": _display(path), "problem": message})

    def verify(self, path: Path, expected: str, recorded_in: Path) -> bool:
        """Check one file against the hash a record holds for it."""
        if not path.is_file():
            self.problem(path, f"missing (recorded in {_display(recorded_in / LINEAGE_FILE)})")
            return False
        if file_sha256(path) != expected:
            self.problem(path, f"changed: sha256 differs from {_display(recorded_in / LINEAGE_FILE)}")
            return False
        self.report.files_verified += 1
        return True

    def follow(self, path: Path, expected: str, recorded_in: Path, depth: int, source: bool = True) -> None:
        """Verify an input and walk to the record that produced it, or note it as a source."""
        if not self.verify(path, expected, recorded_in):
            return
        producer = find_record(path)
        if producer is not None:
            written = read_lineage(producer)["outputs"].get(path.relative_to(producer).as_posix(), expected)
            if written != expected:
                self.problem(path, f"differs from what {_display(producer / LINEAGE_FILE)} recorded when written")
            self.walk(producer, depth + 1)
            return
        if not source or path in self.seen_sources:
            return
        self.seen_sources.add(path)
        source = {"path": _display(path), "sha256": expected}
        dvc_file = path.with_name(path.name + ".dvc")
        if dvc_file.is_file():
            outs = (yaml.safe_load(dvc_file.read_text()) or {}).get("outs") or [{}]
            recorded = outs[0].get("md5")
            source["dvc_file"] = _display(dvc_file)
            if recorded != file_digest(path, "md5"):
                self.problem(path, f"md5 differs from {_display(dvc_file)}")
        self.report.sources.append(source)

    def walk(self, folder: Path, depth: int) -> None:
        if folder in self.seen_records:
            return
        self.seen_records.add(folder)
        record = read_lineage(folder)
        entry = {
            "folder": _display(folder),
            "depth": depth,
            "stage": record.get("stage"),
            "run_id": record.get("run_id"),
            "created": record.get("created"),
            "code": record.get("code"),
            "params": record.get("params"),
            "packages": record.get("packages"),
        }
        self.report.records.append(entry)
        if str(record.get("run_id", "")).startswith("dvc:"):
            entry["dvc"] = self.check_dvc_lock(folder, record["run_id"][4:])
        for role, weight in record.get("weights", {}).items():
            self.weight(folder, role, weight, depth)
        for item in record.get("inputs", []):
            self.follow((folder / item["path"]).resolve(), item["sha256"], folder, depth)

    def weight(self, folder: Path, role: str, weight: dict, depth: int) -> None:
        info = {"role": role, "path": None, "sha256": weight["sha256"]}
        if weight.get("path"):
            path = (folder / weight["path"]).resolve()
            info["path"] = _display(path)
            if "training_data_sha256" in weight:
                info["training_files"] = len(weight["training_data_sha256"])
            self.follow(path, weight["sha256"], folder, depth, source=False)
        if (role, weight["sha256"]) not in self.seen_weights:
            self.seen_weights.add((role, weight["sha256"]))
            self.report.weights.append(info)

    def check_dvc_lock(self, folder: Path, stage: str) -> dict:
        """Compare the files `dvc.lock` records for `stage` with those on disk (md5, as DVC hashes)."""
        root = _dvc_root(folder)
        if root is None:
            return {"stage": stage, "lock": None}
        if root not in self.locks:
            self.locks[root] = yaml.safe_load((root / "dvc.lock").read_text()) or {}
        locked = self.locks[root].get("stages", {}).get(stage)
        result = {"stage": stage, "lock": _display(root / "dvc.lock"), "cmd": None, "code_changed": []}
        if locked is None:
            result["lock_entry"] = False
            return result
        result["cmd"] = locked.get("cmd")
        result["lock_entry"] = True
        for kind in ("deps", "outs"):
            for item in locked.get(kind, []):
                path = root / item["path"]
                if str(item.get("md5", "")).endswith(".dir") or not path.is_file():
                    continue  # folders are covered file by file by the lineage records
                if file_digest(path, "md5") == item.get("md5"):
                    continue
                if path.suffix in CODE_SUFFIXES:
                    result["code_changed"].append(item["path"])
                else:
                    self.problem(path, f"md5 differs from dvc.lock (stage {stage})")
        return result


def audit(path: Path) -> AuditReport:
    """Verify `path` and every artifact, source and weight file in the chain that produced it."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, "not found")
    target = path.resolve()
    files = [target] if target.is_file() else []
    if target.is_dir():
        if read_lineage(target) is None:
            raise InputError(path, f"no {LINEAGE_FILE} in this folder: not an artifact folder of this pipeline")
        files = [target / name for name in read_lineage(target)["outputs"]]
    folder = target if target.is_dir() else find_record(target)
    if folder is None:
        raise InputError(path, f"no lineage record lists this file ({LINEAGE_FILE} in its folder or above)")
    report = AuditReport(target=_display(target))
    auditor = _Auditor(report)
    outputs = read_lineage(folder)["outputs"]
    for file in files:
        relative = file.relative_to(folder).as_posix()
        if relative in LINEAGE_FILES:
            continue
        if auditor.verify(file, outputs[relative], folder) and file == target:
            report.target_sha256 = outputs[relative]
    auditor.walk(folder, 0)
    return report
