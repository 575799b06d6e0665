"""Fit linear attribute classifiers on identity codes, labelled by a face table or by video landmarks.

Two label sources (`fit_classifiers.source`):

- `table`: CelebA's `list_attr_celeba.txt` (plus its image folder) or a CSV/Parquet file with an `image`
  column and one 0/1 column per attribute. Every image's largest face is detected, aligned and encoded
  exactly as the video frames are (same landmark and identity backends, same crop size), so the fitted
  directions live in the space the edit stage moves the video identity in. Images without a detectable
  face are skipped and counted.
- `landmarks`: the pipeline's own videos (`fit_classifiers.videos`, default every video under `videos`),
  read from `DATA_ROOT/align/<id>` and `DATA_ROOT/encode/<id>`. Every detected face (one row per track and
  frame with status `ok`; interpolated rows are guesses) is labelled `Smiling` / `Mouth_Slightly_Open` from
  its landmark geometry, split at the median of its own track (`pipeline/faces/landmark_attributes.py`
  explains the measures and why the split is per person), and its identity code is the encode stage's.
  Frames are not independent, so the AUC is cross-validated over whole runs of a track's frames.

Outputs in OUT_DIR: `classifier.safetensors` (weights, bias and the normalisation statistics), `card.json`
(label source and rules, attributes, held-out AUCs, counts, encoder and input hashes, split settings) and
`metrics.json` (per-attribute and mean AUC; DVC metrics).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
import typer
from pydantic import field_validator, model_validator

from pipeline.core.atomic import atomic_output_dir
from pipeline.core.config import ParamsView, read_params
from pipeline.core.errors import DvaError, InputError
from pipeline.core.hashing import sha256_file
from pipeline.core.progress import progress_bar
from pipeline.editing.classifiers import IMAGE_COLUMN, fit_attribute_classifiers, read_label_table
from pipeline.editing.editing import AttributeClassifier
from pipeline.editing.settings import FitClassifiersParams, check_classifier_videos, check_label_paths
from pipeline.faces.face_detection import make_landmark_detector
from pipeline.faces.identity import identity_encoder_from_params
from pipeline.faces.landmark_attributes import LABEL_RULES, LANDMARK_ATTRIBUTES, attribute_measures, split_within_groups
from pipeline.faces.settings import AlignParams, EncodeParams
from pipeline.faces.still_faces import align_still, read_image
from pipeline.model.settings import ModelParams
from pipeline.runs.artifacts import ALIGN_TABLE_FILE, read_alignment, read_features
from pipeline.runs.lineage import cli_run_id, write_lineage
from pipeline.video.settings import VideoParams

CLASSIFIER_FILE = "classifier.safetensors"
CARD_FILE = "card.json"
METRICS_FILE = "metrics.json"
# The card names a few skipped images so a surprising skip count can be checked by eye.
SKIPPED_EXAMPLES = 20
OK = "ok"
# Cross-validation holds out whole runs of this many consecutive frames of one track. The align stage
# smooths the crop axes with a Gaussian of sigma 3 frames (align.smooth_vector_sigma), so a frame's crop,
# and so its code, shares most of its smoothing window (+-2 sigma = 6 frames) with its neighbours: runs of
# 12 keep most held-out frames out of every training frame's window, and still give the sample clip's 108
# detected frames 9 runs to deal into folds.
HOLDOUT_RUN_FRAMES = 12
# A track needs two detected faces for a median split to find any contrast within the person.
MIN_TRACK_FACES = 2


class FitClassifiersView(ParamsView):
    """The sections of params.yaml the fit_classifiers stage reads."""

    videos: dict[str, VideoParams] = {}
    fit_classifiers: FitClassifiersParams = FitClassifiersParams()
    align: AlignParams = AlignParams()
    encode: EncodeParams = EncodeParams()
    model: ModelParams = ModelParams()

    @field_validator("fit_classifiers")
    @classmethod
    def _label_paths_inside_data(cls, value: FitClassifiersParams) -> FitClassifiersParams:
        return check_label_paths(value)

    @model_validator(mode="after")
    def _videos_listed(self) -> FitClassifiersView:
        check_classifier_videos(self.fit_classifiers, self.videos)
        return self


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


def _write_outputs(out_dir: Path, classifier: AttributeClassifier, aucs: dict[str, float], card: dict,
                   **lineage) -> dict:
    """Write the classifier, its card (`card` after the attributes and AUCs) and the metrics; returns the card."""
    auc = {name: _finite_or_none(value) for name, value in aucs.items()}
    finite = [value for value in auc.values() if value is not None]
    card = {"classifier": CLASSIFIER_FILE, "attributes": classifier.attributes, "auc": auc, **card}
    metrics = {"auc": auc, "auc_mean": float(np.mean(finite)) if finite else None}
    with atomic_output_dir(Path(out_dir)) as work:
        classifier.save(work / CLASSIFIER_FILE)
        (work / CARD_FILE).write_text(json.dumps(card, indent=2) + "\n")
        (work / METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n")
        write_lineage(work, Path(out_dir), stage="fit_classifiers", **lineage)
    return card


def fit_classifiers(
    params: FitClassifiersParams,
    align: AlignParams,
    encode: EncodeParams,
    size: int,
    out_dir: Path,
    progress: bool = True,
    run_id: str = "python",
) -> dict:
    """Encode the labelled images of a table, fit the classifiers and write them with their card; returns the card."""
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

    card = {
        "source": "table",
        "auc_method": "a stratified held-out split of the images",
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
    return _write_outputs(out_dir, classifier, aucs, card, inputs=[labels_path, *paths],
                          params={"fit_classifiers": params, "align": align, "encode": encode, "crop_size": size},
                          weights=detector.weight_files | encoder.weight_files, run_id=run_id)


def _video_faces(video_id: str, data_root: Path) -> dict:
    """The detected faces of one video: codes, landmark measures, track and frame of each, and the encoder."""
    align_dir, encode_dir = data_root / "align" / video_id, data_root / "encode" / video_id
    if not align_dir.is_dir():
        raise InputError(align_dir, f"align output of video {video_id!r} not found (run `dvc repro align@{video_id}`)")
    if not encode_dir.is_dir():
        raise InputError(encode_dir, f"encode output of video {video_id!r} not found "
                                     f"(run `dvc repro encode@{video_id}`)")
    alignment, features = read_alignment(align_dir), read_features(encode_dir)
    # Rows of the two tables are the same faces in the same order (one per track and frame).
    same_rows = (len(features.status) == len(alignment.status) and np.array_equal(features.track, alignment.track)
                 and np.array_equal(features.frame, alignment.frame))
    if not same_rows:
        raise InputError(encode_dir, f"its {len(features.status)} rows are not the faces of {align_dir} "
                                     f"({len(alignment.status)} rows): encode that align output again")
    detected = np.array([a == OK and f == OK for a, f in zip(alignment.status, features.status)], dtype=bool)
    track, frame = alignment.track[detected], alignment.frame[detected]
    ids, sizes = np.unique(track, return_counts=True)
    keep = np.isin(track, ids[sizes >= MIN_TRACK_FACES])
    rows = np.flatnonzero(detected)[keep]
    measures = attribute_measures(alignment.crop_landmarks[rows])
    broken = ~np.all([np.isfinite(values) for values in measures.values()], axis=0)
    if broken.any():
        raise InputError(align_dir / ALIGN_TABLE_FILE, f"{int(broken.sum())} detected faces have degenerate "
                                                       f"landmarks (e.g. row {int(rows[broken][0])})")
    return {
        "codes": features.identities[rows],
        "measures": measures,
        "track": track[keep],
        "frame": frame[keep],
        "rows": len(alignment.status),
        "skipped_short_tracks": int((~keep).sum()),
        # What defines the identity-code space: every video's codes must share it.
        "encoder": {key: features.metadata.get(key) for key in ("encoder", "identity_dim", "weights_sha256")},
        "crops": {key: features.metadata.get(key) for key in ("crop_size", "landmark_backend")},
        "folders": [align_dir, encode_dir],
    }


def fit_landmark_classifiers(
    params: FitClassifiersParams,
    video_ids: list[str],
    data_root: Path,
    out_dir: Path,
    run_id: str = "python",
) -> dict:
    """Label the detected faces of `video_ids` from their landmarks, fit the classifiers and write them; the card.

    Each video's align and encode outputs are read from `data_root/align/<id>` and `data_root/encode/<id>`.
    """
    if not video_ids:
        raise DvaError("fit_classifiers (source landmarks) has no video to label: list videos under `videos`")
    data_root = Path(data_root)
    faces = {video_id: _video_faces(video_id, data_root) for video_id in video_ids}
    encoders = {json.dumps(face["encoder"], sort_keys=True) for face in faces.values()}
    if len(encoders) > 1:
        described = sorted(f"{video_id}: {face['encoder']['encoder']} {face['encoder']['identity_dim']}-d, weights "
                           f"{', '.join(digest[:12] for digest in face['encoder']['weights_sha256'].values())}"
                           for video_id, face in faces.items())
        raise InputError(data_root / "encode", f"the videos were encoded differently ({'; '.join(described)})")
    total = sum(len(face["track"]) for face in faces.values())
    if total == 0:
        raise InputError(data_root / "align", f"no detected face in any of the videos {video_ids}")

    # Labels split per person: one (video, track) is one person.
    person = np.concatenate([[f"{video_id}/{track}" for track in face["track"]] for video_id, face in faces.items()])
    labels, medians = {}, {}
    for name in LANDMARK_ATTRIBUTES:
        measure = np.concatenate([face["measures"][name] for face in faces.values()])
        labels[name], medians[name] = split_within_groups(measure, person)
    runs = np.concatenate([[f"{video_id}/{track}/{frame // HOLDOUT_RUN_FRAMES}"
                            for track, frame in zip(face["track"], face["frame"])] for video_id, face in faces.items()])
    try:
        classifier, aucs = fit_attribute_classifiers(
            np.concatenate([face["codes"] for face in faces.values()]),
            pd.DataFrame(labels),
            holdout_fraction=params.holdout_fraction,
            seed=params.seed,
            epochs=params.epochs,
            groups=runs,
        )
    except ValueError as exc:
        # e.g. one person whose faces all measure the same, or a single run of frames
        raise InputError(data_root / "align", f"cannot fit classifiers on the {total} detected faces: {exc}") from None

    videos_card, start = {}, 0
    for video_id, face in faces.items():
        count = len(face["track"])
        part = slice(start, start + count)
        start += count
        videos_card[video_id] = {
            "rows": face["rows"],
            **face["crops"],
            "faces_used": count,
            "faces_in_short_tracks": face["skipped_short_tracks"],
            "counts": {name: {str(cls): int((labels[name][part] == cls).sum()) for cls in (0, 1)}
                       for name in LANDMARK_ATTRIBUTES},
            "track_medians": {str(track): {name: medians[name][f"{video_id}/{track}"] for name in LANDMARK_ATTRIBUTES}
                              for track in dict.fromkeys(face["track"].tolist())},
        }
    encoder = next(iter(faces.values()))["encoder"]
    folds = min(round(1 / params.holdout_fraction), len(set(runs.tolist())))
    card = {
        "source": "landmarks",
        "label_rules": {name: LABEL_RULES[name] for name in LANDMARK_ATTRIBUTES},
        "auc_method": f"cross-validated over {folds} folds of whole runs of {HOLDOUT_RUN_FRAMES} frames of one track",
        "faces_used": total,
        "videos": videos_card,
        "encoder": encoder["encoder"],
        "identity_dim": encoder["identity_dim"],
        "encoder_weights_sha256": encoder["weights_sha256"],
        "holdout_fraction": params.holdout_fraction,
        "seed": params.seed,
        "epochs": params.epochs,
    }
    inputs = [folder for face in faces.values() for folder in face["folders"]]
    return _write_outputs(out_dir, classifier, aucs, card, inputs=inputs,
                          params={"fit_classifiers": params, "videos": video_ids}, run_id=run_id)


def cli(
    out_dir: Path = typer.Argument(..., help="Output folder (replaced when complete)."),
    params: Path = typer.Option(Path("params.yaml"), "--params", help="Parameters file (must exist)."),
    labels: Path = typer.Option(None, "--labels", help="Fit on this label table (source table, overrides "
                                                       "fit_classifiers.labels)."),
    data_root: Path = typer.Option(Path("data"), help="Folder holding align/<id> and encode/<id> (source landmarks)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    settings = read_params(params, FitClassifiersView)
    section = settings.fit_classifiers
    if labels is not None:
        section = section.model_copy(update={"source": "table", "labels": str(labels), "videos": None})
    if section.source == "landmarks":
        video_ids = section.videos or list(settings.videos)
        card = fit_landmark_classifiers(section, video_ids, data_root, out_dir, run_id=cli_run_id(os.environ))
        counted = f"{card['faces_used']} faces of {len(video_ids)} video{'s' * (len(video_ids) != 1)}"
    else:
        card = fit_classifiers(section, settings.align, settings.encode, settings.model.crop_size, out_dir,
                               progress=not quiet, run_id=cli_run_id(os.environ))
        counted = f"{card['images_used']} faces ({card['images_skipped']} skipped)"
    if not quiet:
        aucs = ", ".join(f"{name} {'n/a' if value is None else f'{value:.3f}'}" for name, value in card["auc"].items())
        typer.echo(f"{counted}: AUC {aucs} -> {out_dir}")
