"""Expression edit: named, signed offsets of the motion codes over time."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field, field_validator

from pipeline.editing import motion
from pipeline.editing.driving import MotionInputs, require_motion_inputs
from pipeline.editing.kinds.base import EditKind, IdentityContext, IdentityEdit, MotionContext

ExpressionCurve = float | list[tuple[float, float]]


class ExpressionEdit(EditKind):
    """Named, signed expression offsets on the motion codes (pipeline/editing/motion.py documents each).

    A strength is a fraction of the expression's typical range (1: full, negative: the opposite),
    either constant or keyframes `[[seconds, strength], ...]` interpolated linearly in time.
    """

    kind: Literal["expression"]
    expressions: dict[str, ExpressionCurve] = Field(min_length=1)

    @field_validator("expressions")
    @classmethod
    def _known_and_ordered(cls, value: dict[str, ExpressionCurve]) -> dict[str, ExpressionCurve]:
        for name, curve in value.items():
            if name not in motion.EXPRESSIONS:
                raise ValueError(f"unknown expression {name!r} (known: {', '.join(motion.EXPRESSIONS)})")
            if isinstance(curve, list):
                times = [time for time, _ in curve]
                if not times or any(later <= earlier for earlier, later in zip(times, times[1:])):
                    raise ValueError(f"{name}: keyframe times must be given and strictly increasing")
        return value

    def identity_edit(self, context: IdentityContext) -> tuple[IdentityEdit, dict]:
        # The identity stays the video's: only the motion codes change.
        return (lambda z: z), {}

    def motion_codes(self, context: MotionContext) -> tuple[np.ndarray, dict]:
        inputs = require_motion_inputs(context.inputs, context.name, self.kind)
        return motion.expression_codes(context.codes, context.valid, inputs.frame_times(), self.expressions), {}

    def motion_lineage_inputs(self, name: str, inputs: MotionInputs | None) -> list[Path]:
        return [] if inputs is None else [inputs.frame_table()]
