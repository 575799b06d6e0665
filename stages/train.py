"""Train the diffusion video autoencoder on the aligned crops and features of the training videos.

Outputs in OUT_DIR: `model.safetensors` (EMA weights, UNet config and the sha256 of every
training input in its metadata) and `live/` (dvclive curves: loss, l_simple, l_reg). A resumable
training state is kept in STATE_FILE; rerunning after an interruption continues from it.
Training runs data-parallel (DDP) in `train.processes` processes spawned here (CPU: two by default),
or under `torchrun --nproc_per_node N dva train ...` in torchrun's (several GPUs).
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.multiprocessing as mp
import typer
from pydantic import field_validator, model_validator

from pipeline.core.atomic import atomic_output_dir
from pipeline.core.config import ParamsView, override_params, read_params
from pipeline.core.device import resolve_device
from pipeline.core.errors import DvaError, InputError
from pipeline.core.hashing import sha256_file
from pipeline.core.progress import progress_bar
from pipeline.faces.networks.face_encoder import load_face_parser
from pipeline.faces.networks.face_parsing import FaceParser, parsing_face_mask
from pipeline.faces.networks.landmark_net import INPUT_SIZE as LANDMARK_INPUT_SIZE
from pipeline.faces.tracking import NO_FACE
from pipeline.model import checkpoint
from pipeline.model.settings import ModelParams, TrainParams, check_train_videos, training_videos
from pipeline.model.training import TrainingClip, build_config, build_sampler, resolve_processes, train
from pipeline.model.unet import DiffusionVideoAutoencoder, UNetConfig, count_parameters
from pipeline.runs.artifacts import CROPS_FILE, FEATURES_FILE, MASKS_FILE, MODEL_FILE, open_crops, read_features
from pipeline.runs.lineage import cli_run_id, write_lineage
from pipeline.video.settings import VideoParams, check_video_ids

PARSE_BATCH = 16


class TrainView(ParamsView):
    """The sections of params.yaml the train stage reads."""

    videos: dict[str, VideoParams] = {}
    model: ModelParams = ModelParams()
    train: TrainParams = TrainParams()

    @field_validator("videos")
    @classmethod
    def _video_ids(cls, value: dict[str, VideoParams]) -> dict[str, VideoParams]:
        return check_video_ids(value)

    @model_validator(mode="after")
    def _train_videos_known(self) -> "TrainView":
        check_train_videos(self.train, self.videos)
        return self

    @property
    def train_videos(self) -> list[str]:
        """Videos the autoencoder trains on (all listed videos unless `train.videos` says otherwise)."""
        return training_videos(self.train, self.videos)


def load_clips(
    align_dir: Path, encode_dir: Path, parser: FaceParser | None = None
) -> tuple[list[TrainingClip], dict[str, str], dict]:
    """One video's training material, one clip per face track, the sha256 of its input files and its encoder
    metadata.

    Each track is one person: it trains as a video of its own (its own identity code, its own batches).
    With a face `parser`, L_reg's masks are the parsed face foreground of each crop (the reference's
    image variant, hard 0/1) instead of the align stage's feathered landmark masks.
    """
    aligned, features = open_crops(align_dir), read_features(encode_dir)
    crops, masks, metadata = aligned.crops, aligned.masks, features.metadata
    faces = np.array([index for index, state in enumerate(features.status) if state != NO_FACE])
    if len(faces) == 0:
        raise InputError(align_dir, "no aligned face frames to train on")
    hashes = {
        str(Path(align_dir) / CROPS_FILE): sha256_file(Path(align_dir) / CROPS_FILE),
        str(Path(align_dir) / MASKS_FILE): sha256_file(Path(align_dir) / MASKS_FILE),
        str(Path(encode_dir) / FEATURES_FILE): sha256_file(Path(encode_dir) / FEATURES_FILE),
    }
    if parser is not None:
        masks = np.zeros(crops.shape[:3], dtype=np.uint8)
        for start in range(0, len(faces), PARSE_BATCH):
            rows = faces[start : start + PARSE_BATCH]
            masks[rows] = np.round(parsing_face_mask(np.asarray(crops[rows]), parser, for_video=False) * 255)
    # The reference (mobilenet) feature lives in the 224 px centre crop of the 256 px face; dlib's in the crop.
    landmark_frame = LANDMARK_INPUT_SIZE if metadata.get("landmark_feature_backend") == "mobilenet" else crops.shape[1]
    clips = [TrainingClip(crops, masks, features.landmarks, features.track_identities[track_id], features.identities,
                          np.intersect1d(faces, rows), landmark_frame)
             for track_id, rows in features.tracks.items() if np.isin(rows, faces).any()]
    return clips, hashes, metadata


def load_clip(
    align_dir: Path, encode_dir: Path, parser: FaceParser | None = None
) -> tuple[TrainingClip, dict[str, str], dict]:
    """The first face track of a video as one training clip (:func:`load_clips`)."""
    clips, hashes, metadata = load_clips(align_dir, encode_dir, parser)
    return clips[0], hashes, metadata


def _torchrun() -> tuple[int, int, int]:
    # torchrun sets these; a plain run is rank 0 of 1.
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


@dataclass
class TrainJob:
    """What every training process needs (pickled into each spawned worker)."""

    params: TrainView
    clips: list[TrainingClip]
    hashes: dict[str, str]
    encoder: str
    config: UNetConfig
    parameters: int
    data_root: Path
    out_dir: Path
    state_file: Path
    progress: bool
    run_id: str


def train_autoencoder(
    params: TrainView,
    data_root: Path,
    out_dir: Path,
    state_file: Path,
    progress: bool = True,
    quiet: bool = False,
    run_id: str = "python",
) -> dict:
    """Train on `params.train_videos` read from `data_root/{align,encode}/<id>`; returns a summary.

    Runs `train.processes` data-parallel processes (spawned here, gloo), or one per rank under torchrun.
    """
    data_root = Path(data_root)
    clips, hashes, encoders = [], {}, set()
    parser = None
    if params.train.parsing_weights:
        parser = load_face_parser(params.train.parsing_weights, "train.parsing_weights", resolve_device("auto"))
        hashes["train.parsing_weights"] = sha256_file(Path(params.train.parsing_weights))
    for video_id in progress_bar(params.train_videos, enabled=progress and parser is not None, desc="load clips"):
        video_clips, clip_hashes, metadata = load_clips(data_root / "align" / video_id,
                                                        data_root / "encode" / video_id, parser)
        clips.extend(video_clips)
        hashes |= clip_hashes
        encoders.add((metadata["encoder"], int(metadata["identity_dim"]), metadata.get("crop_size")))
    if len(encoders) != 1:
        raise InputError(data_root / "encode", f"training videos were encoded differently: {sorted(encoders)}")
    encoder, id_dim, crop_size = encoders.pop()
    config = build_config(params.model, id_dim)
    if crop_size != config.resolution:
        raise InputError(data_root / "align", f"crops are {crop_size} px but the model is {config.resolution} px")
    rank, world_size, local_rank = _torchrun()
    device = resolve_device(params.train.device)
    cores = torch.get_num_threads()  # torch's default: the physical cores, or OMP_NUM_THREADS when set
    processes = world_size if world_size > 1 else resolve_processes(
        params.train.processes, device, cores, params.train.videos_per_batch * params.train.frames_per_video)
    threads = max(1, cores // processes)
    job = TrainJob(params, clips, hashes, encoder, config, count_parameters(build_model_for_count(config)),
                   data_root, Path(out_dir), Path(state_file), progress, run_id)
    if rank == 0 and not quiet:
        layout = f" ({processes} processes x {threads} thread{'s' * (threads > 1)})" if processes > 1 else ""
        typer.echo(f"UNet '{params.model.preset}' {config.resolution}px: {job.parameters:,} parameters on "
                   f"{device}{layout}")
    if world_size > 1:
        if device.type == "cuda":
            device = torch.device("cuda", local_rank)
            torch.cuda.set_device(device)
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
        try:
            if rank > 0:
                _train_rank(job, None, rank, world_size, device)
                return {}
            with atomic_output_dir(out_dir) as work:
                _train_rank(job, work, rank, world_size, device)
                return json.loads((work / "summary.json").read_text())
        finally:
            torch.distributed.destroy_process_group()
    with atomic_output_dir(out_dir) as work:
        if processes > 1:
            _spawn(job, work, processes, threads)
        else:
            _train_rank(job, work, 0, 1, device)
        return json.loads((work / "summary.json").read_text())


def _train_rank(job: TrainJob, work: Path | None, rank: int, world_size: int, device: torch.device) -> None:
    """One process's part of the training; rank 0 also writes curves, model, summary and lineage into `work`."""
    params = job.params
    live = _live(work / "live") if rank == 0 else None
    started = time.perf_counter()
    result = train(
        job.clips, job.config, build_sampler(params.model), params.train, device, job.state_file, job.hashes,
        log=(lambda step, record: _log(live, step, record)) if live else None,
        progress=(lambda steps: progress_bar(steps, enabled=job.progress and rank == 0, total=len(steps),
                                             desc="train")),
        distributed=(rank, world_size),
    )
    elapsed = time.perf_counter() - started
    if rank > 0:
        return
    live.end()
    summary = {
        "parameters": job.parameters,
        "processes": world_size,
        "start_step": result.start_step,
        "steps": result.steps,
        "images_per_second": (result.steps - result.start_step) * params.train.videos_per_batch
        * params.train.frames_per_video / max(elapsed, 1e-9),
        "final": result.history[-1] if result.history else {},
    }
    checkpoint.save_model(
        work / MODEL_FILE,
        result.model,
        {
            "identity_encoder": job.encoder,
            "train_videos": json.dumps(params.train_videos),
            "training_data_sha256": json.dumps(job.hashes, sort_keys=True),
            "train_params": params.train.model_dump_json(),
            "steps": str(result.steps),
        },
    )
    (work / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    folders = [job.data_root / stage / video_id for video_id in params.train_videos for stage in ("align", "encode")]
    write_lineage(work, job.out_dir, stage="train", inputs=folders,
                  params={"train": params.train, "model": params.model, "train_videos": params.train_videos},
                  run_id=job.run_id)


def _spawn(job: TrainJob, work: Path, processes: int, threads: int) -> None:
    """Train in `processes` spawned processes of `threads` threads each; a worker's error becomes a DvaError.

    Each worker gets its own copy of the clips (pickled): fine at CPU scale, where this runs (the demo's
    clip is 1.4 MB); multi-GPU runs use torchrun, whose processes memory-map the crops themselves.
    """
    context = mp.get_context("spawn")
    errors = context.SimpleQueue()
    with tempfile.TemporaryDirectory(prefix="dva-train-") as rendezvous:
        # A file store: the processes meet without opening a port.
        store = f"file://{Path(rendezvous) / 'store'}"
        try:
            mp.spawn(_worker, args=(processes, threads, store, job, work, errors), nprocs=processes, join=True)
        except (mp.ProcessRaisedException, mp.ProcessExitedException) as exc:
            # The first failure's own message; the processes stopped after it only report being stopped.
            reported = dict(_drain(errors))
            message = reported.get(exc.error_index) or next(iter(reported.values()), None)
            raise DvaError(message or f"training process {exc.error_index} died ({exc})") from None


def _drain(queue) -> list[tuple[int, str]]:
    items = []
    while not queue.empty():
        items.append(queue.get())
    return items


def _die_with_parent() -> None:
    """Have Linux SIGTERM this worker when the `dva train` that spawned it dies, however it dies.

    torch's spawn asks for SIGINT, which a process started from a background job (`dva train &` in a script,
    nohup) inherits as ignored: those workers would train on, writing the training state, with nobody
    waiting for them.
    """
    if not sys.platform.startswith("linux"):
        return
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG
    parent = mp.parent_process()
    if parent is not None and os.getppid() != parent.pid:
        os._exit(1)  # the parent died before the request was in place


def _worker(rank: int, processes: int, threads: int, store: str, job: TrainJob, work: Path, errors) -> None:
    _die_with_parent()
    # One thread per process: the processes, not the threads, share the cores.
    torch.set_num_threads(threads)
    try:
        torch.distributed.init_process_group("gloo", init_method=store, rank=rank, world_size=processes)
        try:
            _train_rank(job, work, rank, processes, torch.device("cpu"))
        finally:
            torch.distributed.destroy_process_group()
    except DvaError as exc:
        errors.put((rank, str(exc)))
        raise
    except Exception as exc:
        first_line = (str(exc).strip().splitlines() or [""])[0]
        errors.put((rank, f"training process {rank} failed: {type(exc).__name__}: {first_line}"))
        raise


def build_model_for_count(config: UNetConfig) -> DiffusionVideoAutoencoder:
    """A meta-device model, to count parameters without allocating them."""
    with torch.device("meta"):
        return DiffusionVideoAutoencoder(config)


def _live(directory: Path):
    from dvclive import Live

    return Live(dir=str(directory), save_dvc_exp=False, dvcyaml=None, report=None)


def _log(live, step: int, record: dict[str, float]) -> None:
    live.step = step
    for name, value in record.items():
        live.log_metric(f"train/{name}", value)


def cli(
    out_dir: Path = typer.Argument(..., help="Output folder for the model and curves (replaced when complete)."),
    data_root: Path = typer.Option(Path("data"), help="Folder holding align/<id> and encode/<id>."),
    state_file: Path = typer.Option(Path("data/train_state/state.safetensors"), help="Resumable training state."),
    steps: int = typer.Option(None, help="Override train.steps."),
    params: Path = typer.Option(Path("params.yaml"), "--params", help="Parameters file."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    settings = read_params(params, TrainView)
    if steps is not None:
        settings = override_params(settings, "train", "--steps", steps=steps)
    summary = train_autoencoder(settings, data_root, out_dir, state_file, progress=not quiet, quiet=quiet,
                                run_id=cli_run_id(os.environ))
    if not quiet:
        typer.echo(json.dumps(summary))
