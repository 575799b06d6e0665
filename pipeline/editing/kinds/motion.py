"""Motion edit: decode the video with the motion codes of a driving video."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field

from pipeline.core.errors import DriverError
from pipeline.core.hashing import sha256_file
from pipeline.editing import motion
from pipeline.editing.driving import MotionInputs, require_motion_inputs
from pipeline.editing.kinds.base import EditKind, IdentityContext, IdentityEdit, MotionContext
from pipeline.faces.tracking import NO_FACE
from pipeline.runs.artifacts import FRAME_TABLE_FILE, read_features, read_frame_times


class MotionEdit(EditKind):
    """Decode the video with the motion codes of a driving video (pipeline/editing/motion.py).

    `driver` is a video id under `drivers:` or `videos:`, or a video file (under data/ in a params file).
    Its frames are matched to the video's by time; past the driver's end it holds its last frame or loops.
    """

    kind: Literal["motion"]
    driver: str = Field(min_length=1)
    mode: Literal["relative", "absolute"] = "relative"
    shorter: Literal["hold", "loop"] = "hold"

    def identity_edit(self, context: IdentityContext) -> tuple[IdentityEdit, dict]:
        # The identity stays the video's: only the motion codes change.
        return (lambda z: z), {}

    def driven_by(self) -> str | None:
        return self.driver

    def motion_codes(self, context: MotionContext) -> tuple[np.ndarray, dict]:
        inputs = require_motion_inputs(context.inputs, context.name, self.kind)
        driver = inputs.drivers[context.name]
        # A driver with several tracks drives with its first (the face largest at its first appearance).
        all_features = read_features(driver.encode)
        features = all_features.for_track(next(iter(all_features.tracks)))
        theirs = features.metadata.get("landmark_feature_backend")
        if theirs != context.landmark_backend:
            raise DriverError(driver.source, f"landmark features by {theirs}, the edited video's by "
                                             f"{context.landmark_backend}")
        driver_valid = np.array([state != NO_FACE for state in features.status])
        matched = motion.match_by_time(inputs.frame_times(), read_frame_times(driver.extract)[1], self.shorter)
        driven = motion.driven_codes(context.codes, context.valid, features.landmarks, driver_valid, matched,
                                     self.mode)
        facts = {"driver": str(driver.source), "driver_sha256": sha256_file(driver.source),
                 "driver_frames": len(features.status), "driver_frame_of_each_frame": matched.tolist()}
        return driven, facts

    def motion_lineage_inputs(self, name: str, inputs: MotionInputs | None) -> list[Path]:
        if inputs is None:
            return []
        driver = inputs.drivers[name]
        return [inputs.frame_table(), driver.source, driver.encode, Path(driver.extract) / FRAME_TABLE_FILE]
