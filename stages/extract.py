"""Store a video's frames for the later stages: a copy of the source, a frame table and a meta file.

Outputs in OUT_DIR: `frames.video` (the source file, copied byte for byte and decoded again on every
read: the same frames each time, see `pipeline.video.video_io`), `frames.parquet` (index, pts, time in
seconds: the source timing, variable frame rate included), `meta.json`, and `audio.mka` (the source's
audio stream, copied without re-encoding) when the source has audio.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import typer

from pipeline.core.atomic import atomic_output_dir
from pipeline.core.config import ParamsView, read_params
from pipeline.runs.artifacts import AUDIO_FILE, FRAMES_FILE, META_FILE
from pipeline.runs.lineage import cli_run_id, write_lineage
from pipeline.video.settings import ExtractParams
from pipeline.video.video_io import VideoMeta, copy_audio, probe, store_frames


class ExtractView(ParamsView):
    """The sections of params.yaml the extract stage reads."""

    extract: ExtractParams = ExtractParams()


def extract_video(
    video: Path, out_dir: Path, max_frames: int | None = None, progress: bool = True, run_id: str = "python"
) -> VideoMeta:
    """Stream `video` into `out_dir` (written under a temporary name, renamed when complete)."""
    video, out_dir = Path(video), Path(out_dir)
    meta = probe(video)
    declared = meta.frame_count or None
    expected = min(declared, max_frames) if declared and max_frames else declared or max_frames
    with atomic_output_dir(out_dir) as work:
        # Writes FRAME_TABLE_FILE too: its name follows from FRAMES_FILE's (`frame_table_path`).
        frames = store_frames(video, work / FRAMES_FILE, max_frames, {"source": video.name}, progress, expected)
        if meta.has_audio:
            copy_audio(video, work / AUDIO_FILE)
        meta = dataclasses.replace(meta, frame_count=len(frames))
        if frames and not meta.duration:
            meta = dataclasses.replace(meta, duration=float(frames[-1].time + 1 / (meta.fps or 25)))
        meta.to_json(work / META_FILE)
        write_lineage(work, out_dir, stage="extract", inputs=[video], params={"extract": {"max_frames": max_frames}},
                      run_id=run_id)
    return meta


def cli(
    video: Path = typer.Argument(..., help="Input video file."),
    out_dir: Path = typer.Argument(..., help="Output folder (replaced when complete)."),
    max_frames: int = typer.Option(None, help="Stop after this many frames (default: params extract.max_frames)."),
    params: Path = typer.Option(Path("params.yaml"), "--params", help="Parameters file (must exist)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    limit = max_frames if max_frames is not None else read_params(params, ExtractView).extract.max_frames
    meta = extract_video(video, out_dir, limit, progress=not quiet, run_id=cli_run_id(os.environ))
    if not quiet:
        typer.echo(f"{video}: {meta.frame_count} frames {meta.width}x{meta.height} @ {meta.fps:.3f} fps -> {out_dir}")
