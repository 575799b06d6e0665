"""Training of the diffusion video autoencoder: clip sampling, the optimisation loop, resumption."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pipeline.core.device import autocast_dtype
from pipeline.faces.alignment import flip_landmark_feature
from pipeline.model import checkpoint
from pipeline.model.diffusion import DDIMScheduler, SamplerSettings
from pipeline.model.losses import EMA, disentangle_loss
from pipeline.model.settings import ModelParams, TrainParams
from pipeline.model.unet import PRESETS, DiffusionVideoAutoencoder, UNetConfig


def build_sampler(params: ModelParams) -> SamplerSettings:
    """The sampler settings a model trained with `params` is saved with."""
    return SamplerSettings(clip_x0=params.clip_x0, inversion_start=params.inversion_start)


def build_config(params: ModelParams, id_dim: int) -> UNetConfig:
    """The preset named by `model.preset` with any explicitly set field overriding it."""
    config = PRESETS[params.preset](id_dim=id_dim)
    overrides = {
        name: getattr(params, name)
        for name in ("resolution", "base_channels", "channel_mults", "num_res_blocks",
                     "attention_resolutions", "embed_dim", "dropout")
        if getattr(params, name) is not None
    }
    return dataclasses.replace(config, **overrides)


@dataclass
class TrainingClip:
    """One video's training material; crops and masks stay memory-mapped on disk."""

    crops: np.ndarray  # (N, R, R, 3) uint8
    masks: np.ndarray  # (N, R, R) uint8
    landmarks: np.ndarray  # (N, 102) float32
    identity: np.ndarray  # (D,) float32, the video's mean identity
    identities: np.ndarray  # (N, D) float32, each frame's own identity
    frames: np.ndarray  # indices of frames with a face
    landmark_frame: int  # side (px) of the frame the landmark feature is normalised by, for mirroring


@dataclass
class Batch:
    """Model-ready tensors: images in [-1, 1], masks in [0, 1], identity and landmark codes."""

    images: torch.Tensor
    masks: torch.Tensor
    identity: torch.Tensor
    landmarks: torch.Tensor

    def to(self, device: torch.device) -> "Batch":
        """Move every tensor to `device`."""
        return Batch(*(tensor.to(device, non_blocking=True) for tensor in dataclasses.astuple(self)))


def sample_batch(
    clips: list[TrainingClip],
    videos: int,
    frames: int,
    generator: torch.Generator,
    flip: bool = True,
    frame_identity: bool = True,
) -> Batch:
    """`frames` random frames from each of `videos` random clips, each mirrored with probability 1/2.

    Mirroring flips the crop and mask and permutes the landmark feature left/right, so the
    landmark code always describes the image it comes with. Each frame carries its own identity code
    (the reference) or, with ``frame_identity=False``, its video's mean.
    """
    images, masks, identities, landmarks = [], [], [], []
    chosen = torch.randint(len(clips), (videos,), generator=generator).tolist()
    for clip_index in chosen:
        clip = clips[clip_index]
        picks = torch.randint(len(clip.frames), (frames,), generator=generator).tolist()
        mirrors = (torch.rand(frames, generator=generator) < 0.5).tolist()
        for pick, mirror in zip(picks, mirrors):
            frame = int(clip.frames[pick])
            image, mask, feature = clip.crops[frame], clip.masks[frame], clip.landmarks[frame]
            if flip and mirror:
                image, mask = image[:, ::-1], mask[:, ::-1]
                feature = flip_landmark_feature(feature, clip.landmark_frame)
            images.append(np.ascontiguousarray(image))
            masks.append(np.ascontiguousarray(mask))
            identities.append(clip.identities[frame] if frame_identity else clip.identity)
            landmarks.append(feature)
    return Batch(
        images=torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 127.5 - 1,
        masks=torch.from_numpy(np.stack(masks))[:, None].float() / 255,
        identity=torch.from_numpy(np.stack(identities)).float(),
        landmarks=torch.from_numpy(np.stack(landmarks)).float(),
    )


def training_landmarks(clips: list[TrainingClip]) -> torch.Tensor:
    """Landmark features of every face frame of `clips`, and of its mirror image (training sees both)."""
    features = []
    for clip in clips:
        own = np.asarray(clip.landmarks)[clip.frames]
        features += [own, flip_landmark_feature(own, clip.landmark_frame)]
    return torch.from_numpy(np.concatenate(features)).float()


