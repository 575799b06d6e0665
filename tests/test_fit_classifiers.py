"""Tests of the fit_classifiers stage on a small labelled table of real faces.

No labelled attribute data exists offline, so the tests label real faces themselves: `Carphone` is 1
for frames of the bundled sample clip's speaker and 0 for other people (the faces of insightface's
t1.jpg and Tom_Hanks image, and scikit-image's astronaut when installed). Identity codes separate
people, so a linear classifier on them must find this attribute; mirroring, by contrast, barely moves
an identity code, which is why `Mirrored` is only used as a second column, never checked for accuracy.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import typer
from typer.testing import CliRunner

from pipeline.core.errors import DvaError, InputError
from pipeline.editing.editing import AttributeClassifier
from pipeline.editing.settings import FitClassifiersParams
from pipeline.faces.settings import AlignParams, EncodeParams
from stages import fit_classifiers as stage

CROP_SIZE = 64
NO_FACE_IMAGE = "blank.png"


def _package_file(package: str, relative: str) -> Path | None:
    """A data file inside an installed package, located without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    return path if path.is_file() else None


def _save(folder: Path, name: str, rgb: np.ndarray) -> str:
    cv2.imwrite(str(folder / name), cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR))
    return name


def _colour_shift(rgb: np.ndarray) -> np.ndarray:
    return np.clip(rgb.astype(np.float32) * (1.15, 0.95, 0.8), 0, 255).astype(np.uint8)


def _other_people() -> list[np.ndarray]:
    """One image per face of people other than the sample's speaker, each face at least ~90 px wide."""
    from pipeline.faces.face_detection import DlibLandmarkDetector
    from pipeline.faces.still_faces import read_image

    group = read_image(_package_file("insightface", "data/images/t1.jpg"))
    people = []
    for face in DlibLandmarkDetector().detect(group):
        # A generous box (twice the face) keeps the forehead and chin the alignment needs.
        x0, y0, x1, y1 = face.box
        half = max(x1 - x0, y1 - y0)
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        top, left = int(max(cy - half, 0)), int(max(cx - half, 0))
        people.append(group[top : int(cy + half), left : int(cx + half)])
    hanks = read_image(_package_file("insightface", "data/images/Tom_Hanks_54745.png"))
    people.append(cv2.resize(hanks, None, fx=2, fy=2, interpolation=cv2.INTER_CUBIC))  # 112 px: too small
    astronaut = _package_file("skimage", "data/astronaut.png")
    if astronaut is not None:
        people.append(read_image(astronaut))
    return people


@pytest.fixture(scope="module")
def faces(sample_clip, tmp_path_factory) -> tuple[Path, pd.DataFrame]:
    """A folder of labelled face images and its table (image, Carphone, Mirrored), plus one faceless image."""
    from pipeline.video.video_io import iter_frames

    folder = tmp_path_factory.mktemp("faces")
    rows = []
    # The clip's first three frames show no face; start past them.
    speaker = [frame.rgb for frame in iter_frames(sample_clip, max_frames=34)][10::3]
    for i, rgb in enumerate(speaker):
        rows.append((_save(folder, f"carphone_{i:02d}.png", rgb), 1, 0))
    for i, rgb in enumerate(speaker[::3]):
        rows.append((_save(folder, f"carphone_flip_{i:02d}.png", rgb[:, ::-1]), 1, 1))
        rows.append((_save(folder, f"carphone_tint_{i:02d}.png", _colour_shift(rgb)), 1, 0))
    for i, rgb in enumerate(_other_people()):
        rows.append((_save(folder, f"other_{i:02d}.png", rgb), 0, 0))
        rows.append((_save(folder, f"other_flip_{i:02d}.png", rgb[:, ::-1]), 0, 1))
        if i % 2 == 0:
            rows.append((_save(folder, f"other_tint_{i:02d}.png", _colour_shift(rgb)), 0, 0))
    rows.append((_save(folder, NO_FACE_IMAGE, np.full((160, 160, 3), 128, np.uint8)), 0, 0))
    table = pd.DataFrame(rows, columns=["image", "Carphone", "Mirrored"])
    # A fixed shuffle, so that any prefix (max_images) mixes both classes.
    return folder, table.sample(frac=1.0, random_state=0).reset_index(drop=True)


def _run(labels: Path, out: Path, **overrides) -> dict:
    params = FitClassifiersParams(labels=str(labels), holdout_fraction=0.3, **overrides)
    return stage.fit_classifiers(params, AlignParams(), EncodeParams(), CROP_SIZE, out, progress=False)


def _app() -> typer.Typer:
    """The stage's command as `dva` wraps it (one-line errors); a one-command app takes its arguments directly."""
    from stages.cli import one_line_errors

    app = typer.Typer()
    app.command("fit-classifiers")(one_line_errors(stage.cli))
    return app


