"""DDIM against BDIA-DDIM (exact inversion): reconstruction, cost and two edits' effect per step count.

Run: `python benchmarks/sampler_bench.py [--checkpoint data/train/model.safetensors] [--steps 5 10 20 50]
[--gammas 1.0 0.5] [--frames 15] [--out benchmarks/results/sampler_cpu.json] [--quiet]`.

On evenly spaced face frames of one video (the demo's `data/align|encode/carphone` by default), with
one model, in one run, for each sampler and number of steps S: UNet evaluations per frame (inversion,
each decoding), seconds per frame of inversion and decoding, reconstruction PSNR/SSIM (on the float
decode, as `dva invert` reports it), the noise maps' standard deviation, and an edit decoded from the
same inversion: the demo's anonymisation (`reference`, away, strength 0.8). The edit's effect is the
identity embedding's cosine to the video identity (lower: stronger edit; the identity encoder of the
encode stage) and its PSNR against the same edit decoded by DDIM at the largest S (how close a cheap
decode comes to the converged one). BDIA runs once per `--gammas` value (a gamma the params would refuse
at that S is skipped). With the demo's driver prepared (`--driver`, `--driver-extract`, `--driver-encode`), each run
also decodes the motion edit (the driver's codes as they are, matched by time) and reports the landmark
error of the decoded faces to those codes over the reconstruction's (evaluate's `error_ratio`) and the
share of decoded faces dlib still detects (speckled decodes are missed). Timings share a loaded
machine: compare ratios within one run.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from pydantic import ValidationError

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.core.device import resolve_device  # noqa: E402
from pipeline.core.hashing import sha256_file  # noqa: E402
from pipeline.core.progress import progress_bar  # noqa: E402
from pipeline.editing import motion  # noqa: E402
from pipeline.editing.driving import DriverArtifacts, MotionInputs  # noqa: E402
from pipeline.editing.editing import reference_edit  # noqa: E402
from pipeline.editing.kinds import MotionContext, MotionEdit  # noqa: E402
from pipeline.evaluation.landmark_metrics import detect_crop_landmarks  # noqa: E402
from pipeline.faces.face_detection import make_landmark_detector  # noqa: E402
from pipeline.faces.identity import make_identity_encoder  # noqa: E402
from pipeline.faces.tracking import NO_FACE  # noqa: E402
from pipeline.model.checkpoint import load_model  # noqa: E402
from pipeline.model.diffusion import DDIMScheduler  # noqa: E402
from pipeline.model.inversion import (  # noqa: E402
    InvertParams,
    decode_frames,
    face_codes,
    invert_frames,
    to_model_images,
    to_uint8_crops,
)
from pipeline.params import load_params  # noqa: E402
from pipeline.runs.artifacts import open_crops, read_alignment, read_features  # noqa: E402
from stages.invert import frame_quality  # noqa: E402

SAMPLERS = ("ddim", "bdia")
EDIT_STRENGTH = 0.8  # the demo's anonymise edit (params.yaml)
MOTION_EDIT = "follow_reversed"  # the demo's motion edit


def _timed(device: torch.device, run):
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = run()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return result, time.perf_counter() - start


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR (dB) between two float image batches in [-1, 1], on [0, 1]."""
    return -10 * float(np.log10((((a.clamp(-1, 1) - b.clamp(-1, 1)) / 2) ** 2).mean().item()))


def bdia_accepts(gamma: float, steps: int) -> bool:
    """Whether the params would accept BDIA with this gamma at S = `steps` (the inversion's round-off bound)."""
    try:
        InvertParams(sampler="bdia", steps=steps, bdia_gamma=gamma)
    except ValidationError:
        return False
    return True


