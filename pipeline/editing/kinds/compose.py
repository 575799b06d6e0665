"""Composed edit: several edits of any kinds applied together, in one decode and under one cache key."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
from pydantic import Field, model_validator

from pipeline.editing.driving import MotionInputs
from pipeline.editing.kinds.base import EditKind, IdentityContext, IdentityEdit, MotionContext

if TYPE_CHECKING:  # resolved by kinds/__init__.py once every kind exists (a part may be any kind)
    from pipeline.editing.kinds import EditSpec


class ComposeEdit(EditKind):
    """Apply `edits` in order: each part's identity edit to the previous part's identity, each part's motion
    change to the previous part's motion codes (e.g. two classifier attributes, then an expression curve).

    Every part keeps its own facts in the record under `parts` (one entry per part, in order). At most one
    part may follow a driving video: the edit has one driver.
    """

    kind: Literal["compose"]
    edits: list[EditSpec] = Field(min_length=1)

    @model_validator(mode="after")
    def _one_driver(self) -> ComposeEdit:
        if len([part for part in self.edits if part.driven_by() is not None]) > 1:
            raise ValueError("at most one part of a composed edit may follow a driving video")
        return self

    def identity_edit(self, context: IdentityContext) -> tuple[IdentityEdit, dict]:
        steps, facts = [], []
        for part in self.edits:
            step, part_facts = part.identity_edit(context)
            steps.append(step)
            facts.append(part_facts)

        def apply(identity: np.ndarray) -> np.ndarray:
            for step in steps:
                identity = step(identity)
            return identity

        return apply, {"parts": facts}

    def motion_codes(self, context: MotionContext) -> tuple[np.ndarray, dict]:
        codes, facts = context.codes, []
        for part in self.edits:
            codes, part_facts = part.motion_codes(replace(context, codes=codes))
            facts.append(part_facts)
        return codes, {"motion_parts": facts}

    def input_files(self) -> list[Path]:
        return [path for part in self.edits for path in part.input_files()]

    def weight_files(self) -> dict[str, Path]:
        # Roles repeat across parts (two classifier parts): the part's position keeps them apart.
        return {f"part{index}.{role}": path for index, part in enumerate(self.edits)
                for role, path in part.weight_files().items()}

    def driven_by(self) -> str | None:
        return next((part.driven_by() for part in self.edits if part.driven_by() is not None), None)

    def motion_lineage_inputs(self, name: str, inputs: MotionInputs | None) -> list[Path]:
        paths = [path for part in self.edits for path in part.motion_lineage_inputs(name, inputs)]
        return list(dict.fromkeys(paths))

    def identity_targets(self, info: dict) -> dict[str, np.ndarray]:
        parts = info.get("parts", [{} for _ in self.edits])
        return {f"part{index}.{target}" if len(self.edits) > 1 else target: code
                for index, (part, facts) in enumerate(zip(self.edits, parts))
                for target, code in part.identity_targets(facts).items()}
