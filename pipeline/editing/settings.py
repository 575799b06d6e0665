"""Settings shared by every edit (`edit`) and of attribute-classifier fitting (`fit_classifiers`).

Each edit kind's own settings are its schema in `pipeline/editing/kinds/`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from pipeline.core.config import Section, safe_relative_path
from pipeline.model.settings import BatchSize, InferenceSettings


class EditParams(InferenceSettings):
    """Shared settings of the edit stage: batching, device and the blend of edited crops over the source."""

    batch_size: BatchSize = "auto"  # images decoded together, edits and baselines counted
    device: str = "auto"
    region_threshold: float = Field(default=0.08, gt=0, le=1)
    region_dilation: float = Field(default=0.12, ge=0, le=0.5)
    feather: float = Field(default=0.03, ge=0, le=0.5)
    # union: the union of the source's and the edited face regions, feathered, pasted back alone (hair and
    # beard edits survive); reference: the source's hard face mask, then the whole crop pasted back.
    blend: Literal["union", "reference"] = "union"
    # Where a text edit's L1 term holds the first frame still: `align`, the align stage's face mask; or
    # `parsed_image`, the reference's: the face parser's image foreground (hair, ears and neck kept), hard,
    # which needs `align.parsing_weights`.
    text_l1_mask: Literal["align", "parsed_image"] = "align"


# The settings that only a label table uses.
TABLE_SETTINGS = ("labels", "images", "max_images")


class FitClassifiersParams(Section):
    """Attribute classifiers in identity space, fitted on labelled faces.

    `source: landmarks` labels the aligned faces of the pipeline's own videos from their landmark geometry
    (`pipeline/faces/landmark_attributes.py`: Smiling, Mouth_Slightly_Open), no labelled data needed;
    `source: table` reads a labelled face table (`labels`, `images`, `max_images`). Unset, the source is
    `table` when one of those is set and `landmarks` otherwise, so the default pipeline runs on any params file.
    """

    source: Literal["table", "landmarks"] = "landmarks"
    labels: str | None = None  # CelebA list_attr_celeba.txt, .csv or .parquet; None: stage not configured
    images: str | None = None  # folder that relative image paths are resolved against (None: the table's)
    max_images: int | None = Field(default=None, ge=1)
    # source landmarks: ids under `videos` whose align/encode outputs are labelled (None: every listed video)
    videos: list[str] | None = Field(default=None, min_length=1)
    holdout_fraction: float = Field(default=0.2, gt=0, lt=1)
    seed: int = 0
    epochs: int = Field(default=300, ge=1)

    @model_validator(mode="before")
    @classmethod
    def _source_from_settings(cls, data: object) -> object:
        if isinstance(data, dict) and "source" not in data and any(data.get(name) is not None for name in TABLE_SETTINGS):
            return {**data, "source": "table"}
        return data

    @model_validator(mode="after")
    def _settings_of_the_source(self) -> FitClassifiersParams:
        # A setting of the other source would be silently ignored.
        if self.source == "landmarks":
            table_only = [name for name in TABLE_SETTINGS if getattr(self, name) is not None]
            if table_only:
                raise ValueError(f"{', '.join(table_only)}: set only with source: table (source is landmarks)")
        elif self.videos is not None:
            raise ValueError("videos: set only with source: landmarks (source is table)")
        return self


def check_label_paths(value: FitClassifiersParams) -> FitClassifiersParams:
    """The label table and image folder of a params file lie under data/.

    Checked on the file, not on the section: `dva fit-classifiers --labels` may name any file.
    """
    for name in ("labels", "images"):
        if getattr(value, name) is not None:
            try:
                safe_relative_path(getattr(value, name))
            except ValueError as exc:
                raise ValueError(f"{name}: {exc}") from None
    return value


def check_classifier_videos(value: FitClassifiersParams, videos: dict) -> None:
    """`fit_classifiers.videos` may name only videos listed under `videos`."""
    for video_id in value.videos or []:
        if video_id not in videos:
            raise ValueError(f"fit_classifiers.videos names unknown video {video_id!r}")
