"""Settings of the face steps: `align` (detection, tracking, crops, masks) and `encode` (identity and landmark codes)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from pipeline.core.config import Section, WeightsPath


class AlignParams(Section):
    """Face detection, landmark tracking and FFHQ-style crops."""

    backend: Literal["dlib", "face_alignment"] = "dlib"
    fan_weights: WeightsPath | None = None
    detector_upsample: int = Field(default=1, ge=0, le=4)
    detection_threshold: float = 0.5
    face_index: int = Field(default=0, ge=0)
    max_gap: int = Field(default=5, ge=0)
    smooth_center_sigma: float = Field(default=1.0, ge=0)
    smooth_vector_sigma: float = Field(default=3.0, ge=0)
    mask_feather: float = Field(default=0.04, ge=0, le=0.5)
    # BiSeNet weights (e.g. an imported reference model): face masks from parsing (the reference's video
    # foreground) instead of the landmark outline.
    parsing_weights: WeightsPath | None = None


class EncodeParams(Section):
    """The identity and landmark encoders."""

    backend: Literal["dlib", "arcface", "irse50"] = "dlib"
    arcface_weights: WeightsPath | None = None
    identity_weights: WeightsPath | None = None
    landmark_backend: Literal["dlib", "mobilenet"] = "dlib"
    landmark_weights: WeightsPath | None = None
    device: str = "auto"
