"""Text edit: a CLIP-guided identity direction from a text prompt (the paper's text editing)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import Field, model_validator

from pipeline.core.config import WeightsPath
from pipeline.core.hashing import sha256_file
from pipeline.editing.kinds.base import EditKind, IdentityContext, IdentityEdit


class TextEdit(EditKind):
    """CLIP-guided edit from a text prompt; needs local CLIP weights.

    Defaults are the reference implementation's (OpenAI's CLIP ViT-B/16; w_clip 3, where the paper says 5). The
    direction is optimised through a short DDIM trajectory of ``num_steps`` steps from ``t_start`` to 0.
    """

    kind: Literal["text"]
    target_text: str
    source_text: str = "face"
    # OpenAI's ViT-B/16 as the reference runs it (QuickGELU); `ViT-B-16` for weights trained with GELU.
    clip_model: str = "ViT-B-16-quickgelu"
    clip_weights: WeightsPath | None = None
    iterations: int = Field(default=2000, ge=1)
    lr: float = Field(default=0.002, gt=0)
    w_clip: float = Field(default=3.0, ge=0)
    w_id: float = Field(default=1.0, ge=0)
    w_l1: float = Field(default=5.0, ge=0)
    scale: float = 0.5
    num_steps: int = Field(default=5, ge=1)
    t_start: int = Field(default=800, ge=1, le=999)

    @model_validator(mode="after")
    def _texts_differ(self) -> "TextEdit":
        if not self.target_text.strip():
            raise ValueError("target_text must not be empty")
        if self.target_text.strip() == self.source_text.strip():
            raise ValueError("target_text must differ from source_text (their difference is the edit)")
        return self

    def identity_edit(self, context: IdentityContext) -> tuple[IdentityEdit, dict]:
        # open_clip is a heavy import, needed by this kind only.
        from pipeline.editing.text_edit import (
            apply_text_direction,
            invert_to_t_start,
            load_clip,
            optimise_text_direction,
        )
        from pipeline.model.diffusion import DDIMScheduler
        from pipeline.model.inversion import to_model_images

        model, device, frame = context.model, context.device, context.first_frame
        clip_model, tokenizer = load_clip(self.clip_model, self.clip_weights,
                                          param_name=f"edits.{context.name}.clip_weights", device=device)
        scheduler = DDIMScheduler.from_settings(model.sampler)
        # As in the reference, the direction is found on the first frame with that frame's own identity, and
        # the L1 term guards the face region (`edit.text_l1_mask`).
        x_start = invert_to_t_start(model, scheduler, to_model_images(frame.crop[None], device), frame.identity,
                                    frame.landmarks, self)
        face = torch.from_numpy(self._l1_mask(context)).to(device)
        dz, losses = optimise_text_direction(model, scheduler, clip_model, tokenizer, x_start, frame.identity,
                                             frame.landmarks, self, face, context.progress)
        facts = {"clip_weights_sha256": sha256_file(Path(self.clip_weights)),
                 "loss_first": losses[1] if len(losses) > 1 else losses[0], "loss_last": losses[-1]}
        return (lambda z: apply_text_direction(z, dz, self.scale)), facts

    @staticmethod
    def _l1_mask(context: IdentityContext) -> np.ndarray:
        """(R, R) float32 in [0, 1]: where the L1 term holds the first frame still (`edit.text_l1_mask`)."""
        frame = context.first_frame
        if context.edit.text_l1_mask == "align":
            return frame.mask.astype(np.float32) / 255
        # The reference's: the parser's hard image foreground of the first frame (hair, ears and neck kept).
        from pipeline.faces.networks.face_encoder import load_face_parser
        from pipeline.faces.networks.face_parsing import parsing_face_mask

        parser = load_face_parser(context.align.parsing_weights, "align.parsing_weights", context.device)
        return parsing_face_mask(frame.crop[None], parser, for_video=False)[0]

    def weight_files(self) -> dict[str, Path]:
        return {"clip": Path(self.clip_weights)} if self.clip_weights else {}
