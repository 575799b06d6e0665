"""Training throughput on the CPU: images/s per process layout, memory format and compilation.

Run: `OMP_WAIT_POLICY=PASSIVE python benchmarks/train_bench.py [--steps 12] [--warmup 3] [--repeats 3]
[--compile] [--configs 2x1 2x1+compile] [--base-channels 16] [--out benchmarks/results/train_cpu.json]`.

The tiny preset at 64 px with the demo's batch (2 videos x 4 frames, params.yaml) trains on synthetic
crops (throughput does not depend on image content). Each configuration is one training step as
pipeline/model/training.train runs it (sampling, the disentangle loss, backward, gradient all-reduce under
DDP, clipping, Adam, EMA), in fresh processes started like the train stage starts them (spawn, gloo).
Configurations run interleaved, `--repeats` rounds, so machine load affects them alike; the table gives
the median images/s of the timed steps (after `--warmup` steps) and its ratio to the first configuration
(1 process x 2 threads unless `--configs` says otherwise), and the CPU seconds per image of all processes
together (what the configuration costs, whoever else uses the cores), with the load averages around each
configuration's runs: wall figures taken under load do not compare with figures from an idle machine, CPU
figures nearly do.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.multiprocessing as mp
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.core.device import channels_last, maybe_compile  # noqa: E402
from pipeline.model.diffusion import DDIMScheduler  # noqa: E402
from pipeline.model.losses import EMA, disentangle_loss  # noqa: E402
from pipeline.model.settings import ModelParams  # noqa: E402
from pipeline.model.training import TrainingClip, batch_share, build_config, sample_batch  # noqa: E402
from pipeline.model.unet import DiffusionVideoAutoencoder  # noqa: E402

VIDEOS, FRAMES = 2, 4  # the demo's batch (params.yaml train.videos_per_batch x frames_per_video)
ID_DIM = 128  # dlib's identity descriptor, the demo's encoder
# (processes, threads per process, channels-last, compile)
CONFIGS = [(1, 2, False, False), (2, 1, False, False), (1, 2, True, False), (2, 1, True, False)]
COMPILED = [(1, 2, False, True), (2, 1, False, True)]


def synthetic_clips(count: int = 2, frames: int = 32, size: int = 64) -> list[TrainingClip]:
    """Random crops, masks and codes shaped like the align and encode stages' outputs."""
    rng = np.random.default_rng(0)
    return [
        TrainingClip(
            crops=rng.integers(0, 256, (frames, size, size, 3), dtype=np.uint8),
            masks=rng.integers(0, 256, (frames, size, size), dtype=np.uint8),
            landmarks=rng.random((frames, 102), dtype=np.float32),
            identity=rng.standard_normal(ID_DIM, dtype=np.float32),
            identities=rng.standard_normal((frames, ID_DIM), dtype=np.float32),
            frames=np.arange(frames),
            landmark_frame=size,
        )
        for _ in range(count)
    ]


def parse_config(text: str) -> tuple:
    """`PxT[+cl][+compile]` (e.g. `2x1+compile`) as (processes, threads, channels-last, compile)."""
    layout, *extras = text.split("+")
    processes, threads = (int(part) for part in layout.split("x"))
    unknown = set(extras) - {"cl", "compile"}
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown option {sorted(unknown)[0]!r} in {text!r} (cl, compile)")
    return processes, threads, "cl" in extras, "compile" in extras


def _worker(rank: int, world: int, threads: int, store: str, config: tuple, steps: int, out: str,
            base_channels: int | None) -> None:
    _, _, memory_last, compiled = config
    torch.set_num_threads(threads)
    if world > 1:
        torch.distributed.init_process_group("gloo", init_method=store, rank=rank, world_size=world)
    torch.manual_seed(0)
    clips = synthetic_clips()
    config_of_model = build_config(ModelParams(preset="tiny", base_channels=base_channels), ID_DIM)
    model = channels_last(DiffusionVideoAutoencoder(config_of_model), memory_last)
    ema = EMA(model, 0.999)
    network: nn.Module = nn.parallel.DistributedDataParallel(model) if world > 1 else model
    maybe_compile(model, compiled)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    scheduler = DDIMScheduler()
    generator = torch.Generator().manual_seed(0)
    times, cpu_times = [], []
    for _ in range(steps):
        started, cpu_started = time.perf_counter(), time.process_time()
        batch = sample_batch(clips, VIDEOS, FRAMES, generator)
        size = batch.images.shape[0]
        t = torch.randint(scheduler.num_train_timesteps, (size,), generator=generator)
        noise1, noise2 = (torch.randn(batch.images.shape, generator=generator) for _ in range(2))
        rows = batch_share(size, rank, world)
        batch = batch.select(rows)
        images = channels_last(batch.images, memory_last)
        noise1, noise2 = (channels_last(noise[rows], memory_last) for noise in (noise1, noise2))
        terms = disentangle_loss(network, scheduler, images, model.face_code(batch.identity, batch.landmarks),
                                 batch.masks, t[rows], noise1, noise2)
        optimizer.zero_grad(set_to_none=True)
        terms.total.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        ema.update(model)
        times.append(time.perf_counter() - started)
        cpu_times.append(time.process_time() - cpu_started)
    if world > 1:
        torch.distributed.destroy_process_group()
    Path(f"{out}.{rank}").write_text(json.dumps({"wall": times, "cpu": cpu_times}))


