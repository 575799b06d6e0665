"""Every stage of the pipeline on generated face clips: frames/s, peak memory, UNet work.

Run: `python benchmarks/pipeline_bench.py [--seconds 5 60] [--fps 2] [--sampler bdia] [--steps 10]
[--checkpoint data/train/model.safetensors] [--out benchmarks/results/pipeline_cpu.json]`.

Clips are the bundled talking-head sample looped to the requested length (same resolution, so
only the length differs). Each stage runs as its own `dva` process, as `dvc repro` runs it; its
wall time and peak resident memory (from wait4) are reported. For the diffusion stages the table
adds UNet evaluations per frame and the achieved GFLOP/s (FLOPs counted with FlopCounterMode),
next to a plain float32 matrix multiply measured in the same run. Also measured: the UNet under
each inference setting (precision, channels-last, torch.compile) and two edits decoded in one
batched pass against one pass each. Uses the GPU when one is present. Prints a table and writes
JSON so runs can be compared over time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import av
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.diffusion_bench import matmul_gflops, unet_flops  # noqa: E402
from pipeline.core.device import resolve_device  # noqa: E402
from pipeline.model.checkpoint import load_model  # noqa: E402
from pipeline.model.diffusion import DDIMScheduler  # noqa: E402
from pipeline.model.inversion import InvertParams  # noqa: E402
from pipeline.model.samplers import SAMPLERS, Sampler  # noqa: E402
from stages.sample import sample_path  # noqa: E402

EDITS = {
    "anonymise": {"kind": "reference", "away": True, "strength": 0.8},
    "nudge": {"kind": "reference", "away": True, "strength": 0.3, "seed": 1},
}


def make_face_clip(path: Path, seconds: float, fps: int) -> int:
    """The bundled sample looped to `seconds` at `fps` (H.264); returns the frame count."""
    with av.open(str(sample_path())) as container:
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    count = int(round(seconds * fps))
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps, options={"crf": "18"})
        stream.width, stream.height, stream.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
        for index in range(count):
            # Ping-pong through the sample so the face moves smoothly across the loop point.
            cycle = index % (2 * len(frames) - 2)
            rgb = frames[cycle if cycle < len(frames) else 2 * len(frames) - 2 - cycle]
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts = index
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return count


# Runs the command and prints its peak RSS (KiB). A launcher this small matters: a child's ru_maxrss
# also counts the memory of the process it was forked from, which here holds torch and a model.
LAUNCHER = ("import resource, subprocess, sys; code = subprocess.call(sys.argv[1:], stdout=subprocess.DEVNULL); "
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(code)")


def run_measured(command: list[str]) -> tuple[float, float]:
    """Wall seconds and peak resident MiB of one child process (which must succeed)."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", LAUNCHER, *command], capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed: {done.stderr.strip()}")
    return wall, int(done.stdout.split()[-1]) / 1024


def stage_commands(dva: str, clip: Path, work: Path, checkpoint: Path) -> list[tuple[str, list[str]]]:
    """The per-video stages, in order, as `dvc repro` runs them (one edit; `edit` includes its baseline)."""
    w = {name: str(work / name) for name in ("extract", "align", "encode", "invert", "edit", "render", "evaluate")}
    return [
        ("extract", [dva, "extract", str(clip), w["extract"]]),
        ("align", [dva, "align", w["extract"], w["align"]]),
        ("encode", [dva, "encode", w["align"], w["encode"]]),
        ("invert", [dva, "invert", str(checkpoint), w["align"], w["encode"], w["invert"]]),
        ("edit", [dva, "edit-frames", "anonymise", str(checkpoint), w["align"], w["encode"], w["invert"], w["edit"]]),
        ("render", [dva, "render", w["extract"], w["align"], w["invert"], w["edit"], w["render"]]),
        ("evaluate", [dva, "evaluate", w["align"], w["encode"], w["invert"], w["edit"], w["render"], w["evaluate"]]),
    ]


def benchmark_clip(dva: str, seconds: float, fps: int, root: Path, checkpoint: Path, params: Path,
                   sampler: Sampler, gflop_per_eval: float) -> dict:
    """Run every stage on one generated clip; returns the figures per stage."""
    clip = root / f"clip-{seconds:g}s.mp4"
    frames = make_face_clip(clip, seconds, fps)
    work = root / f"work-{seconds:g}s"
    rows = []
    for stage, command in stage_commands(dva, clip, work, checkpoint):
        wall, peak = run_measured([*command, "--params", str(params), "--quiet"])
        row = {"stage": stage, "frames": frames, "wall_s": wall, "frames_per_s": frames / wall, "peak_rss_mib": peak}
        if stage in ("invert", "edit"):
            # invert: the inversion and its reconstruction's decode; edit: the edit and its per-frame baseline.
            first, further = sampler.evaluations()
            evals = first if stage == "invert" else 2 * further
            row |= {"unet_evals_per_frame": evals, "achieved_gflops": evals * frames * gflop_per_eval / wall}
        rows.append(row)
    return {"seconds": seconds, "fps": fps, "frames": frames, "stages": rows,
            "pipeline_peak_rss_mib": max(row["peak_rss_mib"] for row in rows)}


