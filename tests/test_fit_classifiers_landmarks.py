"""Classifier fitting on labels the project makes offline: expression attributes measured from the landmarks of
the pipeline's own aligned faces (`fit_classifiers.source: landmarks`), and the DVC stage that runs it.

The geometry is checked against values worked by hand on synthetic landmark sets; the stage runs on the
session's trimmed sample (extract -> align -> encode of its first frames, `tests/conftest.py`).
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
import typer
import yaml
from typer.testing import CliRunner

from pipeline.core.errors import ParamsError
from pipeline.editing.classifiers import fit_attribute_classifiers
from pipeline.editing.editing import AttributeClassifier
from pipeline.editing.settings import FitClassifiersParams
from pipeline.faces.landmark_attributes import (
    MOUTH_OPEN,
    SMILING,
    attribute_measures,
    mouth_geometry,
    split_within_groups,
)
from pipeline.params import parse_params
from stages import fit_classifiers as stage

from .conftest import REPO_ROOT

# ----------------------------------------------------------------------------------------------
# Geometry on hand-worked landmark sets

# Only the eyes and the mouth are read; the other 41 points stay at the origin.
EYES = [(16, 30), (18, 28), (22, 28), (24, 30), (22, 32), (18, 32)]  # mean (20, 30); the other eye +24 in x
INNER_LIPS = {60: (25, 60), 61: (29, 58), 62: (32, 57), 63: (35, 58), 64: (39, 60), 65: (35, 62), 66: (32, 64),
              67: (29, 62)}


def _face(corners=((23, 60), (41, 60))) -> np.ndarray:
    points = np.zeros((68, 2))
    points[36:42] = EYES
    points[42:48] = np.array(EYES) + (24, 0)
    points[48], points[54] = corners
    for index, xy in INNER_LIPS.items():
        points[index] = xy
    return points


# Worked by hand. Eye centres (20, 30) and (44, 30): IOD 24, the face's up is (0, -1) (image y points down).
# Inner-lip gaps 62-58, 64-57, 62-58 = 4, 7, 4: mean 5 -> 5/24. Width 41-23 = 18 -> 18/24. Inner-lip centre
# (256/8, 481/8) = (32, 60.125); corner midpoint (32, 60), 0.125 above it -> 0.125/24.
REST = {"opening": 5 / 24, "width": 18 / 24, "corner_lift": 0.125 / 24}
# Corners 2 px outward and 3 px up each: width 22/24, midpoint (32, 57), 3.125 above the centre.
SMILE = {"opening": 5 / 24, "width": 22 / 24, "corner_lift": 3.125 / 24}
# Exact up to float64 rounding of a few sums of small integers; a 1e-12 slack absorbs it.
EXACT = 1e-12


def _rotated(points: np.ndarray, degrees: float, scale: float, shift: tuple[float, float]) -> np.ndarray:
    angle = np.deg2rad(degrees)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    return points @ rotation.T * scale + shift


def test_mouth_geometry_matches_the_hand_worked_values():
    faces = np.stack([_face(), _face(corners=((21, 57), (43, 57)))])
    geometry = mouth_geometry(faces)
    for key, value in REST.items():
        np.testing.assert_allclose(geometry[key], [value, SMILE[key]], rtol=0, atol=EXACT, err_msg=key)
    measures = attribute_measures(faces)
    np.testing.assert_allclose(measures[MOUTH_OPEN], [5 / 24, 5 / 24], rtol=0, atol=EXACT)
    np.testing.assert_allclose(measures[SMILING], [18.125 / 24, 25.125 / 24], rtol=0, atol=EXACT)


@pytest.mark.parametrize("degrees, scale, shift", [(90, 1, (0, 0)), (-30, 2.5, (100, -40)), (180, 0.5, (7, 7))])
def test_measures_ignore_the_faces_size_position_and_in_plane_rotation(degrees, scale, shift):
    moved = _rotated(_face(), degrees, scale, shift)
    geometry = mouth_geometry(moved[None])
    for key, value in REST.items():
        # Rotation by cos/sin of a float angle: errors of a few ulp of the 100-px coordinates.
        np.testing.assert_allclose(geometry[key], [value], rtol=0, atol=1e-9, err_msg=key)


def test_a_face_without_an_eye_distance_measures_nan_and_bad_shapes_are_refused():
    flat = _face()
    flat[36:48] = (30, 30)
    assert np.isnan(mouth_geometry(flat[None])["width"]).all()
    with pytest.raises(ValueError, match=r"\(N, 68, 2\)"):
        mouth_geometry(np.zeros((2, 5, 2)))


def test_labels_split_at_each_groups_median():
    measure = np.array([1.0, 4.0, 2.0, 3.0, 10.0, 10.0, 10.0, 5.0, 7.0, 6.0])
    groups = np.array(["a", "a", "a", "a", "b", "b", "b", "c", "c", "c"])
    labels, medians = split_within_groups(measure, groups)
    # a: median 2.5; b: all equal to their median, so all 0; c: odd, the median row itself is 0.
    assert labels.tolist() == [0, 1, 0, 1, 0, 0, 0, 0, 1, 0]
    assert medians == {"a": 2.5, "b": 10.0, "c": 6.0}
    with pytest.raises(ValueError, match=r"\(N,\)"):
        split_within_groups(measure, groups[:3])


# ----------------------------------------------------------------------------------------------
# Cross-validation over groups of rows that are not independent


def test_grouped_cross_validation_does_not_score_copies_of_training_rows():
    # 20 "clips" of 10 near-identical frames each, labels drawn per clip at random: no real signal. A random
    # split scores each held-out frame with a classifier that trained on its copies (a high AUC); holding
    # out whole clips measures what is there: chance.
    rng = np.random.default_rng(0)
    clips = np.repeat(np.arange(20), 10)
    codes = rng.normal(size=(20, 64))[clips] + 0.01 * rng.normal(size=(200, 64))
    labels = pd.DataFrame({"A": np.tile([0, 1], 10)[rng.permutation(20)][clips]})
    _, random_split = fit_attribute_classifiers(codes, labels, seed=0)
    classifier, grouped = fit_attribute_classifiers(codes, labels, seed=0, groups=clips)
    assert random_split["A"] > 0.95
    assert grouped["A"] < 0.75
    # The classifier returned is fitted on every row: it separates the training labels themselves.
    logits = classifier.logits(codes)[:, 0]
    assert ((logits > 0) == labels["A"].to_numpy().astype(bool)).mean() > 0.95
    with pytest.raises(ValueError, match="at least 2 groups"):
        fit_attribute_classifiers(codes, labels, groups=np.zeros(200))
    with pytest.raises(ValueError, match="groups must be"):
        fit_attribute_classifiers(codes, labels, groups=clips[:5])


# ----------------------------------------------------------------------------------------------
# The stage on the trimmed sample


def _app() -> typer.Typer:
    from stages.cli import one_line_errors

    app = typer.Typer()
    app.command("fit-classifiers")(one_line_errors(stage.cli))
    return app


@pytest.fixture
def project(sample_run, tmp_path, monkeypatch):
    """A project folder whose data/ links the sample's align and encode outputs as video `sample`."""
    monkeypatch.chdir(tmp_path)
    for name, folder in (("align", sample_run.align), ("encode", sample_run.encode)):
        (tmp_path / "data" / name).mkdir(parents=True)
        (tmp_path / "data" / name / "sample").symlink_to(folder, target_is_directory=True)
    return tmp_path


