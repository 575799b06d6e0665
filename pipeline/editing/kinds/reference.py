"""Reference edit: move the identity toward another face (image or video), or away from its own (anonymise)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from pipeline.core.config import DataPath
from pipeline.core.hashing import sha256_file
from pipeline.editing.editing import reference_edit
from pipeline.editing.kinds.base import EditKind, IdentityContext, IdentityEdit
from pipeline.faces.face_detection import make_landmark_detector
from pipeline.faces.identity import identity_encoder_from_params
from pipeline.faces.still_faces import reference_identity


class ReferenceEdit(EditKind):
    """Move the identity toward a reference face (image or video), or away from the video's own (anonymise)."""

    kind: Literal["reference"]
    reference: DataPath | None = None
    away: bool = False
    strength: float = Field(default=0.5, ge=0)
    seed: int = 0

    @model_validator(mode="after")
    def _reference_or_away(self) -> "ReferenceEdit":
        if not self.away and not self.reference:
            raise ValueError("a reference edit needs `reference` (an image or video) unless `away: true`")
        return self

    def identity_edit(self, context: IdentityContext) -> tuple[IdentityEdit, dict]:
        if self.away:
            own = context.video_identity
            # One direction per person (seed + track id): several anonymised faces do not converge on one face.
            seed = self.seed + context.track
            return (lambda z: reference_edit(z, own, self.strength, away=True, seed=seed)), {"seed": seed}
        align = context.align
        detector = make_landmark_detector(align.backend, align.fan_weights, align.detector_upsample,
                                          align.detection_threshold)
        encoder = identity_encoder_from_params(context.encode)
        path = Path(self.reference)
        target = reference_identity(path, detector, encoder, context.model.config.resolution)
        facts = {"reference_sha256": sha256_file(path), "reference_identity": target.tolist()}
        return (lambda z: reference_edit(z, target, self.strength, away=False)), facts

    def input_files(self) -> list[Path]:
        return [Path(self.reference)] if self.reference else []

    def identity_targets(self, info: dict) -> dict[str, np.ndarray]:
        if "reference_identity" not in info:
            return {}
        return {"reference": np.asarray(info["reference_identity"], dtype=np.float32)}
