"""Paste the edited crops back into the full-resolution video, with its timing and audio.

Each edited crop goes back through the inverse of its alignment transform with its feathered
alpha; `no_face` frames pass through untouched. Outputs in OUT_DIR: `edited.mp4` (source frame
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

from pipeline.alignment import warp_to_frame
from pipeline.artifacts import require_artifact
from pipeline.atomic import atomic_output_dir
from pipeline.compositing import dilated_face_region, paste_back
from pipeline.identity_metrics import masked_psnr
from pipeline.lineage import cli_run_id, write_lineage
from pipeline.params import RenderParams
from pipeline.progress import progress_bar
from pipeline.tables import read_table
from pipeline.tracking import NO_FACE
from pipeline.video_io import VideoEncoder, VideoMeta, read_lossless_frames
from stages.align import open_crops, read_alignment
from stages.edit import ALPHA_FILE, EDITED_FILE
from stages.extract import AUDIO_FILE, FRAMES_FILE, META_FILE
from stages.extract import TABLE_FILE as FRAME_TABLE
from stages.invert import RECON_FILE

VIDEO_FILE = "edited.mp4"
SIDE_BY_SIDE_FILE = "side_by_side.mp4"
CONTACT_SHEET_FILE = "contact_sheet.png"
METRICS_FILE = "metrics.json"
# The background is scored outside the face mask grown by this fraction of the crop size,
# past the reach the edit stage allows a blend mask (edit.region_dilation plus feathering).
BACKGROUND_DILATION = 0.25


def contact_sheet(rows: list[np.ndarray], columns: list[int]) -> np.ndarray:
    """Grid image: one row per crop stack (N, R, R, 3), one column per listed frame."""
    return np.concatenate([np.concatenate([stack[index] for index in columns], axis=1) for stack in rows], axis=0)


def composite_frames(
    extract_dir: Path, align_dir: Path, edit_dir: Path, progress: bool
):
    """Yield (index, source frame, edited frame, background PSNR or None) for every frame."""
    status, _, transforms, _ = read_alignment(align_dir)
    edited = np.load(Path(edit_dir) / EDITED_FILE, mmap_mode="r")
    alpha = np.load(Path(edit_dir) / ALPHA_FILE, mmap_mode="r")
    _, masks = open_crops(align_dir)
    frames = read_lossless_frames(Path(extract_dir) / FRAMES_FILE)
    for index, frame in enumerate(progress_bar(frames, enabled=progress, total=len(status), desc="render")):
        if status[index] == NO_FACE:
            yield index, frame, frame, None
            continue
        result = paste_back(frame, np.asarray(edited[index]), np.asarray(alpha[index]) / 255, transforms[index])
        face = dilated_face_region(np.asarray(masks[index]), BACKGROUND_DILATION).astype(np.uint8)
        height, width = frame.shape[:2]
        face_in_frame = warp_to_frame(face, transforms[index], width, height) > 0
        yield index, frame, result, masked_psnr(frame, result, ~face_in_frame)


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
    extract_dir = require_artifact(extract_dir, (META_FILE, FRAME_TABLE, FRAMES_FILE), "extract")
    require_artifact(invert_dir, (RECON_FILE,), "invert")
    require_artifact(edit_dir, (EDITED_FILE, ALPHA_FILE), "edit-frames")
    meta = VideoMeta.from_json(extract_dir / META_FILE)
    table, _ = read_table(extract_dir / FRAME_TABLE)
    pts = table.column("pts").to_numpy()
    time_base = Fraction(meta.time_base)
    status, _, transforms, _ = read_alignment(align_dir)
    reconstruction = np.load(Path(invert_dir) / RECON_FILE, mmap_mode="r")
    alpha = np.load(Path(edit_dir) / ALPHA_FILE, mmap_mode="r")
    background = []
    with atomic_output_dir(out_dir) as work:
        encoder_args = dict(time_base=time_base, fps=meta.fps, crf=params.crf, preset=params.preset)
        audio = extract_dir / AUDIO_FILE if (extract_dir / AUDIO_FILE).is_file() else None
        with (
            VideoEncoder(work / VIDEO_FILE, meta.width, meta.height, audio_source=audio, **encoder_args) as video,
            VideoEncoder(work / SIDE_BY_SIDE_FILE, 3 * meta.width, meta.height, audio_source=audio,
                         **encoder_args) as side_by_side,
        ):
            for index, source, result, score in composite_frames(extract_dir, align_dir, edit_dir, progress):
                video.write(result, pts[index])
                reconstructed = source if status[index] == NO_FACE else paste_back(
                    source, np.asarray(reconstruction[index]), np.asarray(alpha[index]) / 255, transforms[index])
                side_by_side.write(np.concatenate([source, reconstructed, result], axis=1), pts[index])
                if score is not None:
                    background.append(score)
        crops, _ = open_crops(align_dir)
        faces = [index for index, state in enumerate(status) if state != NO_FACE]
        picks = [faces[i] for i in np.linspace(0, len(faces) - 1, min(params.contact_sheet_columns, len(faces))).round().astype(int)]
        sheet = contact_sheet(
            [crops, reconstruction, np.load(Path(edit_dir) / EDITED_FILE, mmap_mode="r")],
            picks,
        )
        cv2.imwrite(str(work / CONTACT_SHEET_FILE), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
        metrics = {
            "frames": len(status),
            "background_psnr_mean": float(np.mean(background)) if background else None,
            "background_psnr_min": float(np.min(background)) if background else None,
        }
        (work / METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n")
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
    from stages.cli import stage_params

    metrics = render_video(extract_dir, align_dir, invert_dir, edit_dir, out_dir,
                           stage_params(params).render, progress=not quiet, run_id=cli_run_id(os.environ))
    if not quiet:
        typer.echo(f"{out_dir / VIDEO_FILE}: {metrics['frames']} frames, background PSNR "
                   f"{metrics['background_psnr_mean']} dB")
