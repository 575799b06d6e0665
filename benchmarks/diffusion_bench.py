"""UNet cost of inversion and decoding: evaluations per frame, seconds per frame, achieved GFLOP/s.

Run: `python benchmarks/diffusion_bench.py [--checkpoint data/train/model.safetensors] [--sampler bdia]
[--steps 10] [--batch 16] [--out results.json]`. Without a checkpoint the `tiny` preset is built untrained (the
cost does not depend on the weights). Compares batched against one-frame-at-a-time inversion and
decoding, and the UNet's GFLOP/s (counted with torch's FlopCounterMode) against a plain float32
`torch.mm` measured in the same run. Uses CUDA when present.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from pipeline.core.device import resolve_device
from pipeline.model.checkpoint import load_model
from pipeline.model.diffusion import DDIMScheduler
from pipeline.model.inversion import decode_frames, invert_frames
from pipeline.model.samplers import SAMPLERS, Sampler, build_sampler
from pipeline.model.unet import DiffusionVideoAutoencoder, tiny


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_gflops(device: torch.device, size: int = 2048, repeats: int = 5) -> float:
    """Median GFLOP/s of a square float32 matrix multiply."""
    a, b = torch.randn(size, size, device=device), torch.randn(size, size, device=device)
    torch.mm(a, b)
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        torch.mm(a, b)
        _sync(device)
        times.append(time.perf_counter() - start)
    return 2 * size**3 / statistics.median(times) / 1e9


def unet_flops(model: DiffusionVideoAutoencoder, device: torch.device) -> int:
    """FLOPs of one UNet evaluation on one frame."""
    size = model.config.resolution
    x = torch.randn(1, 3, size, size, device=device)
    z = torch.randn(1, model.config.embed_dim, device=device)
    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        model(x, torch.zeros(1, dtype=torch.long, device=device), z)
    return counter.get_total_flops()


def time_round_trip(model, sampler: Sampler, frames: int, batch: int, device: torch.device) -> tuple[float, float]:
    """Seconds per frame of inversion and of decoding, processing `batch` frames at a time."""
    size = model.config.resolution
    images = torch.rand(frames, 3, size, size, device=device) * 2 - 1
    z_face = torch.randn(frames, model.config.embed_dim, device=device)
    invert_s = decode_s = 0.0
    for start in range(0, frames, batch):
        chunk = slice(start, start + batch)
        _sync(device)
        began = time.perf_counter()
        noise = invert_frames(model, sampler, images[chunk], z_face[chunk])
        _sync(device)
        middle = time.perf_counter()
        decode_frames(model, sampler, noise, z_face[chunk])
        _sync(device)
        invert_s += middle - began
        decode_s += time.perf_counter() - middle
    return invert_s / frames, decode_s / frames


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=None)
    parser.add_argument("--sampler", choices=sorted(SAMPLERS), default="bdia")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--gamma", type=float, default=None, help="BDIA's gamma (default: as an unset bdia_gamma).")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    device = resolve_device(args.device)
    if args.checkpoint:
        model, _ = load_model(args.checkpoint, device)
    else:
        model = DiffusionVideoAutoencoder(tiny()).to(device).eval()
    flops = unet_flops(model, device)
    sampler = build_sampler(DDIMScheduler.from_settings(model.sampler), args.sampler, args.steps,
                            bdia_gamma=args.gamma)
    batched = time_round_trip(model, sampler, args.frames, args.batch, device)
    single = time_round_trip(model, sampler, min(args.frames, 4), 1, device)
    first, further = sampler.evaluations()
    evaluations = {"invert": first - further, "decode": further}
    result = {
        "device": str(device),
        "resolution": model.config.resolution,
        "sampler": sampler.config(),
        "unet_evals_per_frame": evaluations,
        "unet_gflop_per_eval": flops / 1e9,
        "invert_s_per_frame": {"batched": batched[0], "single": single[0]},
        "decode_s_per_frame": {"batched": batched[1], "single": single[1]},
        "unet_gflops_achieved_batched": flops * evaluations["decode"] / batched[1] / 1e9,
        "unet_gflops_achieved_single": flops * evaluations["decode"] / single[1] / 1e9,
        "matmul_gflops": matmul_gflops(device),
        "batch": args.batch,
    }
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
