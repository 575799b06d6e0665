"""GPU readiness: UNet forwards/s and frames/s per stage against the same device's matmul ceiling.

Run: `python benchmarks/gpu_bench.py [--presets tiny paper] [--device auto] [--batches 1 8 32 auto]
[--steps 10] [--compile] [--out benchmarks/results/gpu_<device>.json]`.

For each preset (`tiny` at 64 px; `paper`, the paper's 190.6 M-parameter UNet at 256 px), untrained (the cost
does not depend on the weights), under the stages' inference settings (`--precision`, default `auto`: bf16
autocast and channels-last on CUDA, float32 on the CPU; `--compile` for torch.compile):

- UNet forwards per second (one forward = one image through the UNet once) at each batch size, the achieved
  TFLOP/s (FLOPs counted by torch's FlopCounterMode) and its share of the matmul ceiling measured in the
  same run (bf16 and fp32 `torch.mm` on CUDA, fp32 on the CPU);
- memory per frame of one forward, estimated (`inference_bytes_per_frame`, what `batch_size: auto` plans
  with) and measured (CUDA: peak allocated; CPU: resident-memory growth in a fresh process), and the batch
  `auto` resolves to;
- frames/s of each UNet stage through the project's own functions: invert (inversion and the reconstruction's
  decode, `invert_frames` + `decode_frames`), edit decode (an edit and its per-frame baseline decoded in one
  batch, as `dva edit`) and train steps (`pipeline.model.training.train` on synthetic clips).

Defaults: on CUDA both presets and batches 1 8 32 auto; on the CPU the `tiny` preset only (the paper preset
runs there only when `--presets paper` is given: minutes per stage) and batches 1 4.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.diffusion_bench import unet_flops  # noqa: E402
from pipeline.core.atomic import atomic_output_file  # noqa: E402
from pipeline.core.device import precision_dtype, resolve_device, use_channels_last  # noqa: E402
from pipeline.model.diffusion import DDIMScheduler  # noqa: E402
from pipeline.model.inversion import (  # noqa: E402
    InvertParams,
    decode_frames,
    denoiser,
    inference_batch_size,
    inference_bytes_per_frame,
    invert_frames,
    prepare_model,
)
from pipeline.model.settings import InferenceSettings, TrainParams  # noqa: E402
from pipeline.model.training import TrainingClip, train  # noqa: E402
from pipeline.model.unet import PRESETS, DiffusionVideoAutoencoder  # noqa: E402

MIB = 2**20


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(device: torch.device, run, repeats: int) -> float:
    """Median seconds of `run()` over `repeats` calls, after one untimed warm-up (compilation, cuDNN plans)."""
    run()
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        run()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_ceiling(device: torch.device, repeats: int) -> dict[str, float]:
    """TFLOP/s of a large square `torch.mm`: fp32 everywhere, bf16 too on CUDA (the autocast dtype)."""
    dtypes = {"float32": torch.float32} | ({"bfloat16": torch.bfloat16} if device.type == "cuda" else {})
    # Large enough to reach the device's peak: 8192 fills a data-centre GPU, 2048 a CPU's cores in ~0.1 s.
    size = 8192 if device.type == "cuda" else 2048
    ceiling = {}
    for name, dtype in dtypes.items():
        a = torch.randn(size, size, device=device, dtype=dtype)
        b = torch.randn(size, size, device=device, dtype=dtype)
        seconds = _timed(device, lambda: torch.mm(a, b), repeats)
        ceiling[f"{name}_tflops"] = 2 * size**3 / seconds / 1e12
    return ceiling


def _inputs(model: DiffusionVideoAutoencoder, batch: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    size = model.config.resolution
    generator = torch.Generator().manual_seed(batch)
    images = (torch.rand(batch, 3, size, size, generator=generator) * 2 - 1).to(device)
    z_face = torch.randn(batch, model.config.embed_dim, generator=generator).to(device)
    return images, z_face


def forward_rates(model, settings: InferenceSettings, batches: list[int], flops: int, ceiling_tflops: float,
                  device: torch.device, repeats: int) -> list[dict]:
    """UNet forwards/s, achieved TFLOP/s and share of the matmul ceiling at each batch size."""
    rows = []
    for batch in batches:
        images, z_face = _inputs(model, batch, device)
        t = torch.full((batch,), 500, dtype=torch.long, device=device)
        predict = denoiser(model, z_face, settings)
        with torch.inference_mode():
            seconds = _timed(device, lambda: predict(images, t), repeats)
        tflops = flops * batch / seconds / 1e12
        rows.append({"batch": batch, "forwards_per_s": batch / seconds, "achieved_tflops": tflops,
                     "share_of_matmul_ceiling": tflops / ceiling_tflops})
        print(f"  batch {batch:4d}: {batch / seconds:9.2f} forwards/s, {tflops:7.3f} TFLOP/s "
              f"({100 * tflops / ceiling_tflops:.1f}% of matmul)", flush=True)
    return rows


def memory_probe(preset: str, batch: int) -> float:
    """MiB by which one CPU forward of `batch` frames raises a fresh process's peak resident memory (the
    import and the model come before it)."""
    torch.manual_seed(0)
    model = DiffusionVideoAutoencoder(PRESETS[preset]()).eval()
    images, z_face = _inputs(model, batch, torch.device("cpu"))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    with torch.inference_mode():
        model(images, torch.zeros(batch, dtype=torch.long), z_face)
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024


def measured_memory_per_frame(model, settings: InferenceSettings, preset: str, batch: int,
                              device: torch.device) -> tuple[float, str]:
    """Measured MiB per frame of one forward at `batch`, and how it was measured."""
    if device.type == "cuda":
        images, z_face = _inputs(model, batch, device)
        t = torch.full((batch,), 500, dtype=torch.long, device=device)
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        with torch.inference_mode():
            denoiser(model, z_face, settings)(images, t)
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - base) / batch / MIB, "cuda peak allocated"
    # Peaks only grow within a process (and freed memory is reused), so each batch runs in a fresh one.
    peaks = [float(subprocess.run([sys.executable, __file__, "--memory-probe", preset, str(size)],
                                  capture_output=True, text=True, check=True).stdout) for size in (1, batch)]
    return (peaks[1] - peaks[0]) / (batch - 1), "cpu peak resident-memory growth, float32"


def stage_rates(model, settings: InferenceSettings, invert: InvertParams, frames: int, batch: int,
                device: torch.device, repeats: int) -> dict:
    """Frames/s of the invert stage's and the edit stage's UNet work, as the stages call it."""
    sampler = invert.build_sampler(DDIMScheduler.from_settings(model.sampler))
    first, further = sampler.evaluations()
    images, z_face = _inputs(model, frames, device)
    chunks = [slice(start, start + batch) for start in range(0, frames, batch)]

    def invert_stage() -> None:
        for chunk in chunks:
            state = invert_frames(model, sampler, images[chunk], z_face[chunk], settings)
            decode_frames(model, sampler, state, z_face[chunk], settings)

    states = torch.cat([invert_frames(model, sampler, images[chunk], z_face[chunk], settings) for chunk in chunks])
    # dva edit decodes the edit and its per-frame baseline together: half a batch of frames, two codes each.
    half = max(1, batch // 2)
    pairs = [slice(start, start + half) for start in range(0, frames, half)]

    def edit_stage() -> None:
        for chunk in pairs:
            codes = torch.cat([z_face[chunk], z_face[chunk].flip(0)])
            decode_frames(model, sampler, torch.cat([states[chunk]] * 2), codes, settings)

    rates = {}
    for name, run, evals in (("invert", invert_stage, first), ("edit_decode", edit_stage, 2 * further)):
        seconds = _timed(device, run, repeats)
        rates[name] = {"frames_per_s": frames / seconds, "unet_forwards_per_frame": evals,
                       "unet_forwards_per_s": frames * evals / seconds}
        print(f"  {name}: {frames / seconds:.3f} frames/s ({evals} UNet forwards per frame)", flush=True)
    return rates


def train_rate(preset: str, device: torch.device, precision: str, steps: int) -> dict:
    """Training frames/s of `train()` on synthetic clips: (1 + steps) steps minus 1 step, so set-up and the
    final checkpoint write cancel out."""
    config = PRESETS[preset]()
    rng = np.random.default_rng(0)
    count, size = 8, config.resolution
    clips = [TrainingClip(
        crops=rng.integers(0, 256, (count, size, size, 3), dtype=np.uint8),
        masks=np.full((count, size, size), 255, dtype=np.uint8),
        landmarks=rng.standard_normal((count, 102)).astype(np.float32),
        identity=rng.standard_normal(config.id_dim).astype(np.float32),
        identities=rng.standard_normal((count, config.id_dim)).astype(np.float32),
        frames=np.arange(count),
        landmark_frame=size,
    ) for _ in range(2)]
    # The paper's batch: 4 frames from each of 4 videos (params.yaml's demo: 2 x 4).
    videos, frames = (4, 4) if preset == "paper" else (2, 4)
    seconds = []
    with tempfile.TemporaryDirectory() as folder:
        for run, length in enumerate((1, 1 + steps)):
            params = TrainParams(steps=length, videos_per_batch=videos, frames_per_video=frames,
                                 checkpoint_every=length, log_every=length, mixed_precision=precision != "float32")
            _sync(device)
            start = time.perf_counter()
            train(clips, config, DiffusionVideoAutoencoder(config).sampler, params, device,
                  Path(folder) / f"state{run}.pt", {"synthetic": "0"})
            _sync(device)
            seconds.append(time.perf_counter() - start)
    per_step = max(seconds[1] - seconds[0], 1e-9) / steps
    batch = videos * frames
    print(f"  train_step: {batch / per_step:.3f} frames/s ({batch} frames per step)", flush=True)
    return {"frames_per_s": batch / per_step, "steps_per_s": 1 / per_step, "frames_per_step": batch,
            "mixed_precision": precision != "float32"}


def bench_preset(preset: str, args, device: torch.device, ceiling: dict[str, float]) -> dict:
    """Every figure of one preset."""
    torch.manual_seed(0)
    model = DiffusionVideoAutoencoder(PRESETS[preset]()).to(device).eval()
    flops = unet_flops(model, device)
    settings = InferenceSettings(precision=args.precision, compile=args.compile)
    invert = InvertParams(sampler=args.sampler, steps=args.steps, precision=args.precision, compile=args.compile)
    model = prepare_model(model, settings)
    auto = inference_batch_size(invert, model)
    batches = sorted({auto if batch == "auto" else int(batch) for batch in args.batches})
    amp = precision_dtype(args.precision, device)
    ceiling_tflops = ceiling["bfloat16_tflops" if amp == torch.bfloat16 else "float32_tflops"]
    print(f"{preset}: {model.unet_parameters() / 1e6:.1f} M parameters, {flops / 1e9:.2f} GFLOP per forward, "
          f"auto batch {auto}", flush=True)
    forwards = forward_rates(model, settings, batches, flops, ceiling_tflops, device, args.iterations)
    # CPU: a few frames, enough to rise above the allocator's noise (the paper preset's forward is slow there).
    probe_batch = max(batches) if device.type == "cuda" else (3 if preset == "paper" else 9)
    measured, method = measured_memory_per_frame(model, settings, preset, probe_batch, device)
    stage_batch = auto if device.type == "cuda" else max(batches)
    frames = args.frames or stage_batch
    result = {
        "resolution": model.config.resolution,
        "unet_parameters": model.unet_parameters(),
        "gflop_per_forward": flops / 1e9,
        "forwards": forwards,
        "memory_per_frame_mib": {"estimate": inference_bytes_per_frame(model.config) / MIB, "measured": measured,
                                 "measured_by": method},
        "auto_batch_size": auto,
        "stage_batch_size": stage_batch,
        "stage_frames": frames,
        "stages": stage_rates(model, settings, invert, frames, stage_batch, device, args.iterations),
    }
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    result["stages"]["train_step"] = train_rate(preset, device, args.precision, args.train_steps)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", choices=sorted(PRESETS), default=None,
                        help="default: tiny and paper on CUDA, tiny on the CPU")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", choices=["auto", "float32", "bfloat16", "float16"], default="auto")
    parser.add_argument("--compile", action="store_true", help="torch.compile the UNet (as `compile: true`)")
    parser.add_argument("--batches", nargs="+", default=None, help="batch sizes of the forward rates; `auto` too")
    parser.add_argument("--sampler", choices=["ddim", "bdia"], default="bdia")
    parser.add_argument("--steps", type=int, default=10, help="sampler steps (params.yaml's invert.steps)")
    parser.add_argument("--frames", type=int, default=None, help="frames per stage run (default: one batch)")
    parser.add_argument("--iterations", type=int, default=3, help="timed repeats of each measurement")
    parser.add_argument("--train-steps", type=int, default=3, help="timed training steps")
    parser.add_argument("--out", type=Path, default=None, help="default: benchmarks/results/gpu_<device>.json")
    parser.add_argument("--memory-probe", nargs=2, metavar=("PRESET", "BATCH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_probe:
        print(memory_probe(args.memory_probe[0], int(args.memory_probe[1])))
        return
    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    args.presets = args.presets or (["tiny", "paper"] if cuda else ["tiny"])
    args.batches = args.batches or (["1", "8", "32", "auto"] if cuda else ["1", "4"])
    for batch in args.batches:
        if batch != "auto" and (not batch.isdigit() or int(batch) < 1):
            parser.error(f"--batches: {batch!r} is neither a positive integer nor auto")
    name = torch.cuda.get_device_name(device) if cuda else platform.processor() or platform.machine()
    print(f"device: {device} ({name}), torch {torch.__version__}", flush=True)
    ceiling = matmul_ceiling(device, args.iterations)
    print("matmul ceiling: " + ", ".join(f"{key} {value:.2f}" for key, value in ceiling.items()), flush=True)
    result = {
        "device": {"type": device.type, "name": name, "torch": torch.__version__,
                   "cpu_threads": torch.get_num_threads()}
        | ({"total_memory_gib": torch.cuda.get_device_properties(device).total_memory / 2**30} if cuda else {}),
        "settings": {"precision": args.precision, "autocast_dtype": str(precision_dtype(args.precision, device)),
                     "channels_last": use_channels_last("auto", device), "compile": args.compile,
                     "sampler": args.sampler, "steps": args.steps, "iterations": args.iterations},
        "matmul_ceiling": ceiling,
        "presets": {preset: bench_preset(preset, args, device, ceiling) for preset in args.presets},
    }
    out = args.out or REPO / "benchmarks" / "results" / f"gpu_{device.type}.json"
    with atomic_output_file(out) as temporary:
        temporary.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
