"""The interface every edit kind implements, and what the edit stage hands it.

A kind is a params schema (a :class:`pipeline.core.config.Section` with a ``kind`` tag) that also knows
how it changes the codes a video is decoded with: the identity code (:meth:`EditKind.identity_edit`),
the per-frame motion codes (:meth:`EditKind.motion_codes`), or both; which files and weights it reads
(content keys and lineage); the driving video it needs, if any; and what `evaluate` compares its frames
with. Stages, workflows and the work store ask the kind; none of them tests which kind it is.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from pydantic import field_validator

from pipeline.core.config import Section
from pipeline.editing.driving import MotionInputs
from pipeline.editing.settings import EditParams
from pipeline.faces.settings import AlignParams, EncodeParams
from pipeline.model.unet import DiffusionVideoAutoencoder

IdentityEdit = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class FirstFrame:
    """The first face frame of a video: the text edit optimises its direction on it, as the paper does."""

    crop: np.ndarray  # (R, R, 3) uint8
    landmarks: np.ndarray  # (102,) landmark code
    mask: np.ndarray  # (R, R) uint8 face mask of the align stage
    identity: np.ndarray  # (D,) the frame's own identity code


@dataclass(frozen=True)
class IdentityContext:
    """What a kind may use to build its identity edit."""

    name: str  # the edit's name under `edits` (error messages name its parameters)
    model: DiffusionVideoAutoencoder
    video_identity: np.ndarray
    first_frame: FirstFrame
    device: torch.device
    align: AlignParams
    encode: EncodeParams
    edit: EditParams
    progress: bool
    track: int = 0  # the face's track id (align.faces): kinds that draw at random draw per person


@dataclass(frozen=True)
class MotionContext:
    """A video's own motion codes and what motion-changing kinds read besides them."""

    name: str
    codes: np.ndarray  # (N, 102) the video's landmark codes
    valid: np.ndarray  # (N,) bool: face frames
    landmark_backend: str | None  # what made the codes (a driver's must match)
    inputs: MotionInputs | None  # frame times and drivers; None where the caller has none


class EditKind(Section):
    """Base of every edit kind's schema; `pipeline/editing/kinds/__init__.py` lists the kinds."""

    kind: str
    # The track ids (align.faces) this edit changes; the other faces stay the source. null: every chosen face.
    # Only an edit's top level chooses: the parts of a composed edit follow it.
    tracks: list[int] | None = None

    @field_validator("tracks")
    @classmethod
    def _track_ids(cls, value: list[int] | None) -> list[int] | None:
        if value is not None and (not value or min(value) < 0 or len(set(value)) != len(value)):
            raise ValueError("`tracks` lists distinct track ids >= 0 (leave it out to edit every chosen face)")
        return value

    @abstractmethod
    def identity_edit(self, context: IdentityContext) -> tuple[IdentityEdit, dict]:
        """The function that edits one identity code, and facts about the edit for its record (`edit.json`).

        Raises the errors of `pipeline.core.errors` for missing or unusable files and weights.
        """

    def motion_codes(self, context: MotionContext) -> tuple[np.ndarray, dict]:
        """The (N, 102) codes every frame is decoded with, and facts for the record: the video's own by default."""
        return context.codes, {}

    def input_files(self) -> list[Path]:
        """Files the edit reads besides the video's own artifacts (content keys and lineage)."""
        return []

    def weight_files(self) -> dict[str, Path]:
        """Weight files the edit loads, by role (content keys and lineage)."""
        return {}

    def driven_by(self) -> str | None:
        """The driving video (an id under `drivers:`/`videos:`, or a file) whose motion the edit follows."""
        return None

    def motion_lineage_inputs(self, name: str, inputs: MotionInputs | None) -> list[Path]:
        """Files edit `name`'s motion codes were read from besides the video's features (lineage)."""
        return []

    def identity_targets(self, info: dict) -> dict[str, np.ndarray]:
        """Identity codes, by name, that `evaluate` compares the edited frames with besides the source.

        ``info`` is the edit's record (`edit.json`).
        """
        return {}
