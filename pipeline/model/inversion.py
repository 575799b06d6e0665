"""Batched inversion and decoding of aligned frames with the autoencoder and a sampler (pipeline/model/samplers.py)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import numpy as np
import torch
from pydantic import Field, model_validator

from pipeline.core.device import channels_last, maybe_compile, precision_dtype, resolve_batch_size, use_channels_last
from pipeline.faces.tracking import NO_FACE
from pipeline.model.diffusion import DDIMScheduler
from pipeline.model.samplers import NUM_TRAIN_TIMESTEPS, SAMPLERS, Sampler, TimestepSpacing, build_sampler
from pipeline.model.settings import BatchSize, InferenceSettings
from pipeline.model.unet import DiffusionVideoAutoencoder, UNetConfig
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
    batch_size: BatchSize = "auto"  # frames inverted together
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
        """The video's identity code under :attr:`video_identity`, from its encode features (of one track)."""
        if self.video_identity == "normalised_mean":
            return features.video_identity
        faces = np.array([state != NO_FACE for state in features.status])
        return features.identities[faces].mean(axis=0).astype(np.float32)

    def track_identity_codes(self, features: Features) -> dict[int, np.ndarray]:
        """Each track's identity code under :attr:`video_identity`: every track is inverted with its own."""
        return {track_id: self.identity_code(features.for_track(track_id)) for track_id in features.tracks}

    def build_sampler(self, scheduler: DDIMScheduler) -> Sampler:
        """The sampler these settings describe, over a model's scheduler."""
        gamma = self.bdia_gamma if self.sampler == "bdia" else None
        return build_sampler(scheduler, self.sampler, self.steps, self.timestep_spacing, gamma)


# Bytes per activation element in the memory estimate: float32. Under bf16 autocast the convolutions'
# outputs are 2 bytes but GroupNorm and the residual sums stay float32, so 4 keeps the estimate an upper bound.
ACTIVATION_BYTES = 4
# Maps of its output width alive at once inside the widest residual block besides its input (normalised
# input, conv output, GroupNorm output, scale-shift temporaries, skip path: 4 by count, ResBlock.forward in
# unet.py) and the convolution's scratch: 8 matches the resident memory measured per frame on the CPU, paper
# preset, 445 MB against 477 MB estimated (`benchmarks/gpu_bench.py` measures it on each device).
BLOCK_WORKING_TENSORS = 8


def inference_bytes_per_frame(config: UNetConfig) -> int:
    """Estimated peak activation memory of one frame in one UNet forward without autograd.

    What is alive at the peak: every encoder output kept for the decoder's skip connections, plus the working
    tensors of the widest decoder block (its input, the concatenation of h and a skip, and
    :data:`BLOCK_WORKING_TENSORS` maps of its output width), plus the attention matrices at the attention
    resolutions. Paper preset at 256 px: 36 M skip + 84 M working elements, about 477 MB per frame.
    `benchmarks/gpu_bench.py` records the measured peak per frame beside this estimate on CUDA.
    """
    ch = config.channel_mults[0] * config.base_channels
    size = config.resolution
    skips = [(ch, size)]  # the input convolution's output
    for index, mult in enumerate(config.channel_mults):
        for _ in range(config.num_res_blocks):
            ch = mult * config.base_channels
            skips.append((ch, size))
        if index < len(config.channel_mults) - 1:
            size //= 2
            skips.append((ch, size))
    skip_elements = sum(c * s * s for c, s in skips)
    working = 0
    for index, mult in reversed(list(enumerate(config.channel_mults))):
        for _ in range(config.num_res_blocks + 1):
            skip_ch, skip_size = skips.pop()
            out_ch = mult * config.base_channels
            working = max(working, (ch + skip_ch + BLOCK_WORKING_TENSORS * out_ch) * skip_size**2)
            ch = out_ch
    attention = max((config.num_heads * (s * s) ** 2 for s in config.attention_resolutions), default=0)
    return (skip_elements + working + attention) * ACTIVATION_BYTES


def inference_batch_size(settings: InvertParams | InferenceSettings, model: DiffusionVideoAutoencoder) -> int:
    """The batch size a stage runs with: `batch_size` as set, or for `auto` what fits the model's GPU
    (:func:`inference_bytes_per_frame` per frame), the fixed CPU default on the CPU."""
    device = next(model.parameters()).device
    return resolve_batch_size(settings.batch_size, device, inference_bytes_per_frame(model.config))


def prepare_model(model: DiffusionVideoAutoencoder, settings: InferenceSettings) -> DiffusionVideoAutoencoder:
    """The model (already on its device) in the memory layout asked for, compiled when asked (the weights are
    shared)."""
    device = next(model.parameters()).device
    model = channels_last(model, use_channels_last(settings.channels_last, device))
    return maybe_compile(model, settings.compile)


def denoiser(
    model: DiffusionVideoAutoencoder, z_face: torch.Tensor, settings: InferenceSettings | None = None
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """eps(x_t, t) for a batch, under autocast when a lower precision is asked; always float32 out."""
    settings = settings or InferenceSettings()
    device = z_face.device
    dtype = precision_dtype(settings.precision, device)
    layout = use_channels_last(settings.channels_last, device)

    def predict(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        x = channels_last(x, layout)
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
