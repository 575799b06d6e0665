"""Training speed across commits: the demo's training steps timed in each source tree, interleaved.

Run: `git worktree add --detach /tmp/demo_commit 3e7ec65`, then
`OMP_WAIT_POLICY=PASSIVE python benchmarks/train_regression.py --tree 3e7ec65=/tmp/demo_commit --tree HEAD=.
[--steps 12] [--warmup 3] [--repeats 2] [--threads 2] [--out benchmarks/results/train_regression_cpu.json]`.

Each tree's own `pipeline.model.training.train` runs `--warmup + --steps` steps of the demo's training (that
tree's params.yaml `train` and `model` sections, checkpoints off) on the aligned and encoded sample
(`--data`/align/carphone, `--data`/encode/carphone), in one process of `--threads` threads started in the tree
so that every import resolves to that tree. Trees run interleaved, `--repeats` rounds, so machine load affects
them alike. Each step's wall and CPU seconds are recorded: CPU seconds are what the code costs, wall seconds
also count the other processes sharing the cores (the load averages are recorded with each run).

Each round also probes the machine, independently of any training code: the tiny UNet's forward (batch 16,
inference, this tree's model) in seconds per frame-evaluation, and a float32 matmul's GFLOP/s, both per wall and
per CPU second. They compare across sessions with earlier figures of the same UNet on this project's machines
(`earlier` in the output): what the demo commit's training and the 2026-12-01 sampler benchmark achieved.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VIDEO = "carphone"  # the demo's training video
UNET_BATCH = 16  # frames per forward in the machine probe: the sampler benchmark's batch
MATMUL_SIZE = 2048  # as benchmarks/diffusion_bench.py measures the ceiling
# The demo commit's own record (`git show 3e7ec65:data/train/summary.json`): 2000 steps of 8 images at this
# rate in one process of 2 threads, "partly shared with measurements" (README at that commit).
DEMO_3E7EC65_IMAGES_PER_S = 6.254810898504174
DEMO_IMAGES_PER_STEP = 8  # train.videos_per_batch 2 x frames_per_video 4


def _import_tree(tree: Path) -> None:
    # The tree first: an editable install of the project would otherwise supply `pipeline` and `stages`.
    sys.path.insert(0, str(tree))


def train_worker(tree: Path, data: Path, steps: int, threads: int) -> dict:
    """Wall and CPU seconds of each of `steps` training steps of the tree's own code (run inside the tree)."""
    _import_tree(tree)
    import torch
    import yaml

    import pipeline.model.training as training
    import stages.train as stage

    try:
        from pipeline.model.settings import ModelParams, TrainParams
    except ImportError:  # before the params split (77ca220)
        from pipeline.core.params import ModelParams, TrainParams

    torch.set_num_threads(threads)
    raw = yaml.safe_load((tree / "params.yaml").read_text())
    params = TrainParams(**(raw["train"] | {"steps": steps, "checkpoint_every": 10**9}))
    model = ModelParams(**raw["model"])
    align, encode = data / "align" / VIDEO, data / "encode" / VIDEO
    if hasattr(stage, "load_clips"):  # one clip per face track (4929740)
        clips, hashes, metadata = stage.load_clips(align, encode)
    else:
        clip, hashes, metadata = stage.load_clip(align, encode)
        clips = [clip]
    config = training.build_config(model, int(metadata["identity_dim"]))
    wall, cpu = [time.perf_counter()], [time.process_time()]

    def progress(indices):
        # train() calls this around its step loop: a stamp after each step.
        for index in indices:
            yield index
            wall.append(time.perf_counter())
            cpu.append(time.process_time())

    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as folder:
        training.train(clips, config, training.build_sampler(model), params, torch.device("cpu"),
                       Path(folder) / "state.safetensors", hashes, progress=progress)
    return {
        "imported_from": str(Path(training.__file__).resolve().parents[2]),
        "threads": torch.get_num_threads(),
        "wall_s": [b - a for a, b in zip(wall, wall[1:])],
        "cpu_s": [b - a for a, b in zip(cpu, cpu[1:])],
        "load_before": load_before,
        "load_after": os.getloadavg(),
    }


