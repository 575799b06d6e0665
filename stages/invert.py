"""Invert every aligned frame of a video to its noise map, once, for all later edits.

Conditioning: the identity code of the face's track (`invert.video_identity`: the normalised mean, or the
reference's raw mean) and each frame's landmark feature; rows are those of the align table (a track's
frames, track after track). The sampler is
`invert.sampler`: DDIM, or BDIA-DDIM whose inversion is exact (see pipeline/model/samplers.py). Outputs in
OUT_DIR: `noise.npy`, float32, zeros for no_face frames: the sampler's state per frame, (N, 3, R, R)
noise maps `x_T` for DDIM, (N, 2, 3, R, R) `x_T` and the latent of the second timestep for BDIA;
`recon.npy` (N, R, R, 3) uint8 decoded reconstructions, `frames.parquet` (per-frame PSNR, SSIM, MS-SSIM,
noise std; its metadata holds the sampler's config, which every edit decodes with) and `metrics.json`
(means over the face frames: psnr, ssim, ms_ssim, noise_std, and the MS-SSIM scales and window used
for this crop size, pipeline/evaluation/image_metrics.py; DVC metrics).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
import typer

from pipeline.core.atomic import atomic_output_dir
from pipeline.core.config import ParamsView, override_params, read_params
from pipeline.core.conventions import Conventions
from pipeline.core.device import resolve_device
from pipeline.core.errors import InputError
from pipeline.core.hashing import sha256_file
from pipeline.core.progress import progress_bar
from pipeline.core.tables import write_table
from pipeline.evaluation.image_metrics import ms_ssim, ms_ssim_settings, to_unit_images
from pipeline.faces.tracking import NO_FACE
from pipeline.model.checkpoint import load_model, require_explicit_conventions
from pipeline.model.diffusion import DDIMScheduler
from pipeline.model.inversion import (
    InvertParams,
    decode_frames,
    face_codes,
    inference_batch_size,
    invert_frames,
    prepare_model,
    to_model_images,
    to_uint8_crops,
)
from pipeline.runs.artifacts import (
    INVERT_METRICS_FILE,
    INVERT_TABLE_FILE,
    NOISE_FILE,
    RECON_FILE,
    open_crops,
    read_features,
)
from pipeline.runs.lineage import cli_run_id, write_lineage


class InvertView(ParamsView):
    """The sections of params.yaml the invert stage reads."""

    conventions: Conventions = "auto"
    invert: InvertParams = InvertParams()


def frame_quality(reference: np.ndarray, decoded: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-frame PSNR (dB), SSIM and MS-SSIM of decoded images (B, 3, R, R) in [-1, 1] against uint8 crops
    (B, R, R, 3).

    Measured on [0, 1] images before rounding to uint8: an exact sampler's decode rounds back to the
    source crop itself, whose PSNR would be infinite.
    """
    # Imported here: torchmetrics costs seconds to import, which a preview (it measures nothing) skips.
    from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

    ref = to_unit_images(reference)
    # Contiguous: the sums' order follows the memory layout, and a frame measured from the frame cache must
    # score exactly as in the batch that decoded it.
    dec = ((decoded.detach().float().cpu().clamp(-1, 1) + 1) / 2).contiguous()
    psnr = peak_signal_noise_ratio(dec, ref, data_range=1.0, reduction="none", dim=(1, 2, 3))
    ssim = structural_similarity_index_measure(dec, ref, data_range=1.0, reduction="none")
    return psnr.numpy(), ssim.numpy(), ms_ssim(dec, ref, ms_ssim_settings(ref.shape[-1]))


