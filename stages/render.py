"""Paste the edited crops back into the full-resolution video, with its timing and audio.

Each edited crop goes back through the inverse of its alignment transform with its feathered
alpha, every chosen face of a frame (smaller faces first, so nearer ones cover them); frames without
a face pass through untouched. Outputs in OUT_DIR: `edited.mp4` (source frame
count, timestamps and audio), `side_by_side.mp4` (source | reconstruction | edited; the
reconstruction pasted back with the edit's blend masks), `contact_sheet.png` (rows:
source crop, reconstruction, edit; evenly spaced frames) and `metrics.json` (background PSNR
outside the dilated face mask, measured before the lossy encode).
"""

from __future__ import annotations

import json
import os
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np
import typer

from pipeline.core.atomic import atomic_output_dir
from pipeline.core.config import ParamsView, read_params
from pipeline.core.progress import progress_bar
from pipeline.editing.compositing import dilated_face_region, paste_back
from pipeline.evaluation.identity_metrics import masked_psnr
from pipeline.faces.alignment import warp_to_frame
from pipeline.faces.tracking import NO_FACE
from pipeline.runs.artifacts import (
    AUDIO_FILE,
    CONTACT_SHEET_FILE,
    FRAMES_FILE,
    META_FILE,
    RENDER_METRICS_FILE,
    SIDE_BY_SIDE_FILE,
    VIDEO_FILE,
    Alignment,
    open_crops,
    read_alignment,
    read_edit,
    read_frame_times,
    read_reconstruction,
    require_artifact,
)
from pipeline.runs.lineage import cli_run_id, write_lineage
from pipeline.video.settings import RenderParams
from pipeline.video.video_io import VideoEncoder, VideoMeta, read_lossless_frames

# The background is scored outside the face mask grown by this fraction of the crop size,
# past the reach the edit stage allows a blend mask (edit.region_dilation plus feathering).
BACKGROUND_DILATION = 0.25


class RenderView(ParamsView):
    """The sections of params.yaml the render stage reads."""

    render: RenderParams = RenderParams()


def faces_by_frame(alignment: Alignment) -> list[list[int]]:
    """The face rows of each frame of the video, smaller faces first: pasted in this order, nearer (larger)
    faces end up over smaller ones where they overlap."""
    frame_count = int(alignment.frame.max()) + 1 if len(alignment.frame) else 0
    by_frame: list[list[int]] = [[] for _ in range(frame_count)]
    faces = np.flatnonzero([state != NO_FACE for state in alignment.status])
    for row in faces:
        by_frame[alignment.frame[row]].append(int(row))
    # The frame-to-crop map shrinks a larger face more: its determinant falls as the face's area grows.
    scale = dict(zip(faces.tolist(), np.abs(np.linalg.det(alignment.transforms[faces][:, :, :2])).tolist()))
    return [sorted(rows, key=lambda row: -scale[row]) for rows in by_frame]


def paste_faces(frame: np.ndarray, rows: list[int], crops: np.ndarray, alpha: np.ndarray,
                transforms: np.ndarray) -> np.ndarray:
    """`frame` with the crops of `rows` pasted back in order through their blend masks."""
    result = frame
    for row in rows:
        result = paste_back(result, np.asarray(crops[row]), np.asarray(alpha[row]) / 255, transforms[row])
    return result


def contact_sheet(rows: list[np.ndarray], columns: list[int]) -> np.ndarray:
    """Grid image: one row per crop stack (N, R, R, 3), one column per listed frame."""
    return np.concatenate([np.concatenate([stack[index] for index in columns], axis=1) for stack in rows], axis=0)


def sheet_columns(status: list[str], count: int) -> list[int]:
    """`count` face frames spread evenly over the video (first and last face frame included)."""
    faces = [index for index, state in enumerate(status) if state != NO_FACE]
    return [faces[i] for i in np.linspace(0, len(faces) - 1, min(count, len(faces))).round().astype(int)]


def write_contact_sheet(path: Path, crops: np.ndarray, reconstruction: np.ndarray, edited: np.ndarray,
                        columns: list[int] | list[list[int]]) -> None:
    """The PNG contact sheet: rows source crop, reconstruction, edit; one column per listed row.

    `columns` lists crop rows, or one list per track: then each track gets its three rows, one under the
    other (a track with fewer face frames than another is padded with black).
    """
    groups = [columns] if not columns or isinstance(columns[0], (int, np.integer)) else columns
    width = max(len(group) for group in groups)
    blank = np.zeros((1, *crops.shape[1:]), dtype=np.uint8)
    parts = []
    for group in groups:
        padded = [np.concatenate([stack[list(group)], np.repeat(blank, width - len(group), axis=0)])
                  for stack in (crops, reconstruction, edited)]
        parts.append(contact_sheet(padded, list(range(width))))
    cv2.imwrite(str(path), cv2.cvtColor(np.concatenate(parts, axis=0), cv2.COLOR_RGB2BGR))


