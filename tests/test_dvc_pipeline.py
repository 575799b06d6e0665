"""`dvc repro` of the repository's extract -> align -> encode stages on the trimmed sample, in a
fresh git+DVC repository: outputs appear, a rerun does nothing, and changing an align parameter
reruns align and encode but not extract.

Only these three stages are copied from dvc.yaml: training and later stages take far longer than
a test may, and the caching behaviour they would show is the same.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from pipeline.runs.artifacts import FRAMES_FILE

from .conftest import REPO_ROOT, SAMPLE_FRAMES

STAGES = ("extract", "align", "encode")
VIDEO = "carphone"


def run(command: list[str], cwd: Path, env: dict[str, str]) -> str:
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


@pytest.fixture(scope="module")
def dvc_repo(tmp_path_factory, sample_clip):
    root = tmp_path_factory.mktemp("dvc_repo")
    bin_dir = str(Path(sys.executable).parent)
    if not (Path(bin_dir) / "dvc").exists() and shutil.which("dvc") is None:
        pytest.fail("dvc is not installed in the test environment")
    env = {
        **os.environ,
        "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),  # so `dva` and `dvc` resolve
        "DVC_NO_ANALYTICS": "1",
        # Keep DVC's machine-wide state (repo index, locks) inside the test's folder.
        "DVC_SITE_CACHE_DIR": str(root / ".dvc-site-cache"),
        "OMP_WAIT_POLICY": "PASSIVE",
        "GIT_AUTHOR_NAME": "test",
        "GIT_AUTHOR_EMAIL": "test@example.com",
        "GIT_COMMITTER_NAME": "test",
        "GIT_COMMITTER_EMAIL": "test@example.com",
    }
    repo = root / "repo"
    repo.mkdir()

    source = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())
    # Top-level plots/metrics would name outputs of the stages left out.
    pipeline = {key: source[key] for key in ("vars",) if key in source}
    pipeline["stages"] = {name: source["stages"][name] for name in STAGES}
    (repo / "dvc.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    params["videos"] = {VIDEO: {"path": f"data/raw/{VIDEO}.mp4"}}
    params["extract"] = {**(params.get("extract") or {}), "max_frames": SAMPLE_FRAMES}
    params.setdefault("train", {})["videos"] = None
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    # The stages list the code they run as dependencies; give them the real files to hash.
    for folder in ("stages", "pipeline"):
        shutil.copytree(REPO_ROOT / folder, repo / folder, ignore=shutil.ignore_patterns("__pycache__"))
    (repo / "data" / "raw").mkdir(parents=True)
    shutil.copyfile(sample_clip, repo / "data" / "raw" / f"{VIDEO}.mp4")

    dvc = [bin_dir + "/dvc"] if (Path(bin_dir) / "dvc").exists() else ["dvc"]
    run(["git", "init", "-q"], repo, env)
    run([*dvc, "init", "-q"], repo, env)
    run([*dvc, "config", "core.analytics", "false"], repo, env)
    run([*dvc, "add", "-q", f"data/raw/{VIDEO}.mp4"], repo, env)
    first = run([*dvc, "repro"], repo, env)
    return repo, env, dvc, first


def test_repro_produces_every_stage_output(dvc_repo):
    repo, _, _, output = dvc_repo
    for stage in STAGES:
        assert f"Running stage '{stage}@{VIDEO}'" in output, output
    assert (repo / "data/extract" / VIDEO / FRAMES_FILE).is_file()
    assert pq.read_table(repo / "data/extract" / VIDEO / "frames.parquet").num_rows == SAMPLE_FRAMES
    assert (repo / "data/align" / VIDEO / "crops.npy").is_file()
    assert (repo / "data/align" / VIDEO / "masks.npy").is_file()
    features = pq.read_table(repo / "data/encode" / VIDEO / "features.parquet")
    assert features.num_rows == SAMPLE_FRAMES
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    assert {f"{stage}@{VIDEO}" for stage in STAGES} <= set(lock["stages"])


def test_second_repro_has_nothing_to_do(dvc_repo):
    repo, env, dvc, _ = dvc_repo
    output = run([*dvc, "repro"], repo, env)
    assert "Running stage" not in output, output
    for stage in STAGES:
        assert f"Stage '{stage}@{VIDEO}' didn't change, skipping" in output, output
    assert "Data and pipelines are up to date." in run([*dvc, "status"], repo, env)


def test_changed_align_param_reruns_align_and_encode_only(dvc_repo):
    repo, env, dvc, _ = dvc_repo
    masks_before = (repo / "data/align" / VIDEO / "masks.npy").read_bytes()
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["align"]["mask_feather"] = round(params["align"].get("mask_feather", 0.04) + 0.05, 3)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    status = run([*dvc, "status"], repo, env)
    assert "modified" in status and "align" in status

    output = run([*dvc, "repro"], repo, env)
    assert f"Running stage 'extract@{VIDEO}'" not in output, output
    assert f"Running stage 'align@{VIDEO}'" in output, output
    assert f"Running stage 'encode@{VIDEO}'" in output, output
    # The parameter reached the stage: masks are blurred differently now.
    assert (repo / "data/align" / VIDEO / "masks.npy").read_bytes() != masks_before
    assert "Data and pipelines are up to date." in run([*dvc, "status"], repo, env)


def test_audit_of_a_dvc_output_reads_dvc_lock(dvc_repo, dva_executable):
    repo, env, _, _ = dvc_repo
    result = subprocess.run([dva_executable, "audit", "data/encode/carphone/features.parquet", "--json"],
                            cwd=repo, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["verified"]
    assert [(source["path"], source.get("dvc_file")) for source in report["sources"]] == [
        (f"data/raw/{VIDEO}.mp4", f"data/raw/{VIDEO}.mp4.dvc")
    ]
    stages = {record["stage"]: record for record in report["records"]}
    assert set(stages) == set(STAGES)
    for stage in STAGES:
        assert stages[stage]["run_id"] == f"dvc:{stage}@{VIDEO}"
        assert stages[stage]["dvc"]["lock_entry"] is True
