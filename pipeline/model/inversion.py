"""Batched inversion and decoding of aligned frames with the autoencoder (DDIM or BDIA, pipeline/model/diffusion.py)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from pipeline.core.params import InferenceSettings
from pipeline.model.diffusion import DDIMScheduler, SamplerName, invert, sample
from pipeline.model.unet import DiffusionVideoAutoencoder

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
    scheduler: DDIMScheduler,
    images: torch.Tensor,
    z_face: torch.Tensor,
    steps: int,
    settings: InferenceSettings | None = None,
    sampler: SamplerName = "ddim",
    gamma: float = 1.0,
) -> torch.Tensor:
    """The sampler's state for a batch of clean frames: noise maps `x_T` (B, 3, R, R) for DDIM, `x_T` and
    the latent of the second timestep (B, 2, 3, R, R) for BDIA (`gamma` is BDIA's)."""
    return invert(denoiser(model, z_face, settings), images, scheduler, steps, sampler, gamma)


@torch.inference_mode()
def decode_frames(
    model: DiffusionVideoAutoencoder,
    scheduler: DDIMScheduler,
    noise: torch.Tensor,
    z_face: torch.Tensor,
    steps: int,
    settings: InferenceSettings | None = None,
    sampler: SamplerName = "ddim",
    gamma: float = 1.0,
) -> torch.Tensor:
    """Frames decoded from states of :func:`invert_frames` made with the same sampler, steps and gamma."""
    return sample(denoiser(model, z_face, settings), noise, scheduler, steps, sampler, gamma)
