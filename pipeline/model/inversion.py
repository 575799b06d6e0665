"""Batched inversion and decoding of aligned frames with the autoencoder and a sampler (pipeline/model/samplers.py)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import numpy as np
import torch
from pydantic import Field, model_validator

from pipeline.faces.tracking import NO_FACE
from pipeline.model.diffusion import DDIMScheduler
from pipeline.model.samplers import NUM_TRAIN_TIMESTEPS, SAMPLERS, Sampler, TimestepSpacing, build_sampler
from pipeline.model.settings import InferenceSettings
from pipeline.model.unet import DiffusionVideoAutoencoder
from pipeline.runs.artifacts import Features


class InvertParams(InferenceSettings):
    """Inversion of every frame, once per video; its sampler is also every edit's decoding.

    The sampler's own rules (step counts, BDIA's gamma) are checked by `pipeline/model/samplers.py`.
    """

    # ddim: the paper's sampler, approximate inversion; bdia: BDIA-DDIM, exact inversion.
    sampler: Literal[tuple(SAMPLERS)] = "ddim"  # type: ignore[valid-type]
    steps: int = Field(default=50, ge=1, le=NUM_TRAIN_TIMESTEPS)
    # even: i * T // S; stride: the reference's rule (range(0, T, k), refuses S that no stride k gives).
    timestep_spacing: TimestepSpacing = "even"
    # BDIA's weight of the backward half-step; None: 0.5, or the lowest the round-off allows at this S.
    bdia_gamma: float | None = Field(default=None, gt=0, le=1)
    # The identity code every frame is inverted and edited with: normalised_mean, the L2-normalised mean of
    # the detected frames' codes (encode's video identity); raw_mean, the reference's avg_cond: the plain mean
    # over every face frame, not re-normalised.
    video_identity: Literal["normalised_mean", "raw_mean"] = "normalised_mean"
    batch_size: int = Field(default=32, ge=1)
    device: str = "auto"

    @model_validator(mode="after")
    def _sampler_accepts(self) -> "InvertParams":
        self.build_sampler(DDIMScheduler())  # raises ValueError for settings the sampler refuses
        return self

    @property
    def sampler_config(self) -> dict:
        """The resolved sampler settings (gamma chosen, timesteps listed): what inversions save and keys hash."""
        return self.build_sampler(DDIMScheduler()).config()

    def identity_code(self, features: Features) -> np.ndarray:
        """The video's identity code under :attr:`video_identity`, from its encode features."""
        if self.video_identity == "normalised_mean":
            return features.video_identity
        faces = np.array([state != NO_FACE for state in features.status])
        return features.identities[faces].mean(axis=0).astype(np.float32)

    def build_sampler(self, scheduler: DDIMScheduler) -> Sampler:
        """The sampler these settings describe, over a model's scheduler."""
        gamma = self.bdia_gamma if self.sampler == "bdia" else None
        return build_sampler(scheduler, self.sampler, self.steps, self.timestep_spacing, gamma)


DTYPES = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}


def prepare_model(model: DiffusionVideoAutoencoder, settings: InferenceSettings) -> DiffusionVideoAutoencoder:
    """The model in the memory layout asked for, compiled when asked (the weights are shared)."""
    if settings.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if settings.compile:
        model.forward = torch.compile(model.forward, dynamic=False)
    return model


def denoiser(
    model: DiffusionVideoAutoencoder, z_face: torch.Tensor, settings: InferenceSettings | None = None
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """eps(x_t, t) for a batch, under autocast when a lower precision is asked; always float32 out."""
    settings = settings or InferenceSettings()
    dtype = DTYPES[settings.precision]

    def predict(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if settings.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(x.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            return model(x, t, z_face).float()

    return predict


def to_model_images(crops: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 crops (B, R, R, 3) -> float images (B, 3, R, R) in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(crops)).to(device).permute(0, 3, 1, 2).float() / 127.5 - 1


def to_uint8_crops(images: torch.Tensor) -> np.ndarray:
    """Float images (B, 3, R, R) in [-1, 1] -> uint8 crops (B, R, R, 3), rounded and clipped."""
    pixels = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return pixels.permute(0, 2, 3, 1).cpu().numpy()


def face_codes(
    model: DiffusionVideoAutoencoder, identity: np.ndarray, landmarks: np.ndarray, device: torch.device
) -> torch.Tensor:
    """`z_face` for each frame from one identity (D,) or per-frame identities (B, D) and landmarks (B, 102)."""
    z_lnd = torch.from_numpy(np.asarray(landmarks, dtype=np.float32)).to(device)
    z_id = torch.from_numpy(np.array(identity, dtype=np.float32)).to(device)
    if z_id.dim() == 1:
        z_id = z_id.expand(len(z_lnd), -1)
    return model.face_code(z_id, z_lnd)


@torch.inference_mode()
def invert_frames(
    model: DiffusionVideoAutoencoder,
    sampler: Sampler,
    images: torch.Tensor,
    z_face: torch.Tensor,
    settings: InferenceSettings | None = None,
) -> torch.Tensor:
    """The sampler's state for a batch of clean frames (:meth:`Sampler.state_shape` per frame)."""
    return sampler.invert(denoiser(model, z_face, settings), images)


@torch.inference_mode()
def decode_frames(
    model: DiffusionVideoAutoencoder,
    sampler: Sampler,
    states: torch.Tensor,
    z_face: torch.Tensor,
    settings: InferenceSettings | None = None,
) -> torch.Tensor:
    """Frames decoded from states of :func:`invert_frames` made with the same sampler."""
    return sampler.sample(denoiser(model, z_face, settings), states)