def inference_variants(checkpoint: Path, device: torch.device, sampler: Sampler, batch: int = 4) -> list[dict]:
    """Seconds per frame of a decode with `sampler` under each inference setting the params offer."""
    from pipeline.model.inversion import decode_frames, prepare_model
    from pipeline.model.settings import InferenceSettings

    # Each setting alone against plain float32 (the `auto` defaults would mix them on CUDA).
    plain = {"precision": "float32", "channels_last": False}
    variants = [InferenceSettings(**plain), InferenceSettings(**plain | {"precision": "bfloat16"}),
                InferenceSettings(**plain | {"channels_last": True}), InferenceSettings(**plain | {"compile": True})]
    if device.type == "cuda":
        variants.insert(2, InferenceSettings(**plain | {"precision": "float16"}))
    results = []
    for settings in variants:
        model, _ = load_model(checkpoint, device)
        model = prepare_model(model, settings)
        size = model.config.resolution
        shape = (batch, *sampler.state_shape((3, size, size)))
        noise = torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(device)
        z_face = torch.randn(batch, model.config.embed_dim, generator=torch.Generator().manual_seed(1)).to(device)
        reference = None
        timings = []
        for repeat in range(2):  # the first run includes compilation
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            decoded = decode_frames(model, sampler, noise, z_face, settings)
            if device.type == "cuda":
                torch.cuda.synchronize()
            timings.append(time.perf_counter() - start)
            reference = decoded if reference is None else reference
        baseline = results[0]["decoded"] if results else reference
        results.append({
            "setting": settings.model_dump(),
            "first_s_per_frame": timings[0] / batch,
            "s_per_frame": min(timings[1:]) / batch,
            "max_abs_diff_vs_float32": float((reference - baseline).abs().max()),
            "decoded": reference,
        })
    for result in results:
        result.pop("decoded")
    return results


def multi_edit_speed(checkpoint: Path, params_file: Path, work: Path) -> dict:
    """Two edits of one video: one batched pass against one pass per edit (in-process, same data)."""
    from pipeline.params import load_params
    from stages.edit import edit_videos

    params = load_params(params_file)
    folders = {name: work / name for name in ("extract", "align", "encode", "invert")}
    timings = {}
    for label, groups in (("separate", [["anonymise"], ["nudge"]]), ("together", [["anonymise", "nudge"]])):
        start = time.perf_counter()
        for group in groups:
            outputs = {name: work / f"multi-{label}-{name}" for name in group}
            edit_videos(outputs, params, checkpoint, folders["align"], folders["encode"], folders["invert"],
                        baseline=True, progress=False)
        timings[label] = time.perf_counter() - start
    return {"edits": 2, "separate_s": timings["separate"], "together_s": timings["together"],
            "speedup": timings["separate"] / timings["together"]}


def ensure_checkpoint(dva: str, checkpoint: Path | None, root: Path, params: dict) -> Path:
    """The given model file, or a tiny model trained briefly here (speed does not depend on quality)."""
    if checkpoint is not None:
        return checkpoint
    clip = root / "train.mp4"
    make_face_clip(clip, 4, 10)
    data = root / "train-data"
    params_file = root / "train-params.yaml"
    params_file.write_text(yaml.safe_dump(params | {"videos": {"bench": {"path": "data/raw/bench.mp4"}},
                                                    "train": {"steps": 20, "checkpoint_every": 1000}}))
    for stage, source in (("extract", str(clip)), ("align", str(data / "extract" / "bench")),
                          ("encode", str(data / "align" / "bench"))):
        subprocess.run([dva, stage, source, str(data / stage / "bench"), "--params", str(params_file), "--quiet"],
                       check=True)
    subprocess.run([dva, "train", str(root / "train"), "--data-root", str(data), "--state-file",
                    str(root / "state.safetensors"), "--params", str(params_file), "--quiet"], check=True)
    return root / "train" / "model.safetensors"


