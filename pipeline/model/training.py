"""Training of the diffusion video autoencoder: clip sampling, the optimisation loop, resumption."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import distributed as dist
from torch import nn

from pipeline.core.device import autocast_dtype, channels_last, use_channels_last
from pipeline.core.errors import ParamsError
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

    def select(self, rows: slice) -> "Batch":
        """The samples `rows` of every tensor."""
        return Batch(*(tensor[rows] for tensor in dataclasses.astuple(self)))


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
    """What a resumable checkpoint must match: everything but the run length, logging cadence and hardware.

    The run length counts under a cosine schedule, whose learning rate at each step depends on it. The
    number of processes does not: every process count trains the same global batch.
    """
    ignored = {"checkpoint_every", "log_every", "device", "processes"}
    relevant = params.model_dump(exclude=ignored if params.lr_schedule == "cosine" else ignored | {"steps"})
    blob = json.dumps({"train": relevant, "model": dataclasses.asdict(config), "data": data_hashes}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def learning_rate(params: TrainParams, step: int) -> float:
    """The learning rate of optimisation step `step` (0-based): linear warm-up, then constant or cosine to 0."""
    factor = min(1.0, (step + 1) / params.warmup_steps) if params.warmup_steps else 1.0
    if params.lr_schedule == "cosine":
        progress = max(0, step - params.warmup_steps) / max(1, params.steps - params.warmup_steps)
        factor *= 0.5 * (1 + math.cos(math.pi * progress))
    return params.lr * factor


def resolve_processes(setting: int | str, device: torch.device, cores: int, global_batch: int) -> int:
    """How many data-parallel processes `train.processes` means on `device` with `cores` CPU cores.

    `auto`: two on a CPU with at least two cores (two one-thread processes train almost twice as fast as
    one two-thread process, benchmarks/train_bench.py), one on a GPU (several GPUs: torchrun).
    """
    if setting == "auto":
        return 1 if device.type == "cuda" else max(1, min(2, cores))
    if setting > 1 and device.type == "cuda":
        raise ParamsError(f"train.processes: {setting} processes on one GPU; use torchrun with one process per GPU")
    if setting > global_batch:
        raise ParamsError(f"train.processes: {setting} processes for a batch of {global_batch} frames "
                          "(videos_per_batch x frames_per_video); each process needs at least one")
    return int(setting)


def batch_share(size: int, rank: int, world_size: int) -> slice:
    """The rows of a global batch of `size` that process `rank` trains on: contiguous, sizes differ by at most 1."""
    base, extra = divmod(size, world_size)
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (rank < extra))


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
    past `params.steps`, is ignored and training starts afresh.

    `distributed` is (rank, world size) of an initialised process group: the model is wrapped in
    DistributedDataParallel and every rank draws the same global batch (one generator, one seed) and
    trains on its share of it, so any number of processes trains the same run (up to float summation
    order) and a checkpoint resumes under any number. Rank 0 alone logs and checkpoints.
    """
    rank, world_size = distributed
    torch.manual_seed(params.seed)
    generator = torch.Generator().manual_seed(params.seed)
    model = DiffusionVideoAutoencoder(config, sampler)
    if params.standardise_landmarks:
        model.standardise_landmarks(training_landmarks(clips))
    # Channels-last convolutions on CUDA (tensor cores); the CPU keeps the default layout and its results.
    model = channels_last(model.to(device), use_channels_last("auto", device))
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
        # Dropout draws from the global RNG: each rank its own stream for its own samples, derived from the
        # seed, the rank and the starting step so that a resumed run is reproducible too.
        torch.manual_seed(int(np.random.SeedSequence([params.seed, rank, start]).generate_state(1)[0]))
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
                             frame_identity=params.identity_code == "frame")
        size = batch.images.shape[0]
        t = torch.randint(scheduler.num_train_timesteps, (size,), generator=generator)
        noise1 = torch.randn(batch.images.shape, generator=generator)
        noise2 = torch.randn(batch.images.shape, generator=generator)
        rows = batch_share(size, rank, world_size)
        batch = batch.select(rows).to(device)
        t, noise1, noise2 = (tensor[rows].to(device) for tensor in (t, noise1, noise2))
        # The loss is a mean over this rank's samples and DDP averages gradients over ranks: weighting by
        # the share keeps the gradient the global batch's mean when shares differ in size (1 with one process).
        weight = (rows.stop - rows.start) * world_size / size
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(params, step)
        model.train()
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            z_face = model.face_code(batch.identity, batch.landmarks)
            terms = disentangle_loss(
                network, scheduler, batch.images, z_face, batch.masks, t, noise1, noise2,
                w_simple=params.w_simple, w_reg=params.w_reg,
            )
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(terms.total * weight).backward()
        scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_(model.parameters(), params.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        # EMA warm-up: early weights are far from the optimum, so average over fewer steps at first.
        ema.decay = min(params.ema_decay, (1 + step) / (10 + step))
        ema.update(model)
        done = step + 1
        if done % params.log_every == 0 or done == params.steps:
            # The global batch's losses: each rank's share-weighted means, summed over ranks.
            values = torch.stack([terms.total, terms.simple, terms.reg]).detach().float() * (weight / world_size)
            if world_size > 1:
                dist.all_reduce(values)
            if rank == 0:
                record = dict(zip(("loss", "l_simple", "l_reg"), values.tolist()))
                history.append({"step": done} | record)
                if log:
                    log(done, record)
        if rank == 0 and (done % params.checkpoint_every == 0 or done == params.steps):
            checkpoint.save_training_state(state_path, model, ema.shadow, optimizer, generator, done, expected,
                                           history)
    return TrainResult(model=ema.shadow, start_step=start, steps=params.steps, history=history)