def _params(folder, listed=("sample",), **section) -> str:
    path = folder / "params.yaml"
    raw = {"videos": {video: {"path": f"data/raw/{video}.mp4"} for video in listed},
           "fit_classifiers": {"source": "landmarks", **section}}
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def _fit(params: str, out: str = "data/classifiers"):
    return CliRunner().invoke(_app(), [out, "--params", params, "--data-root", "data", "--quiet"])


def test_landmark_labels_fit_a_classifier_that_a_classifier_edit_uses(project, sample_run):
    from pipeline.editing.kinds import IdentityContext, parse_edit
    from pipeline.runs.artifacts import read_alignment, read_features

    result = _fit(_params(project))
    assert result.exit_code == 0, result.output
    out = project / "data" / "classifiers"
    assert sorted(path.name for path in out.iterdir()) == [
        "card.json", "classifier.safetensors", "lineage.json", "lineage.run.json", "metrics.json"]

    alignment = read_alignment(sample_run.align)
    detected = sum(status == "ok" for status in alignment.status)
    card = json.loads((out / "card.json").read_text())
    assert card["source"] == "landmarks" and card["attributes"] == [MOUTH_OPEN, SMILING]
    assert set(card["label_rules"]) == {MOUTH_OPEN, SMILING}
    assert card["faces_used"] == detected and card["videos"]["sample"]["rows"] == len(alignment.status)
    for attribute in (MOUTH_OPEN, SMILING):
        counts = card["videos"]["sample"]["counts"][attribute]
        # A median split of one person: the two classes differ by at most the median row itself.
        assert counts["0"] + counts["1"] == detected and 0 <= counts["0"] - counts["1"] <= 1
    assert card["encoder"] == "dlib" and card["identity_dim"] == 128
    assert card["videos"]["sample"]["crop_size"] == 64 and card["videos"]["sample"]["landmark_backend"] == "dlib"
    assert card["auc_method"].startswith("cross-validated over 2 folds")  # 2 runs of 12 frames in the trim
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["auc"] == card["auc"] and set(metrics["auc"]) == {MOUTH_OPEN, SMILING}

    # The edit kind reads the file as it is: the Smiling direction raises the Smiling logit.
    classifier = AttributeClassifier.load(out / "classifier.safetensors")
    video_identity = read_features(sample_run.encode).video_identity
    spec = parse_edit({"kind": "classifier", "classifier": "data/classifiers/classifier.safetensors",
                       "attributes": {SMILING: 2.0}})
    context = IdentityContext(name="smile", model=None, video_identity=video_identity, first_frame=None,
                              device=torch.device("cpu"), align=None, encode=None, edit=None, progress=False)
    edit, facts = spec.identity_edit(context)
    edited = edit(video_identity)
    smiling = classifier.attributes.index(SMILING)
    assert classifier.logits(edited)[smiling] > classifier.logits(video_identity)[smiling]
    assert abs(float(np.linalg.norm(edited)) - 1) < 1e-5  # still a unit identity code
    assert len(facts["classifier_sha256"]) == 64


