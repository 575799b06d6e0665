"""Where motion-changing edits find what they read: the video's frame times and their driving videos.

Identity edits keep the video's own landmark codes. A motion edit's driving video goes through the
same extract, align and encode stages as any video (DVC's `driver` stage, `dva edit`'s work store or
`dva batch`'s content-keyed tasks: `workflows/drivers.py`); its frames are matched to the edited
video's by timestamp (`pipeline/editing/kinds/motion.py`). Expression edits shift the video's own codes
(`pipeline/editing/kinds/expression.py`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.core.errors import DriverError, DvaError, InputError
from pipeline.runs.artifacts import FRAME_TABLE_FILE, read_frame_times


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

    def frame_times(self) -> np.ndarray:
        """Times (seconds) of the edited video's frames."""
        return read_frame_times(self.target_extract)[1]

    def frame_table(self) -> Path:
        """The file the frame times come from (lineage)."""
        return Path(self.target_extract) / FRAME_TABLE_FILE


def require_motion_inputs(inputs: MotionInputs | None, name: str, kind: str) -> MotionInputs:
    """`inputs`, or a one-line error saying that edit `name` of `kind` needs the video's frame times."""
    if inputs is None:
        raise DvaError(f"edit {name!r}: {kind} edits need the video's extract folder (its frame times)")
    return inputs


def driver_video(driver: str, sections: Mapping[str, Mapping[str, Path]]) -> Path:
    """The driving video file: an id in one of `sections` (id -> file, searched in order), else a path."""
    for videos in sections.values():
        if driver in videos:
            return Path(videos[driver])
    return Path(driver)


def stage_output_drivers(driven: dict[str, str], drivers: Mapping[str, Path], videos: Mapping[str, Path],
                         data_root: Path) -> dict[str, DriverArtifacts]:
    """Drivers of the edits in `driven` (edit name -> driver id), as DVC lays them out under `data_root`.

    `drivers` and `videos` map the ids under `drivers:` and `videos:` to their files. A `drivers:` id reads
    `drivers/<id>/{extract,encode}`, a `videos:` id `extract/<id>` and `encode/<id>`.
    """
    prepared = {}
    for name, driver in driven.items():
        if driver in drivers:
            folders = (Path(data_root) / "drivers" / driver / "extract", Path(data_root) / "drivers" / driver / "encode")
        elif driver in videos:
            folders = (Path(data_root) / "extract" / driver, Path(data_root) / "encode" / driver)
        else:
            # Preparing a video here would run other stages inside this one: DVC prepares drivers itself.
            raise DriverError(Path(driver), f"edit {name!r}: under DVC a driver is a `drivers:` or `videos:` "
                                            "id (a file path works with `dva edit` and `dva batch`)")
        for folder in folders:
            if not folder.is_dir():
                raise InputError(folder, f"driver {driver!r} of edit {name!r} is not prepared (run `dvc repro`)")
        prepared[name] = DriverArtifacts(driver_video(driver, {"drivers": drivers, "videos": videos}), *folders)
    return prepared
