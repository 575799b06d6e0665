"""Batched DDIM inversion and decoding of aligned frames with the autoencoder."""

from __future__ import annotations

import numpy as np
import torch

from pipeline.diffusion import DDIMScheduler, ddim_invert, ddim_sample
from pipeline.unet import DiffusionVideoAutoencoder


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
) -> torch.Tensor:
    """Noise maps `x_T` of a batch of clean frames (deterministic DDIM inversion)."""
    return ddim_invert(lambda x, t: model(x, t, z_face).float(), images, scheduler, steps)


@torch.inference_mode()
def decode_frames(
    model: DiffusionVideoAutoencoder,
    scheduler: DDIMScheduler,
    noise: torch.Tensor,
    z_face: torch.Tensor,
    steps: int,
) -> torch.Tensor:
    """Frames decoded from noise maps `x_T` (deterministic DDIM sampling)."""
    return ddim_sample(lambda x, t: model(x, t, z_face).float(), noise, scheduler, steps)
