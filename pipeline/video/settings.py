"""Settings of the video steps: the input videos, `extract` and `render`."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from pipeline.core.config import VIDEO_ID_PATTERN, Section, safe_relative_path

# Which faces of a video become tracks: `largest` (one face, followed), `all`, or those track ids of `all`.
FaceChoice = Literal["largest", "all"] | list[int]


def check_face_choice(value: str | list[int] | None) -> str | list[int] | None:
    """A list of faces names distinct track ids >= 0 (returned sorted); `largest` / `all` pass as they are."""
    if isinstance(value, list):
        if not value or min(value) < 0 or len(set(value)) != len(value):
            raise ValueError("a list of faces must name distinct track ids >= 0 (or use `all` / `largest`)")
        return sorted(value)
    return value


class VideoParams(Section):
    """One input video: its file under data/, and optionally which of its faces to follow."""

    path: str
    # Overrides `align.faces` for this video (e.g. `all` for a group shot among single-face clips); unset:
    # `align.faces`. The DVC align stage applies it (`dva align --video ID`).
    faces: FaceChoice | None = None

    @field_validator("path")
    @classmethod
    def _inside_data(cls, value: str) -> str:
        return safe_relative_path(value)

    @field_validator("faces")
    @classmethod
    def _track_ids(cls, value: str | list[int] | None) -> str | list[int] | None:
        return check_face_choice(value)


def check_video_ids(value: dict[str, VideoParams]) -> dict[str, VideoParams]:
    """Video ids are plain names: they become folder names of every stage."""
    for video_id in value:
        if not VIDEO_ID_PATTERN.match(video_id):
            raise ValueError(f"video id {video_id!r} must be a plain name (letters, digits, '_', '-', '.'), not a path")
    return value


class ExtractParams(Section):
    """Frame extraction."""

    max_frames: int | None = Field(default=None, ge=1)


class RenderParams(Section):
    """Video encoding of the rendered outputs."""

    crf: int = Field(default=18, ge=0, le=51)
    preset: str = "medium"
    contact_sheet_columns: int = Field(default=8, ge=1, le=64)
