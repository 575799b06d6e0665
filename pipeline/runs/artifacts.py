"""What each stage writes, in one place: the files of every stage output and typed readers for them.

Stages read each other's outputs only through this module, so a stage never imports another stage.
Every reader first checks that the folder holds the files it needs: a wrong folder is one InputError
naming the missing file and the `dva` command that makes it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.core.errors import InputError
from pipeline.core.tables import column_matrix, read_table

# extract (`dva extract`)
FRAMES_FILE = "frames.video"  # a byte copy of the source video (`video_io.store_frames`)
FRAME_TABLE_FILE = "frames.parquet"  # its frame table: FRAMES_FILE's name with `.parquet`
META_FILE = "meta.json"
AUDIO_FILE = "audio.mka"
# align (`dva align`)
CROPS_FILE = "crops.npy"
MASKS_FILE = "masks.npy"
ALIGN_TABLE_FILE = "align.parquet"
# encode (`dva encode`)
FEATURES_FILE = "features.parquet"
# train (`dva train`)
MODEL_FILE = "model.safetensors"
# invert (`dva invert`)
NOISE_FILE = "noise.npy"
RECON_FILE = "recon.npy"
INVERT_TABLE_FILE = "frames.parquet"
INVERT_METRICS_FILE = "metrics.json"
# edit (`dva edit-frames`)
EDITED_FILE = "edited.npy"
ALPHA_FILE = "alpha.npy"
BASELINE_FILE = "baseline.npy"
BASELINE_ALPHA_FILE = "baseline_alpha.npy"
EDIT_INFO_FILE = "edit.json"
EDIT_LANDMARKS_FILE = "landmarks.npy"  # the per-frame motion codes (N, 102) the edit decoded with
# render (`dva render`)
VIDEO_FILE = "edited.mp4"
SIDE_BY_SIDE_FILE = "side_by_side.mp4"
CONTACT_SHEET_FILE = "contact_sheet.png"
RENDER_METRICS_FILE = "metrics.json"


def require_artifact(folder: Path, files: Iterable[str], made_by: str) -> Path:
    """`folder`, after checking it holds every file in `files`; `made_by` is the `dva` command that makes them.

    A missing file is one InputError naming the file looked for and the command that makes it.
    """
    folder = Path(folder)
    for name in files:
        if not (folder / name).is_file():
            raise InputError(folder / name, f"not found: {folder} is not an output of `dva {made_by}`")
    return folder


def read_frame_times(extract_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """Presentation timestamps (in the stream's time base) and times in seconds of every extracted frame."""
    table, _ = read_table(require_artifact(extract_dir, (FRAME_TABLE_FILE,), "extract") / FRAME_TABLE_FILE)
    return table.column("pts").to_numpy(), table.column("time").to_numpy().astype(np.float64)


def track_rows(track: np.ndarray) -> dict[int, np.ndarray]:
    """The rows of each track id, in the order the tracks appear (one row per frame of the video each)."""
    track = np.asarray(track)
    ids = list(dict.fromkeys(track.tolist()))
    return {int(track_id): np.flatnonzero(track == track_id) for track_id in ids}


def _track_columns(table) -> tuple[np.ndarray, np.ndarray]:
    # Tables written before tracks existed hold one face: track 0, one row per frame.
    count = table.num_rows
    track = table.column("track").to_numpy() if "track" in table.column_names else np.zeros(count, dtype=np.int32)
    frame = table.column("index").to_numpy() if "index" in table.column_names else np.arange(count)
    return track.astype(np.int64), frame.astype(np.int64)


@dataclass(frozen=True)
class Alignment:
    """Per-face results of `dva align`: one row per track and frame (rows of a track are consecutive).

    A video with one chosen face (`align.faces: largest`) has one row per frame, track 0.
    """

    status: list[str]  # ok / interpolated / no_face
    crop_landmarks: np.ndarray  # (rows, 68, 2) in crop pixels
    transforms: np.ndarray  # (rows, 2, 3) frame -> crop affine; NaN where no face
    metadata: dict
    track: np.ndarray  # (rows,) track id
    frame: np.ndarray  # (rows,) frame index in the video

    @property
    def tracks(self) -> dict[int, np.ndarray]:
        """Rows of each track."""
        return track_rows(self.track)


def read_alignment(align_dir: Path) -> Alignment:
    """The align table of an align output."""
    table, metadata = read_table(require_artifact(align_dir, (ALIGN_TABLE_FILE,), "align") / ALIGN_TABLE_FILE)
    track, frame = _track_columns(table)
    return Alignment(
        status=table.column("status").to_pylist(),
        crop_landmarks=column_matrix(table, "crop_landmarks").reshape(-1, 68, 2),
        transforms=column_matrix(table, "transform").reshape(-1, 2, 3),
        metadata=metadata,
        track=track,
        frame=frame,
    )


@dataclass(frozen=True)
class AlignedCrops:
    """Memory-mapped crops (N, R, R, 3) and feathered face masks (N, R, R), uint8: read lazily, never whole."""

    crops: np.ndarray
    masks: np.ndarray


def open_crops(align_dir: Path) -> AlignedCrops:
    """The crops and masks of an align output."""
    align_dir = require_artifact(align_dir, (CROPS_FILE, MASKS_FILE), "align")
    return AlignedCrops(np.load(align_dir / CROPS_FILE, mmap_mode="r"), np.load(align_dir / MASKS_FILE, mmap_mode="r"))


@dataclass(frozen=True)
class Features:
    """Per-face codes of `dva encode`, one row per row of the align table."""

    status: list[str]
    identities: np.ndarray  # (rows, D) L2-normalised identity codes
    landmarks: np.ndarray  # (rows, 102) motion codes
    video_identity: np.ndarray  # (D,) L2-normalised mean over the ok frames of the first track
    metadata: dict
    track: np.ndarray  # (rows,) track id
    frame: np.ndarray  # (rows,) frame index in the video
    track_identities: dict[int, np.ndarray]  # track id -> (D,) L2-normalised mean over its ok frames

    @property
    def tracks(self) -> dict[int, np.ndarray]:
        """Rows of each track."""
        return track_rows(self.track)

    def for_track(self, track_id: int) -> Features:
        """The rows of one track (one per frame of the video), with that track's identity as the video's."""
        rows = self.tracks[track_id]
        return Features(
            status=[self.status[row] for row in rows],
            identities=self.identities[rows],
            landmarks=self.landmarks[rows],
            video_identity=self.track_identities[track_id],
            metadata=self.metadata,
            track=self.track[rows],
            frame=self.frame[rows],
            track_identities={track_id: self.track_identities[track_id]},
        )


def read_features(encode_dir: Path) -> Features:
    """The features table of an encode output."""
    table, metadata = read_table(require_artifact(encode_dir, (FEATURES_FILE,), "encode") / FEATURES_FILE)
    track, frame = _track_columns(table)
    video_identity = np.asarray(metadata["video_identity"], dtype=np.float32)
    stored = metadata.get("track_identities", {str(int(track[0])) if len(track) else "0": metadata["video_identity"]})
    return Features(
        status=table.column("status").to_pylist(),
        identities=column_matrix(table, "identity").astype(np.float32),
        landmarks=column_matrix(table, "landmark_feature").astype(np.float32),
        video_identity=video_identity,
        metadata=metadata,
        track=track,
        frame=frame,
        track_identities={int(key): np.asarray(value, dtype=np.float32) for key, value in stored.items()},
    )


@dataclass(frozen=True)
class Inversion:
    """The noise maps (sampler state per frame), reconstructions and metadata of `dva invert`."""

    noise: np.ndarray  # memory-mapped
    reconstruction: np.ndarray  # memory-mapped (N, R, R, 3) uint8
    metadata: dict


def read_inversion(invert_dir: Path) -> Inversion:
    """The cached inversion of an invert output."""
    invert_dir = require_artifact(invert_dir, (NOISE_FILE, RECON_FILE, INVERT_TABLE_FILE), "invert")
    _, metadata = read_table(invert_dir / INVERT_TABLE_FILE)
    return Inversion(np.load(invert_dir / NOISE_FILE, mmap_mode="r"), np.load(invert_dir / RECON_FILE, mmap_mode="r"),
                     metadata)


def read_reconstruction(invert_dir: Path) -> np.ndarray:
    """The memory-mapped reconstructions (N, R, R, 3) of an invert output."""
    return np.load(require_artifact(invert_dir, (RECON_FILE,), "invert") / RECON_FILE, mmap_mode="r")


@dataclass(frozen=True)
class EditedFrames:
    """The edited crops and blend masks of `dva edit-frames` (memory-mapped), with its record."""

    edited: np.ndarray
    alpha: np.ndarray
    baseline: np.ndarray | None  # the per-frame baseline, when it was decoded
    info: dict
    folder: Path


def read_edit(edit_dir: Path) -> EditedFrames:
    """The output of one edit."""
    edit_dir = require_artifact(edit_dir, (EDITED_FILE, ALPHA_FILE, EDIT_INFO_FILE), "edit-frames")
    baseline = edit_dir / BASELINE_FILE
    return EditedFrames(
        edited=np.load(edit_dir / EDITED_FILE, mmap_mode="r"),
        alpha=np.load(edit_dir / ALPHA_FILE, mmap_mode="r"),
        baseline=np.load(baseline, mmap_mode="r") if baseline.is_file() else None,
        info=json.loads((edit_dir / EDIT_INFO_FILE).read_text()),
        folder=edit_dir,
    )


def read_render_metrics(render_dir: Path) -> dict:
    """The background metrics `dva render` wrote."""
    path = require_artifact(render_dir, (RENDER_METRICS_FILE,), "render") / RENDER_METRICS_FILE
    return json.loads(path.read_text())
