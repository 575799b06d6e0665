"""Detect, track and align the chosen faces of every frame into model-resolution crops with masks.

`align.faces` chooses the faces: `largest` follows one face (one track, id 0), `all` links every face
into tracks with stable ids (pipeline/faces/track_linking.py, with dlib identity descriptors to tell
people apart), a list keeps those track ids. Each track has one row per frame of the video, tracks one
after another. Outputs in OUT_DIR: `crops.npy` (rows, R, R, 3) uint8, `masks.npy` (rows, R, R) uint8
feathered face masks, and `align.parquet` (track, index (the frame), status ok / interpolated /
no_face, detection score, landmarks in frame and crop coordinates, the frame-to-crop affine
transform; its metadata lists the tracks with their detected frame counts).
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import typer

from pipeline.core.atomic import atomic_output_dir
from pipeline.core.config import ParamsView, read_params
from pipeline.core.device import resolve_device
from pipeline.core.errors import InputError, ParamsError
from pipeline.core.progress import progress_bar
from pipeline.core.tables import vector_column, write_table
from pipeline.faces import alignment
from pipeline.faces.face_detection import FaceDetection, make_landmark_detector
from pipeline.faces.identity import DLIB_WORKING_SIZE, DlibIdentityEncoder
from pipeline.faces.networks.face_encoder import load_face_parser
from pipeline.faces.networks.face_parsing import parsing_face_mask
from pipeline.faces.settings import AlignParams
from pipeline.faces.track_linking import link_tracks
from pipeline.faces.tracking import INTERPOLATED, NO_FACE, OK, FaceTrack, track_face
from pipeline.model.settings import ModelParams
from pipeline.runs.artifacts import ALIGN_TABLE_FILE, CROPS_FILE, FRAMES_FILE, MASKS_FILE, META_FILE, require_artifact
from pipeline.runs.lineage import cli_run_id, write_lineage
from pipeline.video.settings import VideoParams
from pipeline.video.video_io import VideoMeta, read_lossless_frames

PARSE_BATCH = 16


class AlignView(ParamsView):
    """The sections of params.yaml the align stage reads (the model's resolution sets the crop size; a video's
    own `faces` overrides `align.faces`)."""

    align: AlignParams = AlignParams()
    model: ModelParams = ModelParams()
    videos: dict[str, VideoParams] = {}
    drivers: dict[str, VideoParams] = {}

    def align_for(self, video_id: str | None, source: Path) -> AlignParams:
        """`align` as video `video_id` (under videos or drivers) asks for it; None: `align` as it is."""
        if video_id is None:
            return self.align
        entry = self.videos.get(video_id) or self.drivers.get(video_id)
        if entry is None:
            raise ParamsError(f"{source}: --video {video_id}: no video or driver of that id")
        if entry.faces is None:
            return self.align
        return self.align.model_copy(update={"faces": entry.faces})


def crop_transforms(track: FaceTrack, params: AlignParams, size: int) -> np.ndarray:
    """Smoothed frame-to-crop affine matrices (N, 2, 3); NaN for `no_face` frames."""
    valid = track.valid
    centers = np.zeros((len(valid), 2))
    axes = np.zeros((len(valid), 2))
    for index in np.flatnonzero(valid):
        centers[index], axes[index] = alignment.crop_frame(track.landmarks[index])
    centers, axes = alignment.smooth_crops(
        centers, axes, valid, params.smooth_center_sigma, params.smooth_vector_sigma, params.smooth_edges
    )
    transforms = np.full((len(valid), 2, 3), np.nan)
    for index in np.flatnonzero(valid):
        transforms[index] = alignment.crop_transform(centers[index], axes[index], size)
    return transforms


def describe_faces(faces: str | list[int]) -> str:
    """`align.faces` in words, for messages."""
    return faces if isinstance(faces, str) else "track " + ", ".join(map(str, faces))


def embed_detections(rgb: np.ndarray, faces: list[FaceDetection], encoder: DlibIdentityEncoder) -> list[np.ndarray]:
    """The dlib identity descriptor of each detected face of a frame (aligned as the crops are)."""
    vectors = []
    for face in faces:
        matrix = alignment.crop_transform(*alignment.crop_frame(face.landmarks), DLIB_WORKING_SIZE)
        crop = alignment.warp_to_crop(rgb, matrix, DLIB_WORKING_SIZE)
        vectors.append(encoder.embed(crop[None], alignment.apply_transform(matrix, face.landmarks)[None])[0])
    return vectors


def choose_tracks(per_frame: list[list[FaceDetection]], embeddings: list[list[np.ndarray]] | None,
                  params: AlignParams, source: Path) -> dict[int, FaceTrack]:
    """The tracks `align.faces` asks for, by track id; an InputError naming `source` when there are none."""
    if not params.several_faces:
        track = track_face(per_frame, params.face_index, params.max_gap)
        chosen = {0: track} if track.valid.any() else {}
    else:
        linked = link_tracks(per_frame, embeddings, params.max_gap, params.min_track_frames,
                             DlibIdentityEncoder.same_person_similarity)
        chosen = {track.track_id: track.face for track in linked}
        if isinstance(params.faces, list):
            missing = [track_id for track_id in params.faces if track_id not in chosen]
            if missing:
                raise InputError(source, f"align.faces names track {missing[0]}, but the video has "
                                 f"{len(chosen)} track(s) (ids 0..{len(chosen) - 1})")
            chosen = {track_id: chosen[track_id] for track_id in params.faces}
    if not chosen:
        raise InputError(source, "no face found in any frame")
    return chosen


def align_video(
    extract_dir: Path, out_dir: Path, params: AlignParams, size: int, progress: bool = True, run_id: str = "python"
) -> dict[int, Counter]:
    """Align the chosen faces of an extracted video; returns the count of each frame status per track."""
    extract_dir, out_dir = Path(extract_dir), Path(out_dir)
    require_artifact(extract_dir, (META_FILE, FRAMES_FILE), "extract")
    meta = VideoMeta.from_json(extract_dir / META_FILE)
    frames_path = extract_dir / FRAMES_FILE
    detector = make_landmark_detector(
        params.backend, params.fan_weights, params.detector_upsample, params.detection_threshold
    )
    linker = DlibIdentityEncoder() if params.several_faces else None
    detections, embeddings = [], []
    for rgb in progress_bar(read_lossless_frames(frames_path), enabled=progress, total=meta.frame_count,
                            desc="detect faces"):
        detections.append(detector.detect(rgb))
        if linker is not None:
            embeddings.append(embed_detections(rgb, detections[-1], linker))
    tracks = choose_tracks(detections, embeddings if linker is not None else None, params, extract_dir)
    count = len(detections)
    transforms = {track_id: crop_transforms(track, params, size) for track_id, track in tracks.items()}
    rows = count * len(tracks)
    crop_landmarks = np.full((rows, 68, 2), np.nan)
    # Row of (track, frame): tracks one after another, a row per frame each.
    offsets = {track_id: position * count for position, track_id in enumerate(tracks)}
    with atomic_output_dir(out_dir) as work:
        crops = np.lib.format.open_memmap(work / CROPS_FILE, mode="w+", dtype=np.uint8, shape=(rows, size, size, 3))
        masks = np.lib.format.open_memmap(work / MASKS_FILE, mode="w+", dtype=np.uint8, shape=(rows, size, size))
        frames = read_lossless_frames(frames_path)
        for index, rgb in enumerate(progress_bar(frames, enabled=progress, total=count, desc="align crops")):
            for track_id, track in tracks.items():
                if track.status[index] == NO_FACE:
                    continue
                row, matrix = offsets[track_id] + index, transforms[track_id][index]
                crops[row] = alignment.warp_to_crop(rgb, matrix, size, params.outside, params.warp_size,
                                                    params.jpeg_quality)
                crop_landmarks[row] = alignment.apply_transform(matrix, track.landmarks[index])
                masks[row] = alignment.face_mask(crop_landmarks[row], size, params.mask_feather)
        if params.parsing_weights:
            valid = np.concatenate([track.valid for track in tracks.values()])
            parse_masks(crops, masks, np.flatnonzero(valid), params, progress)
        crops.flush()
        masks.flush()
        del crops, masks
        write_table(
            work / ALIGN_TABLE_FILE,
            {
                "track": pa.array(np.repeat(list(tracks), count), pa.int32()),
                "index": pa.array(np.tile(np.arange(count), len(tracks)), pa.int32()),
                "status": pa.array([state for track in tracks.values() for state in track.status], pa.string()),
                "score": pa.array(np.concatenate([track.scores for track in tracks.values()]), pa.float32()),
                "landmarks": vector_column(np.concatenate([track.landmarks for track in tracks.values()])),
                "crop_landmarks": vector_column(crop_landmarks),
                "transform": vector_column(np.concatenate(list(transforms.values())), pa.float64()),
            },
            {"backend": detector.name, "weights_sha256": detector.weights, "crop_size": size,
             "frame_width": meta.width, "frame_height": meta.height, "frame_count": count,
             "faces": params.faces,
             "tracks": {str(track_id): {"detected_frames": int(sum(state == OK for state in track.status)),
                                        "face_frames": int(track.valid.sum())}
                        for track_id, track in tracks.items()}},
        )
        write_lineage(work, out_dir, stage="align", inputs=[extract_dir], params={"align": params, "crop_size": size},
                      weights=detector.weight_files | (linker.weight_files if linker else {}), run_id=run_id)
    return {track_id: Counter(track.status) for track_id, track in tracks.items()}


def parse_masks(crops: np.ndarray, masks: np.ndarray, rows: np.ndarray, params: AlignParams, progress: bool) -> None:
    """Replace the masks of `rows` by the parsed face foreground for video blending, feathered."""
    parser = load_face_parser(params.parsing_weights, "align.parsing_weights", resolve_device("auto"))
    batches = [rows[start : start + PARSE_BATCH] for start in range(0, len(rows), PARSE_BATCH)]
    for batch in progress_bar(batches, enabled=progress, total=len(batches), desc="parse faces"):
        parsed = parsing_face_mask(np.asarray(crops[batch]), parser, for_video=True)
        for index, mask in zip(batch, parsed):
            masks[index] = alignment.feather_mask(np.round(mask * 255).astype(np.uint8), params.mask_feather)


def cli(
    extract_dir: Path = typer.Argument(..., help="Output folder of `dva extract`."),
    out_dir: Path = typer.Argument(..., help="Output folder (replaced when complete)."),
    params: Path = typer.Option(Path("params.yaml"), "--params", help="Parameters file (must exist)."),
    video: str | None = typer.Option(None, "--video", help="Id of this video under videos/drivers in the "
                                     "parameters file: its own `faces` setting replaces align.faces."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    settings = read_params(params, AlignView)
    counts = align_video(extract_dir, out_dir, settings.align_for(video, params), settings.model.crop_size,
                         progress=not quiet, run_id=cli_run_id(os.environ))
    if not quiet:
        typer.echo(f"{extract_dir}: {status_summary(counts)} -> {out_dir}")


def status_summary(counts: dict[int, Counter]) -> str:
    """Frame counts per status, per track when there are several: `96 ok, 0 interpolated, 0 no_face`."""
    def line(count: Counter) -> str:
        return ", ".join(f"{count.get(state, 0)} {state}" for state in (OK, INTERPOLATED, NO_FACE))
    if len(counts) == 1:
        return line(next(iter(counts.values())))
    return f"{len(counts)} tracks: " + "; ".join(f"track {track_id}: {line(count)}" for track_id, count in counts.items())