def invert_video(
    checkpoint: Path,
    align_dir: Path,
    encode_dir: Path,
    out_dir: Path,
    params: InvertParams,
    progress: bool = True,
    run_id: str = "python",
    window: np.ndarray | None = None,
    frame_cache: Path | None = None,
    measure: bool = True,
) -> dict:
    """Invert and re-decode all face frames of one video; returns its metrics.

    `window` (frame indices) inverts only the faces of those frames (a preview: the other rows stay zero
    and NaN, the metrics cover the window). `frame_cache` is a folder of per-face results (`<row>.npz`)
    shared by the runs of one inversion key: frames found there are read instead of inverted, and a
    window run adds the frames it inverts, so a full run after a preview inverts only the frames the
    preview lacked. `measure=False` skips PSNR, SSIM and MS-SSIM (NaN in the table, absent from the metrics);
    the frame cache keeps each frame's decode before rounding, so a later run measures those frames exactly
    as if it had decoded them itself.
    """
    device = resolve_device(params.device)
    model, model_meta = load_model(checkpoint, device)
    model = prepare_model(model, params)
    crops, features = open_crops(align_dir).crops, read_features(encode_dir)
    status, landmarks = features.status, features.landmarks
    track_identities = params.track_identity_codes(features)
    row_identities = np.stack([track_identities[int(track_id)] for track_id in features.track])
    features_meta = features.metadata
    if crops.shape[1] != model.config.resolution:
        raise InputError(align_dir, f"crops are {crops.shape[1]} px but the model is {model.config.resolution} px")
    if features_meta["encoder"] != model_meta.get("identity_encoder", features_meta["encoder"]):
        raise InputError(encode_dir, f"encoded with {features_meta['encoder']}, the model expects "
                         f"{model_meta['identity_encoder']}")
    landmarks_by = features_meta.get("landmark_feature_backend", "dlib")
    if landmarks_by != model_meta.get("landmark_encoder", landmarks_by):
        raise InputError(encode_dir, f"landmark features from {landmarks_by}, the model expects "
                         f"{model_meta['landmark_encoder']} (set encode.landmark_backend)")
    sampler = params.build_sampler(DDIMScheduler.from_settings(model.sampler))
    frames = np.array([index for index, state in enumerate(status) if state != NO_FACE], dtype=np.int64)
    if window is not None:  # frame indices: every chosen face in those frames
        frames = frames[np.isin(features.frame[frames], window)]
    count, size = len(status), crops.shape[1]
    psnr, ssim, msssim, noise_std = (np.full(count, np.nan, dtype=np.float32) for _ in range(4))
    batch_size = inference_batch_size(params, model)
    cached = [row for row in frames if frame_cache is not None and (Path(frame_cache) / f"{row}.npz").is_file()]
    todo = np.setdiff1d(frames, cached)
    batches = [todo[start : start + batch_size] for start in range(0, len(todo), batch_size)]
    with atomic_output_dir(out_dir) as work:
        noise = np.lib.format.open_memmap(work / NOISE_FILE, mode="w+", dtype=np.float32,
                                          shape=(count, *sampler.state_shape((3, size, size))))
        recon = np.lib.format.open_memmap(work / RECON_FILE, mode="w+", dtype=np.uint8, shape=(count, size, size, 3))
        for start in range(0, len(cached), batch_size):  # measured in batches, like the frames inverted below
            rows, decoded = cached[start : start + batch_size], []
            for row in rows:
                with np.load(Path(frame_cache) / f"{row}.npz") as stored:
                    noise[row], recon[row], noise_std[row] = stored["noise"], stored["recon"], stored["noise_std"]
                    decoded.append(stored["decoded"])
            if measure:
                psnr[rows], ssim[rows], msssim[rows] = frame_quality(np.asarray(crops[rows]),
                                                                     torch.from_numpy(np.stack(decoded)))
        for rows in progress_bar(batches, enabled=progress, total=len(batches),
                                 desc=f"invert {params.sampler} S={params.steps}"):
            source = np.asarray(crops[rows])
            z_face = face_codes(model, row_identities[rows], landmarks[rows], device)
            state = invert_frames(model, sampler, to_model_images(source, device), z_face, params)
            decoded = decode_frames(model, sampler, state, z_face, params)
            noise[rows] = state.cpu().numpy()
            recon[rows] = to_uint8_crops(decoded)
            if measure:
                psnr[rows], ssim[rows], msssim[rows] = frame_quality(source, decoded)
            noise_std[rows] = sampler.noise_maps(state).flatten(1).std(dim=1).cpu().numpy()
            if frame_cache is not None and window is not None:  # a whole inversion supersedes the cache
                _cache_frames(Path(frame_cache), rows, noise, recon, noise_std, decoded)
        noise.flush()
        recon.flush()
        del noise, recon
        quality = {
            "psnr": float(np.nanmean(psnr)),
            "ssim": float(np.nanmean(ssim)),
            "ms_ssim": float(np.nanmean(msssim)),
            "ms_ssim_settings": ms_ssim_settings(size).as_dict(),
        } if measure else {}
        metrics = quality | {
            "noise_std": float(np.nanmean(noise_std)),
            "noise_std_min": float(np.nanmin(noise_std)),
            "noise_std_max": float(np.nanmax(noise_std)),
            "frames": int(len(frames)),
            "steps": params.steps,
        }
        write_table(
            work / INVERT_TABLE_FILE,
            {
                "track": pa.array(features.track, pa.int32()),
                "index": pa.array(features.frame, pa.int32()),
                "status": pa.array(status, pa.string()),
                "psnr": pa.array(psnr),
                "ssim": pa.array(ssim),
                "ms_ssim": pa.array(msssim),
                "noise_std": pa.array(noise_std),
            },
            {"checkpoint_sha256": sha256_file(Path(checkpoint)),
             "video_identity": next(iter(track_identities.values())).tolist(),
             "track_identities": {str(track_id): code.tolist() for track_id, code in track_identities.items()},
             "video_identity_rule": params.video_identity}
            | sampler.config(),
        )
        (work / INVERT_METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n")
        write_lineage(work, out_dir, stage="invert", inputs=[align_dir, encode_dir], params={"invert": params},
                      weights={"autoencoder": Path(checkpoint)}, run_id=run_id)
    return metrics


def _cache_frames(folder: Path, rows: np.ndarray, noise: np.ndarray, recon: np.ndarray, noise_std: np.ndarray,
                  decoded: torch.Tensor) -> None:
    # One file per frame, renamed into place when written: a killed run leaves only whole frames. The decode
    # before rounding is kept for the quality figures of the run that reads the frame.
    folder.mkdir(parents=True, exist_ok=True)
    decoded = decoded.detach().float().cpu().numpy()
    for position, row in enumerate(rows):
        temporary = folder / f".{row}.tmp.npz"
        np.savez(temporary, noise=noise[row], recon=recon[row], noise_std=noise_std[row], decoded=decoded[position])
        os.replace(temporary, folder / f"{row}.npz")


def cli(
    checkpoint: Path = typer.Argument(..., help="Model file from `dva train` (model.safetensors)."),
    align_dir: Path = typer.Argument(..., help="Output folder of `dva align`."),
    encode_dir: Path = typer.Argument(..., help="Output folder of `dva encode`."),
    out_dir: Path = typer.Argument(..., help="Output folder (replaced when complete)."),
    steps: int = typer.Option(None, help="Override invert.steps (sampler steps each way)."),
    params: Path = typer.Option(Path("params.yaml"), "--params", help="Parameters file (must exist)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    settings = read_params(params, InvertView)
    if steps is not None:
        settings = override_params(settings, "invert", "--steps", steps=steps)
    require_explicit_conventions(settings.conventions, checkpoint, params)
    settings = settings.invert
    metrics = invert_video(checkpoint, align_dir, encode_dir, out_dir, settings, progress=not quiet,
                           run_id=cli_run_id(os.environ))
    if not quiet:
        typer.echo(json.dumps(metrics))
