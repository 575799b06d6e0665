"""Composed edits: two classifier attributes and an expression curve in one decode, one cache key.

The composition itself (identity edits and motion changes applied in order, through the kind interface),
then the same composed edit through `dva edit` (its classifier named by absolute path, as a one-off run
allows), `dva batch` and a DVC edit stage (slow: a whole `dvc repro` up to the edit).
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
import yaml

from pipeline.editing import motion
from pipeline.editing.driving import MotionInputs
from pipeline.editing.editing import AttributeClassifier, classifier_edit
from pipeline.editing.kinds import IdentityContext, MotionContext, parse_edit
from pipeline.faces.tracking import NO_FACE
from pipeline.runs.artifacts import EDIT_INFO_FILE, EDIT_LANDMARKS_FILE, read_features

from .conftest import MICRO_PARAMS, REPO_ROOT, SAMPLE_FRAMES

ATTRIBUTES = {"Smiling": 1.5, "Young": -1.0}
EXPRESSIONS = {"smile": 0.5, "mouth_open": [[0.0, 0.0], [0.5, 0.8]]}
IDENTITY_DIM = 128  # the dlib encoder's codes (encode.backend's default), which the micro model is trained on


def write_classifier(path: Path) -> Path:
    """Linear classifiers of the two attributes on random directions (what they mean does not matter here)."""
    rng = np.random.default_rng(0)
    path.parent.mkdir(parents=True, exist_ok=True)
    AttributeClassifier(list(ATTRIBUTES), rng.normal(size=(2, IDENTITY_DIM)), np.zeros(2), np.zeros(IDENTITY_DIM),
                        np.ones(IDENTITY_DIM)).save(path)
    return path


def composed(classifier: str) -> dict:
    return {"kind": "compose", "edits": [{"kind": "classifier", "classifier": classifier, "attributes": ATTRIBUTES},
                                         {"kind": "expression", "expressions": EXPRESSIONS}]}


def _expected_codes(sample_run) -> np.ndarray:
    features = read_features(sample_run.encode)
    valid = np.array([state != NO_FACE for state in features.status])
    return motion.expression_codes(features.landmarks, valid, MotionInputs(sample_run.extract, {}).frame_times(),
                                   EXPRESSIONS)


def test_parts_apply_in_order_through_the_kind_interface(sample_run, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_classifier(tmp_path / "data/classifier.safetensors")
    spec = parse_edit(composed("data/classifier.safetensors"))
    features = read_features(sample_run.encode)
    video_identity = np.asarray(features.video_identity, dtype=np.float32)
    context = IdentityContext("both", None, video_identity, None, "cpu", None, None, None, False)
    edit_one, facts = spec.identity_edit(context)
    classifier = AttributeClassifier.load(tmp_path / "data/classifier.safetensors")
    np.testing.assert_array_equal(edit_one(video_identity), classifier_edit(video_identity, classifier, ATTRIBUTES))
    assert len(facts["parts"]) == 2 and "classifier_sha256" in facts["parts"][0]

    valid = np.array([state != NO_FACE for state in features.status])
    codes, _ = spec.motion_codes(MotionContext("both", features.landmarks, valid, None,
                                               MotionInputs(sample_run.extract, {})))
    np.testing.assert_array_equal(codes, _expected_codes(sample_run))
    assert not np.array_equal(codes, features.landmarks)
    # What the kind reads, for keys and lineage: the classifier, once per part that loads one.
    assert spec.weight_files() == {"part0.classifier": Path("data/classifier.safetensors")}
    assert spec.driven_by() is None


def test_a_composed_edit_follows_at_most_one_driver():
    from pipeline.core.errors import ParamsError

    part = {"kind": "motion", "driver": "data/raw/driver.mp4"}
    assert parse_edit({"kind": "compose", "edits": [part]}).driven_by() == "data/raw/driver.mp4"
    with pytest.raises(ParamsError, match="at most one part"):
        parse_edit({"kind": "compose", "edits": [part, part]})


def test_dva_edit_applies_a_composed_edit_in_one_decode(micro_model, sample_clip, sample_run, tmp_path):
    from workflows.one_off import edit_one_video

    # A classifier in a "download folder", outside any project: a one-off run may name it by absolute path.
    classifier = write_classifier(tmp_path / "downloads" / "attributes.safetensors")
    params = micro_model.settings(extract={"max_frames": SAMPLE_FRAMES})
    out = tmp_path / "both.mp4"
    edit_one_video(sample_clip, micro_model.checkpoint, json.dumps(composed(str(classifier))), out, params,
                   tmp_path / "work", progress=False)
    with av.open(str(out)) as container:
        assert sum(1 for _ in container.decode(video=0)) == SAMPLE_FRAMES
    edits = list((tmp_path / "work" / "edit").iterdir())
    assert len(edits) == 1  # one cache key for the whole composition
    info = json.loads((edits[0] / EDIT_INFO_FILE).read_text())
    video_identity = np.asarray(info["video_identity"], dtype=np.float32)
    expected = classifier_edit(video_identity, AttributeClassifier.load(classifier), ATTRIBUTES)
    np.testing.assert_allclose(info["edited_identity"], expected, rtol=0, atol=1e-6)  # float32 -> float64 record
    np.testing.assert_array_equal(np.load(edits[0] / EDIT_LANDMARKS_FILE), _expected_codes(sample_run))
    lineage = json.loads((edits[0] / "lineage.json").read_text())
    assert lineage["weights"]["part0.classifier"]["path"] == str(classifier)
    assert len(lineage["weights"]["part0.classifier"]["sha256"]) == 64


def test_dva_batch_runs_a_composed_edit(micro_model, sample_clip, tmp_path, monkeypatch, video_tools):
    from workflows.batch import run_batch

    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect"))
    monkeypatch.setenv("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    monkeypatch.setenv("PREFECT_LOGGING_LEVEL", "WARNING")
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.chdir(tmp_path)
    write_classifier(tmp_path / "data/classifiers/classifier.safetensors")
    videos = tmp_path / "videos"
    videos.mkdir()
    with av.open(str(sample_clip)) as container:
        frames = [frame.to_ndarray(format="rgb24") for _, frame in zip(range(6), container.decode(video=0))]
    video_tools.write_video(videos / "clip.mp4", frames)
    params = copy.deepcopy(MICRO_PARAMS) | {
        "extract": {"max_frames": 6}, "edits": {"both": composed("data/classifiers/classifier.safetensors")}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    rows = run_batch(videos, micro_model.checkpoint, ["both"], tmp_path / "out", tmp_path / "params.yaml",
                     retries=0, retry_delay=0, quiet=True)
    assert [(row.video, row.edit, row.status) for row in rows] == [("clip", "both", "completed")]
    with av.open(str(rows[0].output)) as container:
        assert sum(1 for _ in container.decode(video=0)) == 6


@pytest.mark.slow
def test_dvc_repro_runs_a_composed_edit_stage(micro_model, sample_clip, tmp_path):
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""), "DVC_NO_ANALYTICS": "1",
           "DVC_SITE_CACHE_DIR": str(tmp_path / ".dvc-site-cache"), "OMP_WAIT_POLICY": "PASSIVE",
           "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@example.com"}
    repo = tmp_path / "repo"
    source = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())
    # The trained model stands in for the train stage's output (training is another test's business).
    stages = {name: source["stages"][name] for name in ("extract", "align", "encode", "invert", "edit")}
    repo.mkdir()
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}, sort_keys=False))
    # DVC reads each stage's sections from the file: start from the project's, then the micro model's.
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text()) | copy.deepcopy(MICRO_PARAMS) | {
        "conventions": "project", "videos": {"sample": {"path": "data/raw/sample.mp4"}}, "drivers": {},
        "extract": {"max_frames": SAMPLE_FRAMES},
        "edits": {"both": composed("data/classifiers/classifier.safetensors")}}
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for folder in ("stages", "pipeline"):
        shutil.copytree(REPO_ROOT / folder, repo / folder, ignore=shutil.ignore_patterns("__pycache__"))
    (repo / "data/raw").mkdir(parents=True)
    (repo / "data/drivers").mkdir()
    (repo / "data/train").mkdir()
    shutil.copyfile(sample_clip, repo / "data/raw/sample.mp4")
    shutil.copyfile(micro_model.checkpoint, repo / "data/train/model.safetensors")
    write_classifier(repo / "data/classifiers/classifier.safetensors")

    def run(*command: str) -> str:
        result = subprocess.run(command, cwd=repo, env=env, capture_output=True, text=True, timeout=900)
        assert result.returncode == 0, f"{command} failed:\n{result.stdout}\n{result.stderr}"
        return result.stdout

    dvc = str(Path(bin_dir) / "dvc") if (Path(bin_dir) / "dvc").exists() else "dvc"
    run("git", "init", "-q")
    run(dvc, "init", "-q")
    run(dvc, "add", "-q", "data/raw/sample.mp4", "data/train/model.safetensors")
    output = run(dvc, "repro", "edit@sample-both")
    assert "Running stage 'edit@sample-both'" in output
    info = json.loads((repo / "data/edit/sample/both" / EDIT_INFO_FILE).read_text())
    assert [part["kind"] for part in info["spec"]["edits"]] == ["classifier", "expression"]
    assert len(info["parts"]) == 2