def track_sheet_columns(alignment: Alignment, count: int) -> list[list[int]]:
    """`count` face rows of each track spread evenly over its frames (:func:`sheet_columns` per track)."""
    return [[int(rows[column]) for column in sheet_columns([alignment.status[row] for row in rows], count)]
            for rows in alignment.tracks.values() if any(alignment.status[row] != NO_FACE for row in rows)]


def composite_frames(
    extract_dir: Path, align_dir: Path, edit_dir: Path, progress: bool
):
    """Yield (index, source frame, edited frame, face rows, background PSNR or None) for every frame.

    Every chosen face of a frame is pasted back, smaller faces first; the background is what lies outside
    all of them.
    """
    alignment, edit, masks = read_alignment(align_dir), read_edit(edit_dir), open_crops(align_dir).masks
    transforms, edited, alpha = alignment.transforms, edit.edited, edit.alpha
    by_frame = faces_by_frame(alignment)
    frames = read_lossless_frames(require_artifact(extract_dir, (FRAMES_FILE,), "extract") / FRAMES_FILE)
    total = int(alignment.metadata.get("frame_count", len(by_frame)))
    for index, frame in enumerate(progress_bar(frames, enabled=progress, total=total, desc="render")):
        rows = by_frame[index] if index < len(by_frame) else []
        if not rows:
            yield index, frame, frame, rows, None
            continue
        result = paste_faces(frame, rows, edited, alpha, transforms)
        height, width = frame.shape[:2]
        face_in_frame = np.zeros((height, width), dtype=bool)
        for row in rows:
            face = dilated_face_region(np.asarray(masks[row]), BACKGROUND_DILATION).astype(np.uint8)
            face_in_frame |= warp_to_frame(face, transforms[row], width, height) > 0
        yield index, frame, result, rows, masked_psnr(frame, result, ~face_in_frame)


def render_video(
    extract_dir: Path,
    align_dir: Path,
    invert_dir: Path,
    edit_dir: Path,
    out_dir: Path,
    params: RenderParams,
    progress: bool = True,
    run_id: str = "python",
) -> dict:
    """Write the edited video, the side-by-side video, the contact sheet and background metrics."""
    extract_dir = require_artifact(extract_dir, (META_FILE, FRAMES_FILE), "extract")
    meta = VideoMeta.from_json(extract_dir / META_FILE)
    pts = read_frame_times(extract_dir)[0]
    time_base = Fraction(meta.time_base)
    alignment, edit, reconstruction = read_alignment(align_dir), read_edit(edit_dir), read_reconstruction(invert_dir)
    transforms, alpha = alignment.transforms, edit.alpha
    background = []
    with atomic_output_dir(out_dir) as work:
        encoder_args = dict(time_base=time_base, fps=meta.fps, crf=params.crf, preset=params.preset)
        audio = extract_dir / AUDIO_FILE if (extract_dir / AUDIO_FILE).is_file() else None
        with (
            VideoEncoder(work / VIDEO_FILE, meta.width, meta.height, audio_source=audio, **encoder_args) as video,
            VideoEncoder(work / SIDE_BY_SIDE_FILE, 3 * meta.width, meta.height, audio_source=audio,
                         **encoder_args) as side_by_side,
        ):
            frame_count = 0
            for index, source, result, rows, score in composite_frames(extract_dir, align_dir, edit_dir, progress):
                video.write(result, pts[index])
                reconstructed = paste_faces(source, rows, reconstruction, alpha, transforms)
                frame_count += 1
                side_by_side.write(np.concatenate([source, reconstructed, result], axis=1), pts[index])
                if score is not None:
                    background.append(score)
        crops = open_crops(align_dir).crops
        write_contact_sheet(work / CONTACT_SHEET_FILE, crops, reconstruction, edit.edited,
                            track_sheet_columns(alignment, params.contact_sheet_columns))
        metrics = {
            "frames": frame_count,
            "tracks": len(alignment.tracks),
            "background_psnr_mean": float(np.mean(background)) if background else None,
            "background_psnr_min": float(np.min(background)) if background else None,
        }
        (work / RENDER_METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n")
        write_lineage(work, out_dir, stage="render", inputs=[extract_dir, align_dir, invert_dir, edit_dir],
                      params={"render": params}, run_id=run_id)
    return metrics


def cli(
    extract_dir: Path = typer.Argument(..., help="Output folder of `dva extract`."),
    align_dir: Path = typer.Argument(..., help="Output folder of `dva align`."),
    invert_dir: Path = typer.Argument(..., help="Output folder of `dva invert`."),
    edit_dir: Path = typer.Argument(..., help="Output folder of `dva edit`."),
    out_dir: Path = typer.Argument(..., help="Output folder (replaced when complete)."),
    params: Path = typer.Option(Path("params.yaml"), "--params", help="Parameters file (must exist)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    metrics = render_video(extract_dir, align_dir, invert_dir, edit_dir, out_dir,
                           read_params(params, RenderView).render, progress=not quiet, run_id=cli_run_id(os.environ))
    if not quiet:
        typer.echo(f"{out_dir / VIDEO_FILE}: {metrics['frames']} frames, background PSNR "
                   f"{metrics['background_psnr_mean']} dB")
