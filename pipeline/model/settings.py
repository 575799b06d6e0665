"""Settings of the model steps: the UNet (`model`), `train`, and how the UNet runs at inference.

The `invert` section, whose sampler every edit decodes with, is :class:`pipeline.model.inversion.InvertParams`.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator

from pipeline.core.config import Section, WeightsPath
from pipeline.core.device import Precision


class ModelParams(Section):
    """The UNet: a preset, optionally overridden field by field."""

    preset: Literal["tiny", "paper"] = "tiny"
    resolution: int | None = Field(default=None, ge=16)
    base_channels: int | None = Field(default=None, ge=8)
    channel_mults: tuple[int, ...] | None = None
    num_res_blocks: int | None = Field(default=None, ge=1)
    attention_resolutions: tuple[int, ...] | None = None
    embed_dim: int | None = Field(default=None, ge=8)
    dropout: float | None = Field(default=None, ge=0, lt=1)
    # DDIM conventions saved with the trained model (pipeline/model/diffusion.SamplerSettings); the reference
    # code clips the predicted x0 and starts inversion at the first timestep (`first_timestep`).
    clip_x0: bool = False
    inversion_start: Literal["clean", "first_timestep"] = "clean"

    @field_validator("resolution")
    @classmethod
    def _power_of_two(cls, value: int | None) -> int | None:
        # A field validator, so the error names `model.resolution`, not just `model`.
        if value is not None and value & (value - 1):
            raise ValueError("resolution must be a power of two")
        return value

    @property
    def crop_size(self) -> int:
        """Side of the aligned crops: the model resolution (preset default when not overridden)."""
        if self.resolution is not None:
            return self.resolution
        return {"tiny": 64, "paper": 256}[self.preset]


class TrainParams(Section):
    """Training of the autoencoder."""

    videos: list[str] | None = None
    # Identity code each training frame is conditioned on: its own (the reference) or its video's mean.
    identity_code: Literal["frame", "video_mean"] = "frame"
    # Standardise the landmark input of the face-code head on the training data (the reference: raw features).
    standardise_landmarks: bool = True
    # BiSeNet weights: L_reg inside the parsed foreground (the reference) instead of the align stage's mask.
    parsing_weights: WeightsPath | None = None
    steps: int = Field(default=3000, ge=1)
    videos_per_batch: int = Field(default=4, ge=1)
    frames_per_video: int = Field(default=4, ge=1)
    lr: float = Field(default=1e-4, gt=0)
    grad_clip: float = Field(default=1.0, gt=0)
    ema_decay: float = Field(default=0.9999, ge=0, lt=1)
    w_simple: float = Field(default=1.0, ge=0)
    w_reg: float = Field(default=1.0, ge=0)
    seed: int = 0
    checkpoint_every: int = Field(default=500, ge=1)
    log_every: int = Field(default=50, ge=1)
    device: str = "auto"
    mixed_precision: bool = True
    # Data-parallel worker processes (DDP); `auto`: min(2, physical cores) on the CPU, 1 on a GPU (one GPU
    # per process needs torchrun). The global batch stays videos_per_batch x frames_per_video.
    processes: Annotated[int, Field(ge=1)] | Literal["auto"] = "auto"
    # Learning rate over the run: constant (the reference) or a cosine decay to 0 at `steps`;
    # either way after a linear warm-up over `warmup_steps`.
    lr_schedule: Literal["constant", "cosine"] = "constant"
    warmup_steps: int = Field(default=0, ge=0)


def check_train_videos(train: TrainParams, videos: dict) -> None:
    """`train.videos` may name only videos listed under `videos`."""
    for video_id in train.videos or []:
        if video_id not in videos:
            raise ValueError(f"train.videos names unknown video {video_id!r}")


def training_videos(train: TrainParams, videos: dict) -> list[str]:
    """Videos the autoencoder trains on (all listed videos unless `train.videos` says otherwise)."""
    return list(train.videos or videos)


# A fixed batch, or `auto`: sized from the GPU's free memory (pipeline/core/device.resolve_batch_size).
BatchSize = Annotated[int, Field(ge=1)] | Literal["auto"]


class InferenceSettings(Section):
    """How the UNet runs at inference: precision, memory layout, compilation (all measured in benchmarks/).

    `auto` (pipeline/core/device.py): bf16 autocast and channels-last on CUDA, float32 and the default
    layout on the CPU.
    """

    precision: Precision = "auto"
    channels_last: bool | Literal["auto"] = "auto"
    compile: bool = False
