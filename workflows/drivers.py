"""Driving and edited videos extracted, aligned and encoded into `dva edit`'s work store.

Folders are named by the content keys of `pipeline.runs.store` (`pipeline.runs.work_store`), so a second
edit of the same video, or a video that drives several edits, is prepared once.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.core.errors import DriverError, InputError
from pipeline.core.hashing import sha256_file
from pipeline.editing.driving import DriverArtifacts
from pipeline.params import Params
from pipeline.runs import store
from pipeline.runs.work_store import WorkStore
from stages.align import align_video
from stages.encode import encode_video
from stages.extract import extract_video


def prepare_video(video: Path, params: Params, work: WorkStore, progress: bool = True,
                  run_id: str = "python") -> tuple[Path, Path, Path]:
    """Extract, align and encode `video` into the work store (keyed as `pipeline.runs.store` keys them).

    Failures of the steps name `video`, never the work folder they happened in. `run_id` goes into the
    lineage records of the outputs built here.
    """
    video = Path(video)
    extract = store.extract_key(sha256_file(video), params)
    align = store.align_key(extract, params)
    try:
        extract_dir = work.build_once("extract", extract,
                                      lambda d: extract_video(video, d, params.extract.max_frames, progress, run_id))
        align_dir = work.build_once("align", align, lambda d: align_video(
            extract_dir, d, params.align, params.model.crop_size, progress, run_id))
        encode_dir = work.build_once("encode", store.encode_key(align, params),
                                     lambda d: encode_video(align_dir, d, params.encode, progress, run_id))
    except InputError as exc:
        if work.root.resolve() in exc.path.resolve().parents:
            raise InputError(video, exc.problem) from None
        raise
    return extract_dir, align_dir, encode_dir


def prepare_driver(video: Path, params: Params, work: WorkStore, progress: bool = True,
                   run_id: str = "python") -> DriverArtifacts:
    """A driving video extracted, aligned and encoded in the work store; one-line errors name the file."""
    video = Path(video)
    if not video.is_file():
        raise DriverError(video, "file not found")
    try:
        extract_dir, _, encode_dir = prepare_video(video, params, work, progress, run_id)
    except InputError as exc:
        # Named after the file the user gave, not the work folder where the step failed.
        raise DriverError(video, exc.problem) from None
    return DriverArtifacts(video, extract_dir, encode_dir)