def test_csv_table_end_to_end(faces, tmp_path):
    folder, table = faces
    labels = folder / "labels.csv"
    table[["image", "Carphone"]].to_csv(labels, index=False)  # relative paths: resolved against its folder
    out = tmp_path / "classifiers"
    card = _run(labels, out)

    produced = sorted(p.name for p in out.iterdir())
    assert produced == ["card.json", "classifier.safetensors", "lineage.json", "lineage.run.json", "metrics.json"]
    assert json.loads((out / "card.json").read_text()) == card
    assert card["images_listed"] == len(table)
    assert card["images_skipped"] == 1 and card["skipped_examples"] == [NO_FACE_IMAGE]
    assert card["images_used"] == len(table) - 1
    assert card["attributes"] == ["Carphone"]
    assert card["auc"]["Carphone"] is not None and card["auc"]["Carphone"] > 0.9
    assert card["encoder"] == "dlib" and card["identity_dim"] == 128
    assert all(len(digest) == 64 for digest in card["encoder_weights_sha256"].values())
    assert card["landmark_backend"] == "dlib" and card["crop_size"] == CROP_SIZE
    assert card["labels_sha256"] == hashlib.sha256(labels.read_bytes()).hexdigest()
    assert (card["holdout_fraction"], card["seed"], card["epochs"]) == (0.3, 0, 300)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics == {"auc": card["auc"], "auc_mean": card["auc"]["Carphone"]}

    classifier = AttributeClassifier.load(out / "classifier.safetensors")
    assert classifier.attributes == ["Carphone"] and classifier.dim == 128


def test_celeba_table_through_cli(faces, tmp_path, monkeypatch):
    folder, table = faces
    # Paths in params.yaml stay inside the project's data/: the image folder is linked there.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "celeba").symlink_to(folder, target_is_directory=True)
    # CelebA layout: the table lives apart from its image folder and holds -1/1 values.
    labels = tmp_path / "list_attr_celeba.txt"
    lines = [str(len(table)), "Carphone Mirrored"]
    lines += [f"{row.image} {2 * row.Carphone - 1} {2 * row.Mirrored - 1}" for row in table.itertuples()]
    labels.write_text("\n".join(lines) + "\n")
    params = tmp_path / "params.yaml"
    params.write_text(
        f"model:\n  resolution: {CROP_SIZE}\n"
        "fit_classifiers:\n  images: data/celeba\n  max_images: 24\n  holdout_fraction: 0.3\n  epochs: 200\n"
    )
    out = tmp_path / "classifiers"
    result = CliRunner().invoke(_app(), [str(out), "--params", str(params), "--labels", str(labels), "--quiet"])
    assert result.exit_code == 0, result.output

    card = json.loads((out / "card.json").read_text())
    assert card["attributes"] == ["Carphone", "Mirrored"]
    assert card["images_listed"] == 24 and card["images_used"] + card["images_skipped"] == 24
    assert card["epochs"] == 200 and card["labels"] == str(labels)
    if card["auc"]["Carphone"] is not None:  # the split is stratified on Mirrored here
        assert card["auc"]["Carphone"] > 0.9
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["auc"]) == {"Carphone", "Mirrored"}
    assert AttributeClassifier.load(out / "classifier.safetensors").attributes == ["Carphone", "Mirrored"]


def test_missing_labels_param_is_one_line_error(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("model:\n  resolution: 64\nfit_classifiers:\n  source: table\n")
    out = tmp_path / "classifiers"
    result = CliRunner().invoke(_app(), [str(out), "--params", str(params), "--quiet"])
    assert result.exit_code == 1
    message = result.stderr.strip()
    assert "\n" not in message and "fit_classifiers.labels" in message
    assert not out.exists()


def test_no_face_anywhere_is_an_error(faces, tmp_path):
    folder, _ = faces
    labels = folder / "blank_only.csv"
    pd.DataFrame({"image": [NO_FACE_IMAGE, NO_FACE_IMAGE], "Carphone": [0, 1]}).to_csv(labels, index=False)
    with pytest.raises(InputError, match="no face found in any of its 2 images"):
        _run(labels, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_missing_image_fails_before_encoding(faces, tmp_path):
    folder, _ = faces
    labels = tmp_path / "labels.csv"
    pd.DataFrame({"image": ["nowhere.png", "carphone_00.png"], "Carphone": [0, 1]}).to_csv(labels, index=False)
    with pytest.raises(InputError, match=r"labels\.csv: 2 of 2 listed images not found"):
        _run(labels, tmp_path / "out")
    with pytest.raises(DvaError, match="labels.csv: 1 of 2 listed images not found, e.g. .*nowhere.png"):
        _run(labels, tmp_path / "out", images=str(folder))
