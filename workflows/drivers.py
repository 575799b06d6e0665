"""Driving and edited videos extracted, aligned and encoded into `dva edit`'s work cache.

Folders are named by the content keys of `pipeline.runs.store`, so a second edit of the same video, or a
video that drives several edits, is prepared once.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.core.errors import DriverError, InputError
from pipeline.core.hashing import content_key, sha256_file
from pipeline.core.params import Params
from pipeline.editing.driving import DriverArtifacts
from pipeline.runs import store
from stages.align import align_video
from stages.encode import encode_video
from stages.extract import extract_video


def cached(folder: Path, build) -> Path:
    """Run `build(folder)` unless the folder already exists (outputs are renamed into place when complete)."""
    if not folder.exists():
        build(folder)
    return folder


def prepare_video(video: Path, params: Params, work: Path, progress: bool = True) -> tuple[Path, Path, Path]:
    """Extract, align and encode `video` into the work cache (keyed as `pipeline.runs.store` keys them).

    Failures of the steps name `video`, never the cache folder they happened in.
    """
    video = Path(video)
    video_sha256 = sha256_file(video)
    base = Path(work) / content_key(video_sha256)
    extract = store.extract_key(video_sha256, params)
    align = store.align_key(extract, params)
    try:
        extract_dir = cached(base / f"extract-{extract}",
                             lambda d: extract_video(video, d, params.extract.max_frames, progress))
        align_dir = cached(base / f"align-{align}",
                           lambda d: align_video(extract_dir, d, params.align, params.model.crop_size, progress))
        encode_dir = cached(base / f"encode-{store.encode_key(align, params)}",
                            lambda d: encode_video(align_dir, d, params.encode, progress))
    except InputError as exc:
        if Path(work).resolve() in exc.path.resolve().parents:
            raise InputError(video, exc.problem) from None
        raise
    return extract_dir, align_dir, encode_dir


def prepare_driver(video: Path, params: Params, work: Path, progress: bool = True) -> DriverArtifacts:
    """A driving video extracted, aligned and encoded in the work cache; one-line errors name the file."""
    video = Path(video)
    if not video.is_file():
        raise DriverError(video, "file not found")
    try:
        extract_dir, _, encode_dir = prepare_video(video, params, work, progress)
    except InputError as exc:
        # Named after the file the user gave, not the cache folder where the step failed.
        raise DriverError(video, exc.problem) from None
    return DriverArtifacts(video, extract_dir, encode_dir)
