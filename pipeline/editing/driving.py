"""The motion codes each edit decodes with: a video's own, a driving video's, or expression-shifted.

Identity edits keep the video's own landmark codes. A motion edit's driving video goes through the
same extract, align and encode stages as any video (DVC's `driver` stage, `dva edit`'s work cache or
`dva batch`'s content-keyed tasks: `workflows/drivers.py`); its frames are matched to the edited
video's by timestamp. Expression edits shift the video's own codes along the directions of
`pipeline/editing/motion.py`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.core.errors import DriverError, DvaError, InputError
from pipeline.core.hashing import sha256_file
from pipeline.core.params import EditSpec, ExpressionEdit, MotionEdit, Params
from pipeline.editing import motion
from pipeline.faces.tracking import NO_FACE
from pipeline.runs.artifacts import FRAME_TABLE_FILE, read_features, read_frame_times


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


def stage_output_drivers(names: list[str], params: Params, data_root: Path) -> dict[str, DriverArtifacts]:
    """Drivers of the motion edits among `names`, as DVC lays them out under `data_root`.

    A `drivers:` id reads `drivers/<id>/{extract,encode}`, a `videos:` id `extract/<id>` and `encode/<id>`.
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
            # Preparing a video here would run other stages inside this one: DVC prepares drivers itself.
            raise DriverError(Path(spec.driver), f"edit {name!r}: under DVC a driver is a `drivers:` or `videos:` "
                                                 "id (a file path works with `dva edit` and `dva batch`)")
        for folder in folders:
            if not folder.is_dir():
                raise InputError(folder, f"driver {spec.driver!r} of edit {name!r} is not prepared (run `dvc repro`)")
        drivers[name] = DriverArtifacts(driver_video(spec, params), *folders)
    return drivers


def edit_landmark_codes(
    name: str, spec: EditSpec, encode_dir: Path, motion_inputs: MotionInputs | None
) -> tuple[np.ndarray, dict]:
    """The (N, 102) codes edit `name` decodes every frame with, and facts about them for the record."""
    features = read_features(encode_dir)
    status, codes, meta = features.status, features.landmarks, features.metadata
    if not isinstance(spec, MotionEdit | ExpressionEdit):
        return codes, {}
    if motion_inputs is None:
        raise DvaError(f"edit {name!r}: {spec.kind} edits need the video's extract folder (its frame times)")
    valid = np.array([state != NO_FACE for state in status])
    times = read_frame_times(motion_inputs.target_extract)[1]
    if isinstance(spec, ExpressionEdit):
        return motion.expression_codes(codes, valid, times, spec.expressions), {}
    driver = motion_inputs.drivers[name]
    driver_features = read_features(driver.encode)
    driver_status, driver_codes = driver_features.status, driver_features.landmarks
    driver_meta = driver_features.metadata
    ours, theirs = meta.get("landmark_feature_backend"), driver_meta.get("landmark_feature_backend")
    if ours != theirs:
        raise DriverError(driver.source, f"landmark features by {theirs}, the edited video's by {ours}")
    driver_valid = np.array([state != NO_FACE for state in driver_status])
    matched = motion.match_by_time(times, read_frame_times(driver.extract)[1], spec.shorter)
    driven = motion.driven_codes(codes, valid, driver_codes, driver_valid, matched, spec.mode)
    facts = {"driver": str(driver.source), "driver_sha256": sha256_file(driver.source),
             "driver_frames": len(driver_status), "driver_frame_of_each_frame": matched.tolist()}
    return driven, facts


def motion_lineage_inputs(name: str, spec: EditSpec, motion_inputs: MotionInputs | None) -> list[Path]:
    """Inputs a motion or expression edit read besides the video's own artifacts, for its lineage record."""
    if motion_inputs is None or not isinstance(spec, MotionEdit | ExpressionEdit):
        return []
    inputs = [Path(motion_inputs.target_extract) / FRAME_TABLE_FILE]
    if name in motion_inputs.drivers:
        driver = motion_inputs.drivers[name]
        inputs += [driver.source, driver.encode, Path(driver.extract) / FRAME_TABLE_FILE]
    return inputs