def fingerprint(params: TrainParams, config: UNetConfig, data_hashes: dict[str, str]) -> str:
    """What a resumable checkpoint must match: everything but the run length and logging cadence."""
    relevant = params.model_dump(exclude={"steps", "checkpoint_every", "log_every", "device"})
    blob = json.dumps({"train": relevant, "model": dataclasses.asdict(config), "data": data_hashes}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


@dataclass
class TrainResult:
    """What a training run produced."""

    model: DiffusionVideoAutoencoder  # the EMA weights
    start_step: int
    steps: int
    history: list[dict[str, float]]


LogFn = Callable[[int, dict[str, float]], None]


def train(
    clips: list[TrainingClip],
    config: UNetConfig,
    sampler: SamplerSettings,
    params: TrainParams,
    device: torch.device,
    state_path: Path,
    data_hashes: dict[str, str],
    log: LogFn | None = None,
    progress: Callable | None = None,
    distributed: tuple[int, int] = (0, 1),
) -> TrainResult:
    """Train (or resume) the autoencoder; checkpoints to `state_path` every `checkpoint_every` steps.

    A checkpoint whose fingerprint differs (other data, params or architecture), or that went
    past `params.steps`, is ignored and training starts afresh. `distributed` is (rank, world size) under torchrun: the model is
    wrapped in DistributedDataParallel and each rank draws its own batches.
    """
    rank, world_size = distributed
    torch.manual_seed(params.seed)
    generator = torch.Generator().manual_seed(params.seed + rank)
    model = DiffusionVideoAutoencoder(config, sampler)
    if params.standardise_landmarks:
        model.standardise_landmarks(training_landmarks(clips))
    model = model.to(device)
    ema = EMA(model, params.ema_decay)
    optimizer = torch.optim.Adam(model.parameters(), lr=params.lr)
    scheduler = DDIMScheduler.from_settings(sampler)
    expected = fingerprint(params, config, data_hashes)
    start, history = 0, []
    saved = checkpoint.training_state_info(state_path) if Path(state_path).is_file() else None
    # Resume only a run of the same setup that has not gone past the requested length.
    if saved is not None and saved[1] == expected and saved[0] <= params.steps:
        start, _, history = checkpoint.load_training_state(state_path, model, ema.shadow, optimizer, generator)
    network: nn.Module = model
    if world_size > 1:
        network = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    amp = autocast_dtype(device, params.mixed_precision)
    scaler = torch.amp.GradScaler(enabled=amp == torch.float16)
    if rank == 0 and log:
        # A resumed run's curves start with the steps logged before the interruption.
        for record in history:
            log(record["step"], {key: value for key, value in record.items() if key != "step"})
    steps = range(start, params.steps)
    for step in progress(steps) if progress else steps:
        batch = sample_batch(clips, params.videos_per_batch, params.frames_per_video, generator,
                             frame_identity=params.identity_code == "frame").to(device)
        size = batch.images.shape[0]
        t = torch.randint(scheduler.num_train_timesteps, (size,), generator=generator).to(device)
        noise1 = torch.randn(batch.images.shape, generator=generator).to(device)
        noise2 = torch.randn(batch.images.shape, generator=generator).to(device)
        model.train()
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            z_face = model.face_code(batch.identity, batch.landmarks)
            terms = disentangle_loss(
                network, scheduler, batch.images, z_face, batch.masks, t, noise1, noise2,
                w_simple=params.w_simple, w_reg=params.w_reg,
            )
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(terms.total).backward()
        scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_(model.parameters(), params.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        # EMA warm-up: early weights are far from the optimum, so average over fewer steps at first.
        ema.decay = min(params.ema_decay, (1 + step) / (10 + step))
        ema.update(model)
        done = step + 1
        if rank == 0 and (done % params.log_every == 0 or done == params.steps):
            record = {"loss": terms.total.item(), "l_simple": terms.simple.item(), "l_reg": terms.reg.item()}
            history.append({"step": done} | record)
            if log:
                log(done, record)
        if rank == 0 and (done % params.checkpoint_every == 0 or done == params.steps):
            checkpoint.save_training_state(state_path, model, ema.shadow, optimizer, generator, done, expected,
                                           history)
    return TrainResult(model=ema.shadow, start_step=start, steps=params.steps, history=history)
