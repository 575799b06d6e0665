"""`dva audit` on a `dva batch` output: the chain reaches the raw video and the checkpoint with
verified hashes; one changed byte in an intermediate makes it fail, naming that file."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from pipeline.core.hashing import sha256_file

from .test_flows import batch_setup, first_batch, prefect_home  # noqa: F401 - shared fixtures


def audit(dva: str, target: Path, *options: str) -> subprocess.CompletedProcess:
    return subprocess.run([dva, "audit", str(target), *options], capture_output=True, text=True, timeout=300)


def test_audit_of_a_batch_output_reaches_the_raw_video(first_batch, batch_setup, dva_executable):  # noqa: F811
    out, rows = first_batch
    result = audit(dva_executable, Path(rows[0].output), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["verified"] and not report["problems"]
    assert report["target_sha256"] == sha256_file(Path(rows[0].output))
    raw = batch_setup[1] / "clip 0.mp4"
    assert sha256_file(raw) in {source["sha256"] for source in report["sources"]}
    assert sha256_file(batch_setup[3]) in {weight["sha256"] for weight in report["weights"]}
    stages = {record["stage"] for record in report["records"]}
    assert {"publish", "evaluate", "render", "edit", "invert", "encode", "align", "extract", "train"} <= stages
    record = next(record for record in report["records"] if record["stage"] == "render")
    assert record["run_id"].startswith("prefect:") and record["code"]["git_revision"]
    assert "torch" in record["packages"]


def test_audit_names_a_changed_intermediate(first_batch, dva_executable):  # noqa: F811
    _, rows = first_batch
    target = Path(rows[0].output)
    report = json.loads(audit(dva_executable, target, "--json").stdout)
    invert_folder = next(Path(record["folder"]) for record in report["records"] if record["stage"] == "invert")
    noise = (invert_folder / "noise.npy").resolve()
    original = noise.read_bytes()
    changed = bytearray(original)
    changed[len(changed) // 2] ^= 0xFF
    try:
        noise.write_bytes(bytes(changed))
        result = audit(dva_executable, target)
    finally:
        noise.write_bytes(original)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    errors = result.stderr.strip().splitlines()
    assert errors and all(line.startswith("error: ") for line in errors)
    assert any("noise.npy: changed" in line for line in errors), result.stderr
    assert result.stdout.strip().splitlines()[-1].startswith("FAILED")
    assert audit(dva_executable, target).returncode == 0


def test_audit_of_a_file_without_lineage_is_a_one_line_error(tmp_path, dva_executable):
    stray = tmp_path / "stray.mp4"
    stray.write_bytes(b"not from the pipeline")
    result = audit(dva_executable, stray)
    assert result.returncode == 1
    assert result.stderr.strip() == f"error: {stray}: no lineage record lists this file (lineage.json in its folder or above)"