def print_table(results: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"dva pipeline on {results['device']} (matmul {results['matmul_gflops']:.1f} GFLOP/s)")
    for column in ("clip", "stage", "frames/s", "peak MiB", "UNet evals/frame", "GFLOP/s"):
        table.add_column(column)
    for clip in results["clips"]:
        for row in clip["stages"]:
            table.add_row(f"{clip['seconds']:g} s ({clip['frames']} fr)", row["stage"], f"{row['frames_per_s']:.2f}",
                          f"{row['peak_rss_mib']:.0f}", str(row.get("unet_evals_per_frame", "")),
                          f"{row['achieved_gflops']:.1f}" if "achieved_gflops" in row else "")
    console = Console()
    console.print(table)
    memory = results.get("memory")
    if memory:
        console.print(f"pipeline peak memory: {memory['short_mib']:.0f} MiB ({memory['short_seconds']:g} s) vs "
                      f"{memory['long_mib']:.0f} MiB ({memory['long_seconds']:g} s): x{memory['ratio']:.2f}")
    variants = Table(title="UNet decode per inference setting")
    for column in ("setting", "s/frame", "first run s/frame", "max |diff| vs float32"):
        variants.add_column(column)
    for row in results["inference_variants"]:
        setting = ", ".join(f"{k}={v}" for k, v in row["setting"].items())
        variants.add_row(setting, f"{row['s_per_frame']:.3f}", f"{row['first_s_per_frame']:.3f}",
                         f"{row['max_abs_diff_vs_float32']:.2e}")
    console.print(variants)
    multi = results["multi_edit"]
    console.print(f"2 edits: {multi['separate_s']:.1f} s one pass each, {multi['together_s']:.1f} s in one batched "
                  f"pass (x{multi['speedup']:.2f})")


def run_benchmark(seconds: list[float], fps: int, invert: dict, checkpoint: Path | None, root: Path,
                  variants: bool = True) -> dict:
    """Everything the command measures, as a JSON-able dict."""
    dva = shutil.which("dva", path=str(Path(sys.executable).parent)) or "dva"
    device = resolve_device("auto")
    base_params = {"invert": invert, "edits": EDITS}
    if checkpoint is None:
        base_params["model"] = {"preset": "tiny"}
    checkpoint = ensure_checkpoint(dva, checkpoint, root, base_params)
    model, _ = load_model(checkpoint, device)
    params = base_params | {"model": {"preset": "tiny", "resolution": model.config.resolution}}
    params_file = root / "params.yaml"
    params_file.write_text(yaml.safe_dump(params))
    gflop_per_eval = unet_flops(model, device) / 1e9
    # The evaluation counts come from the sampler the stages run, as the inversion saves its config.
    sampler = InvertParams(**invert).build_sampler(DDIMScheduler.from_settings(model.sampler))
    results = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                    "threads": torch.get_num_threads()},
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "sampler": sampler.config(),
        "unet_gflop_per_eval": gflop_per_eval,
        "matmul_gflops": matmul_gflops(device),
        "clips": [benchmark_clip(dva, length, fps, root, checkpoint, params_file, sampler, gflop_per_eval)
                  for length in seconds],
    }
    if len(seconds) > 1:
        short, long = results["clips"][0], results["clips"][-1]
        results["memory"] = {"short_seconds": short["seconds"], "long_seconds": long["seconds"],
                             "short_mib": short["pipeline_peak_rss_mib"], "long_mib": long["pipeline_peak_rss_mib"],
                             "ratio": long["pipeline_peak_rss_mib"] / short["pipeline_peak_rss_mib"]}
    if variants:
        results["inference_variants"] = inference_variants(checkpoint, device, sampler)
        results["multi_edit"] = multi_edit_speed(checkpoint, params_file, root / f"work-{seconds[0]:g}s")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, nargs="+", default=[5, 60], help="Clip lengths (default 5 60).")
    parser.add_argument("--fps", type=int, default=2, help="Frame rate of the generated clips (default 2).")
    parser.add_argument("--sampler", choices=sorted(SAMPLERS), default="bdia", help="Sampler (default bdia, "
                        "as params.yaml).")
    parser.add_argument("--steps", type=int, default=10, help="Sampler steps each way (default 10).")
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="Model file (default: data/train/model.safetensors if present, else a tiny one "
                             "trained for 20 steps here).")
    parser.add_argument("--out", type=Path, default=None, help="Write the results as JSON here.")
    args = parser.parse_args()
    checkpoint = args.checkpoint
    if checkpoint is None and (REPO / "data/train/model.safetensors").is_file():
        checkpoint = REPO / "data/train/model.safetensors"
    with tempfile.TemporaryDirectory(prefix="dva-bench-") as folder:
        invert = {"sampler": args.sampler, "steps": args.steps}
        results = run_benchmark(args.seconds, args.fps, invert, checkpoint, Path(folder))
    print_table(results)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
