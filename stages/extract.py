"""Decode a video into one lossless frames file, a frame table and a meta file.

Outputs in OUT_DIR: `frames.mkv` (FFV1, lossless RGB), `frames.parquet` (index, pts, time in
seconds: the source timing, variable frame rate included), `meta.json`, and `audio.mka` (the
source's audio stream, copied without re-encoding) when the source has audio.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pyarrow as pa
import typer

from pipeline.core.atomic import atomic_output_dir
from pipeline.core.config import ParamsView, read_params
from pipeline.core.progress import progress_bar
from pipeline.core.tables import write_table
from pipeline.runs.artifacts import AUDIO_FILE, FRAME_TABLE_FILE, FRAMES_FILE, META_FILE
from pipeline.runs.lineage import cli_run_id, write_lineage
from pipeline.video.settings import ExtractParams
from pipeline.video.video_io import LosslessFrameWriter, VideoMeta, copy_audio, iter_frames, probe


class ExtractView(ParamsView):
    """The sections of params.yaml the extract stage reads."""

    extract: ExtractParams = ExtractParams()


def extract_video(
    video: Path, out_dir: Path, max_frames: int | None = None, progress: bool = True, run_id: str = "python"
) -> VideoMeta:
    """Stream `video` into `out_dir` (written under a temporary name, renamed when complete)."""
    video, out_dir = Path(video), Path(out_dir)
    meta = probe(video)
    indices, pts, times = [], [], []
    declared = meta.frame_count or None
    expected = min(declared, max_frames) if declared and max_frames else declared or max_frames
    with atomic_output_dir(out_dir) as work:
        with LosslessFrameWriter(work / FRAMES_FILE, meta.width, meta.height) as writer:
            frames = iter_frames(video, max_frames=max_frames)
            for frame in progress_bar(frames, enabled=progress, total=expected, desc=f"extract {video.name}"):
                writer.write(frame.rgb)
                indices.append(frame.index)
                pts.append(frame.pts)
                times.append(frame.time)
        write_table(
            work / FRAME_TABLE_FILE,
            {
                "index": pa.array(indices, pa.int32()),
                "pts": pa.array(pts, pa.int64()),
                "time": pa.array(times, pa.float64()),
            },
            {"source": video.name, "time_base": meta.time_base},
        )
        if meta.has_audio:
            copy_audio(video, work / AUDIO_FILE)
        meta = dataclasses.replace(meta, frame_count=len(indices))
        if times and not meta.duration:
            meta = dataclasses.replace(meta, duration=float(times[-1] + 1 / (meta.fps or 25)))
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