def probe_worker(tree: Path, threads: int, repeats: int = 5) -> dict:
    """Machine speed independent of the training code: the tiny UNet's forward and a float32 matmul."""
    _import_tree(tree)
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from pipeline.model.unet import DiffusionVideoAutoencoder, tiny

    torch.set_num_threads(threads)

    def timed(fn) -> tuple[float, float]:
        fn()
        walls, cpus = [], []
        for _ in range(repeats):
            wall, cpu = time.perf_counter(), time.process_time()
            fn()
            walls.append(time.perf_counter() - wall)
            cpus.append(time.process_time() - cpu)
        return statistics.median(walls), statistics.median(cpus)

    model = DiffusionVideoAutoencoder(tiny()).eval()
    size = model.config.resolution
    x, z = torch.randn(UNET_BATCH, 3, size, size), torch.randn(UNET_BATCH, model.config.embed_dim)
    t = torch.zeros(UNET_BATCH, dtype=torch.long)
    counter = FlopCounterMode(display=False)
    with torch.inference_mode():
        with counter:
            model(x, t, z)
        unet_wall, unet_cpu = timed(lambda: model(x, t, z))
    a, b = torch.randn(MATMUL_SIZE, MATMUL_SIZE), torch.randn(MATMUL_SIZE, MATMUL_SIZE)
    mm_wall, mm_cpu = timed(lambda: torch.mm(a, b))
    mm_flop = 2 * MATMUL_SIZE**3
    return {
        "threads": threads,
        "unet_gflop_per_frame_eval": counter.get_total_flops() / UNET_BATCH / 1e9,
        "unet_wall_s_per_frame_eval": unet_wall / UNET_BATCH,
        "unet_cpu_s_per_frame_eval": unet_cpu / UNET_BATCH,
        "matmul_gflops_wall": mm_flop / mm_wall / 1e9,
        "matmul_gflops_per_cpu_s": mm_flop / mm_cpu / 1e9,
        "load": os.getloadavg(),
    }


def _run(tree: Path, *args: str) -> dict:
    """This script in worker mode in a fresh interpreter started in `tree`; its JSON result."""
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "result.json"
        subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker-out", str(out), *args],
                       cwd=tree, check=True)
        return json.loads(out.read_text())


def _commit(tree: Path) -> str:
    result = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=tree, capture_output=True, text=True)
    return result.stdout.strip() or "unknown"


def earlier_figures(train_cpu_s_per_step: float, unet_cpu_s_per_frame_eval: float) -> dict:
    """The same UNet's speed recorded by earlier sessions on this project's 2-core machines, against today's.

    Those are wall seconds of 2-thread processes: at most 2 CPU seconds each, so today's CPU seconds over twice
    the earlier wall seconds is a lower bound of how much more the same work costs on today's machine.
    """
    demo_s_per_step = DEMO_IMAGES_PER_STEP / DEMO_3E7EC65_IMAGES_PER_S
    figures = {"demo_3e7ec65_train_wall_s_per_step_2_threads": demo_s_per_step,
               "train_cost_now_vs_demo_at_least": train_cpu_s_per_step / (2 * demo_s_per_step)}
    sampler = REPO / "benchmarks/results/sampler_cpu.json"
    if sampler.is_file():
        record = json.loads(sampler.read_text())
        # Batched inversion of 15 frames, seconds per frame and UNet evaluation, best over the sampler rows.
        per_eval = min(row["invert_s_per_frame"] / row["unet_evals_per_frame"]["invert"] for row in record["rows"])
        figures["sampler_cpu_json_unet_wall_s_per_frame_eval"] = per_eval
        figures["sampler_cpu_json_threads"] = record.get("torch_threads")
        figures["unet_cost_now_vs_sampler_cpu_json_at_least"] = (
            unet_cpu_s_per_frame_eval / (record.get("torch_threads", 2) * per_eval))
    return figures


def _cpu_model() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor()
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "")


