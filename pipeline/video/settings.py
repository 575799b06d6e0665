"""Settings of the video steps: the input videos, `extract` and `render`."""

from __future__ import annotations

from pydantic import Field, field_validator

from pipeline.core.config import VIDEO_ID_PATTERN, Section, safe_relative_path


class VideoParams(Section):
    """One input video: its file under data/."""

    path: str

    @field_validator("path")
    @classmethod
    def _inside_data(cls, value: str) -> str:
        return safe_relative_path(value)


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