def run_bench(checkpoint: Path, align: Path, encode: Path, params_file: Path, steps: list[int], frame_count: int,
              batch: int, device: torch.device, progress: bool, gammas: list[float] | None = None,
              driver: MotionInputs | None = None) -> dict:
    """Measure every sampler at every S on `frame_count` evenly spaced face frames; returns the JSON record.

    `driver` is the motion edit's inputs: the video's extract and the driver's video, extract and encode.
    """
    model, _ = load_model(checkpoint, device)
    scheduler = DDIMScheduler.from_settings(model.sampler)
    crops, features = open_crops(align).crops, read_features(encode)
    status, landmarks, identity = features.status, features.landmarks, features.video_identity
    crop_landmarks = read_alignment(align).crop_landmarks
    faces = np.array([index for index, state in enumerate(status) if state != NO_FACE])
    frames = faces[np.linspace(0, len(faces) - 1, min(frame_count, len(faces))).round().astype(int)]
    params = load_params(params_file) if params_file.is_file() else None
    encoder = make_identity_encoder(params.encode.backend if params else "dlib",
                                    params.encode.arcface_weights if params else None)
    edited_identity = reference_edit(identity, identity, EDIT_STRENGTH, away=True)
    source = np.asarray(crops[frames])

    def identity_cosine(images: np.ndarray) -> float:
        return float(np.mean(encoder.embed(images, crop_landmarks[frames]) @ identity))

    # The codes the edit stage decodes the demo's `follow_reversed` with: the driver's, as they are.
    motion_codes = None
    if driver:
        spec = MotionEdit(kind="motion", driver=str(driver.drivers[MOTION_EDIT].source), mode="absolute")
        valid = np.array([state != NO_FACE for state in status])
        backend = features.metadata.get("landmark_feature_backend")
        motion_codes = spec.motion_codes(MotionContext(MOTION_EDIT, landmarks, valid, backend, driver))[0]
    detector = make_landmark_detector("dlib", None, 0, 0.5)
    rows_of_frames = np.arange(len(frames))

    def landmarks_of(images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        return detect_crop_landmarks(detector, to_uint8_crops(images), rows_of_frames, crop_landmarks[frames],
                                     False, "")

    chunks = [slice(start, start + batch) for start in range(0, len(frames), batch)]
    runs = [(sampler, count, gamma) for count in sorted(steps, reverse=True) for sampler in SAMPLERS
            for gamma in ((1.0,) if sampler == "ddim" else gammas or (1.0,))
            if sampler == "ddim" or bdia_accepts(gamma, count)]
    rows, reference_edit_images = [], None
    for name, count, gamma in progress_bar(runs, enabled=progress, total=len(runs), desc="samplers"):
        sampler = InvertParams(sampler=name, steps=count, bdia_gamma=gamma if name == "bdia" else None
                               ).build_sampler(scheduler)
        recon, edited, driven, std = [], [], [], []
        invert_s = decode_s = 0.0
        for chunk in chunks:
            images = to_model_images(source[chunk], device)
            with torch.inference_mode():
                z_face = face_codes(model, identity, landmarks[frames[chunk]], device)
                z_edit = face_codes(model, edited_identity, landmarks[frames[chunk]], device)
            state, seconds = _timed(device, lambda: invert_frames(model, sampler, images, z_face))
            invert_s += seconds
            decoded, seconds = _timed(device, lambda: decode_frames(model, sampler, state, z_face))
            decode_s += seconds
            recon.append(decoded.cpu())
            edited.append(decode_frames(model, sampler, state, z_edit).cpu())
            if motion_codes is not None:
                with torch.inference_mode():
                    z_motion = face_codes(model, identity, motion_codes[frames[chunk]], device)
                driven.append(decode_frames(model, sampler, state, z_motion).cpu())
            std.extend(sampler.noise_maps(state).flatten(1).std(dim=1).cpu().tolist())
        recon, edited = torch.cat(recon), torch.cat(edited)
        following = {}
        if motion_codes is not None:
            asked = motion.as_points(motion_codes[frames])
            (recon_points, _), (driven_points, found) = landmarks_of(recon), landmarks_of(torch.cat(driven))
            following = {"motion_error_ratio": float(motion.landmark_errors(driven_points, asked).mean()
                                                     / motion.landmark_errors(recon_points, asked).mean()),
                         "motion_detected": float(found.mean())}
        if reference_edit_images is None:  # the first run: DDIM at the largest S
            reference_edit_images = edited
        psnr, ssim, _ = frame_quality(source, recon)
        first_edit, further_edit = sampler.evaluations()
        rows.append({
            "sampler": name,
            "steps": count,
            "gamma": gamma if name == "bdia" else None,
            "unet_evals_per_frame": {"invert": first_edit - further_edit, "decode": further_edit,
                                     "first_edit": first_edit, "further_edit": further_edit},
            "invert_s_per_frame": invert_s / len(frames),
            "decode_s_per_frame": decode_s / len(frames),
            "psnr": float(np.mean(psnr)),
            "psnr_min": float(np.min(psnr)),
            "ssim": float(np.mean(ssim)),
            "noise_std": statistics.fmean(std),
            "edit_identity_cosine": identity_cosine(to_uint8_crops(edited)),
            # None for the converged run itself (its PSNR against itself is infinite, which JSON lacks).
            "edit_psnr_vs_converged": None if edited is reference_edit_images else _psnr(edited, reference_edit_images),
        } | following)
    return {
        "device": str(device),
        "host": platform.node(),
        "torch_threads": torch.get_num_threads(),
        "checkpoint": str(checkpoint),
        "checkpoint_sha256": sha256_file(checkpoint),
        "sampler_settings": json.loads(model.sampler.to_json()),
        "resolution": model.config.resolution,
        "frames": [int(frame) for frame in frames],
        "identity_encoder": encoder.name,
        "edit": {"kind": "reference", "away": True, "strength": EDIT_STRENGTH},
        "source_identity_cosine": identity_cosine(source),
        "edited_code_cosine": float(edited_identity @ identity),
        "converged_edit": {"sampler": "ddim", "steps": max(steps)},
        "motion_edit": {"driver": str(driver.drivers[MOTION_EDIT].source), "mode": "absolute"} if driver else None,
        "rows": rows,
    }


def print_table(result: dict) -> None:
    """The README table: one row per sampler and S."""
    print(f"{'sampler':11} {'S':>3} {'evals 1st/next':>14} {'PSNR dB':>8} {'SSIM':>7} {'noise std':>9} "
          f"{'inv s/f':>8} {'dec s/f':>8} {'edit id cos':>11} {'edit vs conv dB':>15} {'motion ratio':>12} "
          f"{'detected':>8}")

    def shown(value, spec):
        return "-" if value is None else format(value, spec)

    for row in result["rows"]:
        evals = row["unet_evals_per_frame"]
        name = row["sampler"] if row["gamma"] is None else f"bdia g={row['gamma']:g}"
        print(f"{name:11} {row['steps']:>3} {evals['first_edit']:>8}/{evals['further_edit']:<5} "
              f"{row['psnr']:>8.1f} {row['ssim']:>7.4f} {row['noise_std']:>9.2f} {row['invert_s_per_frame']:>8.3f} "
              f"{row['decode_s_per_frame']:>8.3f} {row['edit_identity_cosine']:>11.3f} "
              f"{shown(row['edit_psnr_vs_converged'], '.1f'):>15} {shown(row.get('motion_error_ratio'), '.3f'):>12} "
              f"{shown(row.get('motion_detected'), '.2f'):>8}")
    print(f"source crops' identity cosine {result['source_identity_cosine']:.3f}; edited code's "
          f"{result['edited_code_cosine']:.3f}; converged edit: DDIM S={result['converged_edit']['steps']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=REPO / "data/train/model.safetensors")
    parser.add_argument("--align", type=Path, default=REPO / "data/align/carphone")
    parser.add_argument("--encode", type=Path, default=REPO / "data/encode/carphone")
    parser.add_argument("--params", type=Path, default=REPO / "params.yaml",
                        help="Parameters file naming the identity encoder (dlib when absent).")
    parser.add_argument("--steps", type=int, nargs="+", default=[5, 10, 20, 50])
    parser.add_argument("--gammas", type=float, nargs="+", default=[1.0, 0.5], help="BDIA gammas to compare.")
    parser.add_argument("--extract", type=Path, default=REPO / "data/extract/carphone")
    parser.add_argument("--driver", type=Path, default=REPO / "data/derived/carphone_reversed.mp4")
    parser.add_argument("--driver-extract", type=Path, default=REPO / "data/drivers/carphone_reversed/extract")
    parser.add_argument("--driver-encode", type=Path, default=REPO / "data/drivers/carphone_reversed/encode",
                        help="Motion edit's driver (skipped when its folders are missing).")
    parser.add_argument("--frames", type=int, default=15)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--quiet", "-q", action="store_true", help="No progress bar.")
    args = parser.parse_args()
    for path in (args.checkpoint, args.align, args.encode):
        if not path.exists():
            parser.error(f"{path} not found (run `make demo` first, or pass --checkpoint/--align/--encode)")
    driver = MotionInputs(args.extract, {MOTION_EDIT: DriverArtifacts(args.driver, args.driver_extract,
                                                                      args.driver_encode)})
    prepared = args.driver.is_file() and all(path.is_dir() for path in (args.extract, args.driver_extract,
                                                                         args.driver_encode))
    result = run_bench(args.checkpoint, args.align, args.encode, args.params, args.steps, args.frames, args.batch,
                       resolve_device(args.device), not args.quiet, args.gammas, driver if prepared else None)
    print_table(result)
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
