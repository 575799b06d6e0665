"""Settings shared by every edit (`edit`) and of attribute-classifier fitting (`fit_classifiers`).

Each edit kind's own settings are its schema in `pipeline/editing/kinds/`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

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


class FitClassifiersParams(Section):
    """Attribute classifiers in identity space, fitted on a labelled face table."""

    labels: str | None = None  # CelebA list_attr_celeba.txt, .csv or .parquet; None: stage not configured
    images: str | None = None  # folder that relative image paths are resolved against (None: the table's)
    holdout_fraction: float = Field(default=0.2, gt=0, lt=1)
    seed: int = 0
    epochs: int = Field(default=300, ge=1)
    max_images: int | None = Field(default=None, ge=1)


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