def test_a_listed_video_without_align_output_is_one_line_naming_the_folder(project):
    result = _fit(_params(project, listed=("sample", "ghost")))
    assert result.exit_code == 1
    message = result.stderr.strip()
    assert "\n" not in message and message.startswith("error: data/align/ghost: align output of video 'ghost'")
    assert not (project / "data" / "classifiers").exists()


def test_an_encode_output_of_other_faces_is_refused(project, sample_run):
    # An encode output whose rows are not the align output's faces (an older, shorter align run).
    short = project / "short_align"
    shutil.copytree(sample_run.align, short)
    table = pq.read_table(short / "align.parquet")
    pq.write_table(table.slice(0, 10), short / "align.parquet")
    (project / "data" / "align" / "sample").unlink()
    (project / "data" / "align" / "sample").symlink_to(short, target_is_directory=True)
    result = _fit(_params(project))
    assert result.exit_code == 1
    message = result.stderr.strip()
    assert "\n" not in message and "data/encode/sample" in message and "are not the faces of" in message


def test_videos_encoded_into_different_code_spaces_are_refused(project, sample_run):
    from pipeline.core.tables import read_table, write_table

    # A second video whose codes came from other encoder weights (the same faces, to isolate that).
    other = project / "other_encode"
    shutil.copytree(sample_run.encode, other)
    table, metadata = read_table(other / "features.parquet")
    metadata["weights_sha256"] = {name: "0" * 64 for name in metadata["weights_sha256"]}
    write_table(other / "features.parquet", {name: table.column(name) for name in table.column_names}, metadata)
    (project / "data" / "align" / "other").symlink_to(sample_run.align, target_is_directory=True)
    (project / "data" / "encode" / "other").symlink_to(other, target_is_directory=True)
    result = _fit(_params(project, listed=("sample", "other")))
    assert result.exit_code == 1
    message = result.stderr.strip()
    assert "\n" not in message and message.startswith("error: data/encode: the videos were encoded differently")
    assert "other: dlib 128-d, weights 000000000000" in message


def test_video_lists_and_table_settings_are_checked_against_the_source(project):
    result = _fit(_params(project, videos=["nobody"]))
    assert result.exit_code == 1
    assert result.stderr.strip().endswith("fit_classifiers.videos names unknown video 'nobody'")
    result = _fit(_params(project, listed=()))
    assert result.exit_code == 1 and result.stderr.strip() == (
        "error: fit_classifiers (source landmarks) has no video to label: list videos under `videos`")
    # Unset, the source follows the settings given: a label table's mean `table`, none mean `landmarks`.
    assert FitClassifiersParams(images="data/celeba").source == "table" and FitClassifiersParams().source == "landmarks"
    with pytest.raises(ParamsError, match=r"fit_classifiers: labels: set only with source: table"):
        parse_params({"fit_classifiers": {"source": "landmarks", "labels": "data/labels.csv"}})
    with pytest.raises(ParamsError, match=r"fit_classifiers: videos: set only with source: landmarks"):
        parse_params({"fit_classifiers": {"source": "table", "labels": "data/labels.csv", "videos": ["a"]}})
    # --labels fits on that table whatever the params' source: here a missing table, named as such.
    result = CliRunner().invoke(_app(), ["data/out", "--params", _params(project), "--labels", "data/none.csv"])
    assert result.exit_code == 1 and result.stderr.strip() == (
        "error: data/none.csv: label table (fit_classifiers.labels) not found")


# ----------------------------------------------------------------------------------------------
# The default pipeline


def test_the_demo_fits_classifiers_before_the_edits_that_use_them():
    stages = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    fit = stages["fit_classifiers"]
    written = {next(iter(out)) if isinstance(out, dict) else out for out in fit["outs"] + fit["metrics"]}
    assert {"data/align", "data/encode"} <= set(fit["deps"]) and "fit_classifiers" in fit["params"]
    assert FitClassifiersParams.model_validate(params["fit_classifiers"]).source == "landmarks"
    # A classifier edit on its own or as a part of a composed edit.
    classifier_edits = {f"{name}/{index}": part for name, spec in params["edits"].items()
                        for index, part in enumerate(spec["edits"] if spec["kind"] == "compose" else [spec])
                        if part["kind"] == "classifier"}
    assert classifier_edits, "the demo has no classifier edit"
    for name, spec in classifier_edits.items():
        assert spec["classifier"] in written, name
        # The edit stage depends on a folder holding it, so `dvc repro` fits before it edits.
        assert any(spec["classifier"].startswith(dep.rstrip("/") + "/") for dep in stages["edit"]["deps"]), name
