"""Detect, track and align one face per frame into model-resolution crops with masks.

Outputs in OUT_DIR: `crops.npy` (N, R, R, 3) uint8, `masks.npy` (N, R, R) uint8 feathered face
masks, and `align.parquet` (index, status ok / interpolated / no_face, detection score,
landmarks in frame and crop coordinates, the frame-to-crop affine transform).
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
from pipeline.core.errors import InputError
from pipeline.core.progress import progress_bar
from pipeline.core.tables import vector_column, write_table
from pipeline.faces import alignment
from pipeline.faces.face_detection import make_landmark_detector
from pipeline.faces.networks.face_encoder import load_face_parser
from pipeline.faces.networks.face_parsing import parsing_face_mask
from pipeline.faces.settings import AlignParams
from pipeline.faces.tracking import NO_FACE, FaceTrack, track_face
from pipeline.model.settings import ModelParams
from pipeline.runs.artifacts import ALIGN_TABLE_FILE, CROPS_FILE, FRAMES_FILE, MASKS_FILE, META_FILE, require_artifact
from pipeline.runs.lineage import cli_run_id, write_lineage
from pipeline.video.video_io import VideoMeta, read_lossless_frames

PARSE_BATCH = 16


class AlignView(ParamsView):
    """The sections of params.yaml the align stage reads (the model's resolution sets the crop size)."""

    align: AlignParams = AlignParams()
    model: ModelParams = ModelParams()


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


def align_video(
    extract_dir: Path, out_dir: Path, params: AlignParams, size: int, progress: bool = True, run_id: str = "python"
) -> Counter:
    """Align the face of an extracted video; returns the count of each frame status."""
    extract_dir, out_dir = Path(extract_dir), Path(out_dir)
    require_artifact(extract_dir, (META_FILE, FRAMES_FILE), "extract")
    meta = VideoMeta.from_json(extract_dir / META_FILE)
    frames_path = extract_dir / FRAMES_FILE
    detector = make_landmark_detector(
        params.backend, params.fan_weights, params.detector_upsample, params.detection_threshold
    )
    detections = [
        detector.detect(rgb)
        for rgb in progress_bar(
            read_lossless_frames(frames_path), enabled=progress, total=meta.frame_count, desc="detect faces"
        )
    ]
    track = track_face(detections, params.face_index, params.max_gap)
    if not track.valid.any():
        raise InputError(extract_dir, "no face found in any frame")
    transforms = crop_transforms(track, params, size)
    count = len(detections)
    crop_landmarks = np.full((count, 68, 2), np.nan)
    with atomic_output_dir(out_dir) as work:
        crops = np.lib.format.open_memmap(work / CROPS_FILE, mode="w+", dtype=np.uint8, shape=(count, size, size, 3))
        masks = np.lib.format.open_memmap(work / MASKS_FILE, mode="w+", dtype=np.uint8, shape=(count, size, size))
        frames = read_lossless_frames(frames_path)
        for index, rgb in enumerate(progress_bar(frames, enabled=progress, total=count, desc="align crops")):
            if track.status[index] == NO_FACE:
                continue
            crops[index] = alignment.warp_to_crop(
                rgb, transforms[index], size, params.outside, params.warp_size, params.jpeg_quality
            )
            crop_landmarks[index] = alignment.apply_transform(transforms[index], track.landmarks[index])
            masks[index] = alignment.face_mask(crop_landmarks[index], size, params.mask_feather)
        if params.parsing_weights:
            parse_masks(crops, masks, np.flatnonzero(track.valid), params, progress)
        crops.flush()
        masks.flush()
        del crops, masks
        write_table(
            work / ALIGN_TABLE_FILE,
            {
                "index": pa.array(np.arange(count), pa.int32()),
                "status": pa.array(track.status, pa.string()),
                "score": pa.array(track.scores, pa.float32()),
                "landmarks": vector_column(track.landmarks),
                "crop_landmarks": vector_column(crop_landmarks),
                "transform": vector_column(transforms, pa.float64()),
            },
            {"backend": detector.name, "weights_sha256": detector.weights, "crop_size": size,
             "frame_width": meta.width, "frame_height": meta.height},
        )
        write_lineage(work, out_dir, stage="align", inputs=[extract_dir], params={"align": params, "crop_size": size},
                      weights=detector.weight_files, run_id=run_id)
    return Counter(track.status)


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
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    settings = read_params(params, AlignView)
    counts = align_video(extract_dir, out_dir, settings.align, settings.model.crop_size, progress=not quiet,
                         run_id=cli_run_id(os.environ))
    if not quiet:
        summary = ", ".join(f"{counts.get(state, 0)} {state}" for state in ("ok", "interpolated", "no_face"))
        typer.echo(f"{extract_dir}: {summary} -> {out_dir}")