def measure(config: tuple, steps: int, base_channels: int | None = None) -> tuple[list[float], list[float]]:
    """Wall seconds (rank 0) and CPU seconds (all processes) of each of `steps` training steps of one
    configuration, in fresh processes."""
    processes, threads = config[:2]
    with tempfile.TemporaryDirectory() as folder:
        out = f"{folder}/times.json"
        mp.spawn(_worker, args=(processes, threads, f"file://{folder}/store", config, steps, out, base_channels),
                 nprocs=processes)
        ranks = [json.loads(Path(f"{out}.{rank}").read_text()) for rank in range(processes)]
        return ranks[0]["wall"], [sum(step) for step in zip(*(record["cpu"] for record in ranks))]


def name(config: tuple) -> str:
    processes, threads, memory_last, compiled = config
    extras = [label for label, on in (("channels-last", memory_last), ("compile", compiled)) if on]
    return f"{processes} proc x {threads} thr" + (" + " + ", ".join(extras) if extras else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12, help="timed steps per configuration and round")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation, allocator)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds over the configurations")
    parser.add_argument("--compile", action="store_true", help="also torch.compile (minutes of compilation)")
    parser.add_argument("--configs", nargs="+", type=parse_config, metavar="PxT[+cl][+compile]",
                        help="only these configurations (processes x threads, channels-last, compile); the first "
                             "is the ratios' base")
    parser.add_argument("--base-channels", type=int, help="UNet width (default: the tiny preset's 32)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/train_cpu.json")
    args = parser.parse_args()
    configs = args.configs or CONFIGS + (COMPILED if args.compile else [])
    samples: dict[str, list[float]] = {name(config): [] for config in configs}
    cpu: dict[str, list[float]] = {name(config): [] for config in configs}
    loads: dict[str, list[float]] = {name(config): [] for config in configs}
    for round_index in range(args.repeats):
        for config in configs:
            loads[name(config)].append(os.getloadavg()[0])
            timed = measure(config, args.warmup + args.steps, args.base_channels)
            wall, cpu_s = (times[args.warmup:] for times in timed)
            loads[name(config)].append(os.getloadavg()[0])
            samples[name(config)] += [VIDEOS * FRAMES / seconds for seconds in wall]
            cpu[name(config)] += [seconds / (VIDEOS * FRAMES) for seconds in cpu_s]
            print(f"round {round_index + 1}: {name(config)}: {statistics.median(samples[name(config)]):.1f} "
                  f"images/s so far (load {loads[name(config)][-1]:.1f})", file=sys.stderr)
    base = statistics.median(samples[name(configs[0])])
    rows = [{"config": key, "images_per_s": statistics.median(values), "ratio": statistics.median(values) / base,
             "min": min(values), "max": max(values), "steps": len(values),
             "cpu_s_per_image": statistics.median(cpu[key]), "load_1min": [min(loads[key]), max(loads[key])]}
            for key, values in samples.items()]
    print(f"{'configuration':38s} {'images/s':>9s} {'ratio':>6s} {'min':>6s} {'max':>6s} {'CPU s/img':>9s} "
          f"{'load':>9s}")
    for row in rows:
        print(f"{row['config']:38s} {row['images_per_s']:9.1f} {row['ratio']:6.2f} {row['min']:6.1f} "
              f"{row['max']:6.1f} {row['cpu_s_per_image']:9.2f} {row['load_1min'][0]:4.1f}-{row['load_1min'][1]:<4.1f}")
    result = {
        "machine": {"cpu_count": os.cpu_count(), "torch": torch.__version__, "platform": platform.platform(),
                    "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")},
        "model": f"tiny preset, 64 px, {args.base_channels or 32} base channels",
        "batch": f"{VIDEOS} videos x {FRAMES} frames",
        "warmup": args.warmup, "steps": args.steps, "repeats": args.repeats, "results": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
