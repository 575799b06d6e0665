"""Identity code and landmark feature of every aligned face, as one Parquet table per video.

One row per row of the align table (a track's frames, track after track). Columns: track, index, status, identity (L2-normalised, dim from the encoder), landmark_feature (102, jaw
dropped: with `landmark_backend: dlib` the align stage's crop landmarks scaled to [0, 1]; with `mobilenet`
the reference's MobileNetV2-GDConv points in [0, 1] of the 256 px crop's centre 224 px). File metadata:
encoder name, identity dim, landmark feature backend, weights sha256, each track's identity
(`track_identities`: L2-normalised mean over its ok frames) and the video identity (the first track's).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import typer

from pipeline.core.atomic import atomic_output_dir
from pipeline.core.config import ParamsView, read_params
from pipeline.core.progress import progress_bar
from pipeline.core.tables import vector_column, write_table
from pipeline.faces.alignment import LANDMARK_FEATURE_DIM, landmark_feature
from pipeline.faces.identity import identity_encoder_from_params, l2_normalise
from pipeline.faces.networks.face_encoder import CropNetwork
from pipeline.faces.settings import EncodeParams
from pipeline.faces.tracking import NO_FACE, OK
from pipeline.runs.artifacts import FEATURES_FILE, open_crops, read_alignment
from pipeline.runs.lineage import cli_run_id, write_lineage

BATCH = 32


class EncodeView(ParamsView):
    """The sections of params.yaml the encode stage reads."""

    encode: EncodeParams = EncodeParams()


class DlibLandmarkFeatures:
    """`z_lnd` from the align stage's landmarks (no network; the default)."""

    def __init__(self) -> None:
        self.weights: dict[str, str] = {}
        self.weight_files: dict[str, Path] = {}

    def __call__(self, crops: np.ndarray, crop_landmarks: np.ndarray) -> np.ndarray:
        size = crops.shape[1]
        return np.stack([landmark_feature(points, size) for points in crop_landmarks])


class MobileNetLandmarkFeatures:
    """`z_lnd` as the reference computes it: MobileNetV2-GDConv on the crop, resized to 256 px if needed."""

    def __init__(self, weights_path: str | None, device: str) -> None:
        self._network = CropNetwork("landmarks", weights_path, "encode.landmark_weights", "mobilenet_gdconv", device)
        self.weight_files, self.weights = self._network.weight_files, self._network.weights

    def __call__(self, crops: np.ndarray, crop_landmarks: np.ndarray) -> np.ndarray:
        return self._network(crops)


def landmark_features_from_params(params: EncodeParams) -> DlibLandmarkFeatures | MobileNetLandmarkFeatures:
    """The landmark feature backend that `encode.landmark_backend` selects."""
    if params.landmark_backend == "mobilenet":
        return MobileNetLandmarkFeatures(params.landmark_weights, params.device)
    return DlibLandmarkFeatures()


def encode_video(
    align_dir: Path, out_dir: Path, params: EncodeParams, progress: bool = True, run_id: str = "python"
) -> np.ndarray:
    """Encode every aligned face; returns the video identity (the first track's)."""
    alignment = read_alignment(align_dir)
    status, crop_landmarks = alignment.status, alignment.crop_landmarks
    crops = open_crops(align_dir).crops
    size = crops.shape[1]
    encoder = identity_encoder_from_params(params)
    landmarks = landmark_features_from_params(params)
    count = len(status)
    identities = np.zeros((count, encoder.dim), dtype=np.float32)
    features = np.zeros((count, LANDMARK_FEATURE_DIM), dtype=np.float32)
    valid = np.array([state != NO_FACE for state in status])
    starts = range(0, count, BATCH)
    for start in progress_bar(starts, enabled=progress, total=len(starts), desc="encode identity"):
        rows = np.flatnonzero(valid[start : start + BATCH]) + start
        if len(rows):
            batch = np.asarray(crops[rows])
            identities[rows] = encoder.embed(batch, crop_landmarks[rows])
            features[rows] = landmarks(batch, crop_landmarks[rows])
    ok = np.array([state == OK for state in status])
    track_identities = {}
    for track_id, rows in alignment.tracks.items():
        chosen = rows[ok[rows]] if ok[rows].any() else rows[valid[rows]]
        track_identities[track_id] = l2_normalise(identities[chosen].mean(axis=0))
    video_identity = next(iter(track_identities.values()))
    with atomic_output_dir(out_dir) as work:
        write_table(
            work / FEATURES_FILE,
            {
                "track": pa.array(alignment.track, pa.int32()),
                "index": pa.array(alignment.frame, pa.int32()),
                "status": pa.array(status, pa.string()),
                "identity": vector_column(identities),
                "landmark_feature": vector_column(features),
            },
            {
                "encoder": encoder.name,
                "identity_dim": encoder.dim,
                "landmark_feature_backend": params.landmark_backend,
                "weights_sha256": {**encoder.weights, **landmarks.weights},
                "video_identity": video_identity.tolist(),
                "track_identities": {str(track_id): code.tolist() for track_id, code in track_identities.items()},
                "crop_size": size,
                "landmark_backend": alignment.metadata.get("backend"),
            },
        )
        write_lineage(work, out_dir, stage="encode", inputs=[align_dir], params={"encode": params},
                      weights={**encoder.weight_files, **landmarks.weight_files}, run_id=run_id)
    return video_identity


def cli(
    align_dir: Path = typer.Argument(..., help="Output folder of `dva align`."),
    out_dir: Path = typer.Argument(..., help="Output folder (replaced when complete)."),
    params: Path = typer.Option(Path("params.yaml"), "--params", help="Parameters file (must exist)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    encode_video(align_dir, out_dir, read_params(params, EncodeView).encode, progress=not quiet, run_id=cli_run_id(os.environ))
    if not quiet:
        typer.echo(f"{align_dir}: features -> {out_dir}")
