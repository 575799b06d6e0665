"""Fit linear attribute classifiers on the identity codes of a labelled face table.

The label table is CelebA's `list_attr_celeba.txt` (plus its image folder) or a CSV/Parquet file with an
`image` column and one 0/1 column per attribute. Every image's largest face is detected, aligned and
encoded exactly as the video frames are (same landmark and identity backends, same crop size), so the
fitted directions live in the space the edit stage moves the video identity in. Images without a
detectable face are skipped and counted. Outputs in OUT_DIR: `classifier.safetensors` (weights, bias and
the normalisation statistics), `card.json` (attributes, held-out AUCs, image counts, encoder and label
table hashes, split settings) and `metrics.json` (per-attribute and mean AUC; DVC metrics).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
import typer
from pydantic import field_validator

from pipeline.core.atomic import atomic_output_dir
from pipeline.core.config import ParamsView, read_params
from pipeline.core.errors import DvaError, InputError
from pipeline.core.hashing import sha256_file
from pipeline.core.progress import progress_bar
from pipeline.editing.classifiers import IMAGE_COLUMN, fit_attribute_classifiers, read_label_table
from pipeline.editing.settings import FitClassifiersParams, check_label_paths
from pipeline.faces.face_detection import make_landmark_detector
from pipeline.faces.identity import identity_encoder_from_params
from pipeline.faces.settings import AlignParams, EncodeParams
from pipeline.faces.still_faces import align_still, read_image
from pipeline.model.settings import ModelParams
from pipeline.runs.lineage import cli_run_id, write_lineage

CLASSIFIER_FILE = "classifier.safetensors"
CARD_FILE = "card.json"
METRICS_FILE = "metrics.json"
# The card names a few skipped images so a surprising skip count can be checked by eye.
SKIPPED_EXAMPLES = 20


class FitClassifiersView(ParamsView):
    """The sections of params.yaml the fit_classifiers stage reads."""

    fit_classifiers: FitClassifiersParams = FitClassifiersParams()
    align: AlignParams = AlignParams()
    encode: EncodeParams = EncodeParams()
    model: ModelParams = ModelParams()

    @field_validator("fit_classifiers")
    @classmethod
    def _label_paths_inside_data(cls, value: FitClassifiersParams) -> FitClassifiersParams:
        return check_label_paths(value)


def _image_paths(table: pd.DataFrame, labels: Path, images: str | None) -> list[Path]:
    """The table's image paths, relative ones resolved against `images` (default: its folder); all must exist."""
    root = Path(images) if images is not None else labels.parent
    if images is not None and not root.is_dir():
        raise InputError(root, "image folder (fit_classifiers.images) not found")
    paths = [root / name for name in table[IMAGE_COLUMN]]  # an absolute name stays as it is
    # Checked up front: a wrong image folder should fail in a second, not after an hour of encoding.
    missing = [path for path in paths if not path.is_file()]
    if missing:
        raise InputError(labels, f"{len(missing)} of {len(paths)} listed images not found, e.g. {missing[0]}")
    return paths


def _finite_or_none(value: float) -> float | None:
    # NaN (a held-out split with one class) is not valid JSON; DVC and readers expect null.
    return None if math.isnan(value) else float(value)


def fit_classifiers(
    params: FitClassifiersParams,
    align: AlignParams,
    encode: EncodeParams,
    size: int,
    out_dir: Path,
    progress: bool = True,
    run_id: str = "python",
) -> dict:
    """Encode the labelled images, fit the classifiers and write them with their card; returns the card."""
    if params.labels is None:
        raise DvaError(
            "parameter fit_classifiers.labels is not set: point it to a label table "
            "(CelebA list_attr_celeba.txt, .csv or .parquet) or pass --labels"
        )
    labels_path = Path(params.labels)
    try:
        table = read_label_table(labels_path)
    except FileNotFoundError:
        raise InputError(labels_path, "label table (fit_classifiers.labels) not found") from None
    if params.max_images is not None:
        table = table.iloc[: params.max_images].reset_index(drop=True)
    paths = _image_paths(table, labels_path, params.images)

    detector = make_landmark_detector(
        align.backend, align.fan_weights, align.detector_upsample, align.detection_threshold
    )
    encoder = identity_encoder_from_params(encode)
    codes: list[np.ndarray] = []
    used: list[int] = []
    skipped: list[str] = []
    for row, path in enumerate(progress_bar(paths, enabled=progress, total=len(paths), desc="encode faces")):
        aligned = align_still(read_image(path), detector, size)
        if aligned is None:
            skipped.append(str(table[IMAGE_COLUMN].iat[row]))
            continue
        crop, points = aligned
        codes.append(encoder.embed(crop[None], points[None])[0])
        used.append(row)
    if not used:
        raise InputError(labels_path, f"no face found in any of its {len(paths)} images")

    try:
        classifier, aucs = fit_attribute_classifiers(
            np.stack(codes),
            table.iloc[used],
            holdout_fraction=params.holdout_fraction,
            seed=params.seed,
            epochs=params.epochs,
        )
    except ValueError as exc:
        # e.g. an attribute left with one class after skipping faceless images
        raise InputError(labels_path, f"cannot fit classifiers on the {len(used)} encoded faces: {exc}") from None

    auc = {name: _finite_or_none(value) for name, value in aucs.items()}
    finite = [value for value in auc.values() if value is not None]
    card = {
        "classifier": CLASSIFIER_FILE,
        "attributes": classifier.attributes,
        "auc": auc,
        "images_listed": len(paths),
        "images_used": len(used),
        "images_skipped": len(skipped),
        "skipped_examples": skipped[:SKIPPED_EXAMPLES],
        "encoder": encoder.name,
        "identity_dim": encoder.dim,
        "encoder_weights_sha256": encoder.weights,
        "landmark_backend": detector.name,
        "landmark_weights_sha256": detector.weights,
        "crop_size": size,
        "labels": str(labels_path),
        "labels_sha256": sha256_file(labels_path),
        "holdout_fraction": params.holdout_fraction,
        "seed": params.seed,
        "epochs": params.epochs,
    }
    metrics = {"auc": auc, "auc_mean": float(np.mean(finite)) if finite else None}
    with atomic_output_dir(Path(out_dir)) as work:
        classifier.save(work / CLASSIFIER_FILE)
        (work / CARD_FILE).write_text(json.dumps(card, indent=2) + "\n")
        (work / METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n")
        write_lineage(work, Path(out_dir), stage="fit_classifiers", inputs=[labels_path, *paths],
                      params={"fit_classifiers": params, "align": align, "encode": encode, "crop_size": size},
                      weights=detector.weight_files | encoder.weight_files, run_id=run_id)
    return card


def cli(
    out_dir: Path = typer.Argument(..., help="Output folder (replaced when complete)."),
    params: Path = typer.Option(Path("params.yaml"), "--params", help="Parameters file (must exist)."),
    labels: Path = typer.Option(None, "--labels", help="Override fit_classifiers.labels (the label table)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    settings = read_params(params, FitClassifiersView)
    section = settings.fit_classifiers
    if labels is not None:
        section = section.model_copy(update={"labels": str(labels)})
    size = settings.model.crop_size
    card = fit_classifiers(section, settings.align, settings.encode, size, out_dir, progress=not quiet,
                           run_id=cli_run_id(os.environ))
    if not quiet:
        aucs = ", ".join(f"{name} {'n/a' if value is None else f'{value:.3f}'}" for name, value in card["auc"].items())
        typer.echo(f"{card['images_used']} faces ({card['images_skipped']} skipped): AUC {aucs} -> {out_dir}")
