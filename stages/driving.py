"""The motion codes each edit decodes with: a video's own, a driving video's, or expression-shifted.

Identity edits keep the video's own landmark codes. A motion edit's driving video goes through
the same extract, align and encode functions as any video, cached where its context caches them
(the DVC stage outputs of a `drivers:`/`videos:` id, `dva edit`'s work folder, or `dva batch`'s
content-keyed tasks); its frames are matched to the edited video's by timestamp. Expression edits
shift the video's own codes along the directions of `pipeline/motion.py`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline import motion, store
from pipeline.errors import DriverError, DvaError, InputError
from pipeline.hashing import content_key, sha256_file
from pipeline.params import EditSpec, ExpressionEdit, MotionEdit, Params
from pipeline.tables import read_table
from pipeline.tracking import NO_FACE
from stages.encode import read_features
from stages.extract import TABLE_FILE as FRAME_TABLE

# The per-frame codes (N, 102) an edit decoded with, saved beside the edited crops for evaluate.
LANDMARKS_FILE = "landmarks.npy"


@dataclass(frozen=True)
class DriverArtifacts:
    """A driving video and its extract and encode outputs."""

    source: Path
    extract: Path
    encode: Path


@dataclass(frozen=True)
class MotionInputs:
    """What motion and expression edits read besides the video's features: its frame times and the drivers."""

    target_extract: Path
    drivers: dict[str, DriverArtifacts]  # motion edit name -> its driver


def driver_video(spec: MotionEdit, params: Params, videos: dict[str, Path] | None = None) -> Path:
    """The driving video file: an id of `videos` (e.g. a batch's), `drivers:` or `videos:` in params, or a path."""
    if videos and spec.driver in videos:
        return Path(videos[spec.driver])
    for section in (params.drivers, params.videos):
        if spec.driver in section:
            return Path(section[spec.driver].path)
    return Path(spec.driver)


def cached(folder: Path, build) -> Path:
    """Run `build(folder)` unless the folder already exists (outputs are renamed into place when complete)."""
    if not folder.exists():
        build(folder)
    return folder


def prepare_video(video: Path, params: Params, work: Path, progress: bool = True) -> tuple[Path, Path, Path]:
    """Extract, align and encode `video` into the work cache (keyed as `pipeline.store` keys them).

    Failures of the steps name `video`, never the cache folder they happened in.
    """
    from stages.align import align_video
    from stages.encode import encode_video
    from stages.extract import extract_video

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


def stage_output_drivers(
    names: list[str], params: Params, data_root: Path, work: Path, progress: bool = True
) -> dict[str, DriverArtifacts]:
    """Drivers of the motion edits among `names`, as DVC lays them out under `data_root`.

    A `drivers:` id reads `drivers/<id>/{extract,encode}`, a `videos:` id `extract/<id>` and
    `encode/<id>`; a file path is prepared in the work cache.
    """
    drivers = {}
    for name in names:
        spec = params.edits[name]
        if not isinstance(spec, MotionEdit):
            continue
        if spec.driver in params.drivers:
            folders = (Path(data_root) / "drivers" / spec.driver / "extract",
                       Path(data_root) / "drivers" / spec.driver / "encode")
        elif spec.driver in params.videos:
            folders = (Path(data_root) / "extract" / spec.driver, Path(data_root) / "encode" / spec.driver)
        else:
            drivers[name] = prepare_driver(Path(spec.driver), params, work, progress)
            continue
        for folder in folders:
            if not folder.is_dir():
                raise InputError(folder, f"driver {spec.driver!r} of edit {name!r} is not prepared (run `dvc repro`)")
        drivers[name] = DriverArtifacts(driver_video(spec, params), *folders)
    return drivers


def frame_times(extract_dir: Path) -> np.ndarray:
    """Presentation time (seconds) of every frame of an extract output."""
    table, _ = read_table(Path(extract_dir) / FRAME_TABLE)
    return table.column("time").to_numpy().astype(np.float64)


def edit_landmark_codes(
    name: str, spec: EditSpec, encode_dir: Path, motion_inputs: MotionInputs | None
) -> tuple[np.ndarray, dict]:
    """The (N, 102) codes edit `name` decodes every frame with, and facts about them for the record."""
    status, _, codes, _, meta = read_features(encode_dir)
    if not isinstance(spec, MotionEdit | ExpressionEdit):
        return codes, {}
    if motion_inputs is None:
        raise DvaError(f"edit {name!r}: {spec.kind} edits need the video's extract folder (its frame times)")
    valid = np.array([state != NO_FACE for state in status])
    times = frame_times(motion_inputs.target_extract)
    if isinstance(spec, ExpressionEdit):
        return motion.expression_codes(codes, valid, times, spec.expressions), {}
    driver = motion_inputs.drivers[name]
    driver_status, _, driver_codes, _, driver_meta = read_features(driver.encode)
    ours, theirs = meta.get("landmark_feature_backend"), driver_meta.get("landmark_feature_backend")
    if ours != theirs:
        raise DriverError(driver.source, f"landmark features by {theirs}, the edited video's by {ours}")
    driver_valid = np.array([state != NO_FACE for state in driver_status])
    matched = motion.match_by_time(times, frame_times(driver.extract), spec.shorter)
    driven = motion.driven_codes(codes, valid, driver_codes, driver_valid, matched, spec.mode)
    facts = {"driver": str(driver.source), "driver_sha256": sha256_file(driver.source),
             "driver_frames": len(driver_status), "driver_frame_of_each_frame": matched.tolist()}
    return driven, facts


def motion_lineage_inputs(name: str, spec: EditSpec, motion_inputs: MotionInputs | None) -> list[Path]:
    """Inputs a motion or expression edit read besides the video's own artifacts, for its lineage record."""
    if motion_inputs is None or not isinstance(spec, MotionEdit | ExpressionEdit):
        return []
    inputs = [Path(motion_inputs.target_extract) / FRAME_TABLE]
    if name in motion_inputs.drivers:
        driver = motion_inputs.drivers[name]
        inputs += [driver.source, driver.encode, Path(driver.extract) / FRAME_TABLE]
    return inputs