def summarise(runs: list[dict], warmup: int) -> dict:
    """Median wall and CPU seconds per timed step over all rounds of one tree."""
    wall = [value for run in runs for value in run["wall_s"][warmup:]]
    cpu = [value for run in runs for value in run["cpu_s"][warmup:]]
    median_wall = statistics.median(wall)
    return {
        "wall_s_per_step": median_wall,
        "cpu_s_per_step": statistics.median(cpu),
        "steps_per_min": 60 / median_wall,
        "images_per_s": DEMO_IMAGES_PER_STEP / median_wall,
        "cpu_s_per_step_min": min(cpu),
        "cpu_s_per_step_max": max(cpu),
        "timed_steps": len(wall),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", action="append", default=[], metavar="LABEL=PATH",
                        help="a source tree to time (repeatable); default: this checkout")
    parser.add_argument("--data", type=Path, default=REPO / "data", help="folder holding align/ and encode/")
    parser.add_argument("--steps", type=int, default=12, help="timed steps per tree and round")
    parser.add_argument("--warmup", type=int, default=3, help="untimed first steps (allocator, first batches)")
    parser.add_argument("--repeats", type=int, default=2, help="interleaved rounds over the trees")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of each training process")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/train_regression_cpu.json")
    parser.add_argument("--worker-out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--worker", choices=("train", "probe"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        tree = Path.cwd()
        result = (train_worker(tree, args.data.resolve(), args.warmup + args.steps, args.threads)
                  if args.worker == "train" else probe_worker(tree, args.threads))
        args.worker_out.write_text(json.dumps(result))
        return
    trees = dict(item.split("=", 1) for item in args.tree) or {"HEAD": "."}
    trees = {label: Path(path).resolve() for label, path in trees.items()}
    common = ["--data", str(args.data.resolve()), "--steps", str(args.steps), "--warmup", str(args.warmup),
              "--threads", str(args.threads)]
    runs: dict[str, list[dict]] = {label: [] for label in trees}
    probes = []
    for round_index in range(args.repeats):
        for label, tree in trees.items():
            run = _run(tree, "--worker", "train", *common)
            runs[label].append(run)
            done = summarise(runs[label], args.warmup)
            print(f"round {round_index + 1}: {label}: {done['wall_s_per_step']:.2f} s/step wall, "
                  f"{done['cpu_s_per_step']:.2f} CPU s/step so far (load {run['load_after'][0]:.1f})",
                  file=sys.stderr)
        probes.append(_run(REPO, "--worker", "probe", *common))
    base = summarise(runs[next(iter(trees))], args.warmup)
    results = []
    for label, tree in trees.items():
        row = {"tree": label, "commit": _commit(tree), "imported_from": runs[label][0]["imported_from"]}
        row |= summarise(runs[label], args.warmup)
        row["cpu_ratio_to_first"] = row["cpu_s_per_step"] / base["cpu_s_per_step"]
        row["rounds"] = runs[label]
        results.append(row)
    print(f"{'tree':10s} {'commit':8s} {'wall s/step':>11s} {'CPU s/step':>10s} {'steps/min':>9s} {'CPU ratio':>9s}")
    for row in results:
        print(f"{row['tree']:10s} {row['commit']:8s} {row['wall_s_per_step']:11.2f} {row['cpu_s_per_step']:10.2f} "
              f"{row['steps_per_min']:9.1f} {row['cpu_ratio_to_first']:9.2f}")
    unet_cpu = statistics.median(probe["unet_cpu_s_per_frame_eval"] for probe in probes)
    # The code is compared at equal cost where the trees agree; the machine comparison takes the cheapest tree.
    earlier = earlier_figures(min(row["cpu_s_per_step"] for row in results), unet_cpu)
    print(f"machine: tiny UNet forward {unet_cpu:.4f} CPU s per frame-evaluation "
          f"(at best {unet_cpu / args.threads:.4f} s wall on {args.threads} threads)")
    print("earlier sessions: " + ", ".join(f"{key} {value:.3g}" for key, value in earlier.items()
                                          if isinstance(value, float)))
    record = {
        "machine": {"cpu_count": os.cpu_count(), "cpu_model": _cpu_model(), "platform": platform.platform(),
                    "python": platform.python_version(), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")},
        "workload": f"params.yaml train/model of each tree on data/*/{VIDEO}, one process x {args.threads} threads",
        "warmup": args.warmup, "steps": args.steps, "repeats": args.repeats,
        "results": results,
        "machine_probe": probes,
        "earlier": earlier,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
