"""Settings of the face steps: `align` (detection, tracking, crops, masks) and `encode` (identity and landmark codes)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from pipeline.core.config import Section, WeightsPath
from pipeline.video.settings import FaceChoice, check_face_choice


class AlignParams(Section):
    """Face detection, landmark tracking and FFHQ-style crops."""

    backend: Literal["dlib", "face_alignment"] = "dlib"
    fan_weights: WeightsPath | None = None
    detector_upsample: int = Field(default=1, ge=0, le=4)
    detection_threshold: float = 0.5
    # Which faces become tracks: `largest` follows one face (the `face_index`-th largest at its first detection,
    # then the nearest detection: the single-face tracker, today's results unchanged); `all` links every face
    # into tracks (pipeline/faces/track_linking.py); a list keeps those track ids of `all`.
    faces: FaceChoice = "largest"
    face_index: int = Field(default=0, ge=0)
    max_gap: int = Field(default=5, ge=0)
    # With several faces: tracks detected in fewer frames are dropped (a one-off false detection is no person).
    min_track_frames: int = Field(default=3, ge=1)
    smooth_center_sigma: float = Field(default=1.0, ge=0)
    smooth_vector_sigma: float = Field(default=3.0, ge=0)
    # Edges of that smoothing (scipy.ndimage modes) at the ends of each run of frames with a face. `nearest`
    # (default) lags less behind a face that moves at a clip's ends (with sigma 3 a steady drift is followed
    # to within 1.2 frames of motion at the last frame, 1.9 with `reflect`); the reference (editing_classifier.py,
    # editing_CLIP.py) smooths with gaussian_filter1d's default, `reflect`.
    smooth_edges: Literal["nearest", "reflect"] = "nearest"
    # Crop pixels outside the frame: `reflect` (default) mirrors the frame, as FFHQ pads, so the networks never
    # see a hard black edge; `black` is the reference's (its crop_image(): PIL's quad warp, no padding).
    outside: Literal["reflect", "black"] = "reflect"
    # Warp the quad to this many pixels first, with PIL's quad transform (bilinear), then resize to the model
    # resolution with PIL's bilinear filter (null, default: OpenCV warps straight to the model resolution).
    # The reference warps to 1024 px (crop_image()) and resizes to 256 when it loads the crops (ImageDataset).
    warp_size: int | None = Field(default=None, ge=1)
    # JPEG round trip of each crop through Pillow at this quality, at `warp_size` when set (null, default:
    # none). The reference saves its 1024 px crops as JPEG at Pillow's default quality, 75.
    jpeg_quality: int | None = Field(default=None, ge=1, le=100)
    mask_feather: float = Field(default=0.04, ge=0, le=0.5)
    # BiSeNet weights (e.g. an imported reference model): face masks from parsing (the reference's video
    # foreground) instead of the landmark outline.
    parsing_weights: WeightsPath | None = None

    @field_validator("faces")
    @classmethod
    def _track_ids(cls, value: str | list[int]) -> str | list[int]:
        return check_face_choice(value)

    @property
    def several_faces(self) -> bool:
        """Whether faces are linked into tracks (`all` or chosen ids) rather than one face followed."""
        return self.faces != "largest"


class EncodeParams(Section):
    """The identity and landmark encoders."""

    backend: Literal["dlib", "arcface", "irse50"] = "dlib"
    arcface_weights: WeightsPath | None = None
    identity_weights: WeightsPath | None = None
    landmark_backend: Literal["dlib", "mobilenet"] = "dlib"
    landmark_weights: WeightsPath | None = None
    device: str = "auto"
