"""How `dva batch` scales on a local Dask cluster, and what evaluation on demand saves per edit.

Run: `python benchmarks/batch_scale_bench.py [--sizes 10 30 100] [--frames 8] [--steps 3] [--workers 2]
[--checkpoint PATH] [--no-saving] [--out benchmarks/results/batch_scale_cpu.json]`.

Scale: N distinct short clips cut from the bundled sample (clip i starts at frame i, every clip holds
faces) go through `dva batch --runner dask --quiet` (one edit, no evaluation) into a fresh output folder
and a fresh Prefect home per size (every size pays the same start-up: the temporary Prefect server and
its database, the local Dask cluster), as a separate process. Reported per size: wall time, wall time per
video, the marginal time per video against the previous size (the fixed start-up cancels out), and peak
memory of the whole process tree (the `dva` process, the temporary Prefect server and the Dask workers;
resident sizes summed, so pages shared between processes count once per process), sampled every 0.2 s.
Each run must publish every clip's edit (summary.csv: N rows, none failed). The load average of the
machine before and after each run is recorded: other work on the machine slows every figure.

Saving: one clip's edit decoded with its per-frame baseline (what every edit paid before evaluation
became optional) against without it, and the evaluate step that only `--evaluate` runs; median of
`--repeats` runs, in this process.

Without `--checkpoint` a micro model (the test suite's size: 16 base channels, 64 px) is trained for
`--train-steps` steps on the sample first: the figures are about the flow's cost per video, not the model.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import av
import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

EDIT = {"anonymise": {"kind": "reference", "away": True, "strength": 0.8}}
# `--quiet` should print the summary table alone (rich draws it with these box characters); any other line is
# kept in the results, the first few of them.
SUMMARY_TABLE_CHARACTERS = tuple("┏┃┡│└")
MAX_LINES_KEPT = 20
MICRO_MODEL = {"preset": "tiny", "resolution": 64, "base_channels": 16, "channel_mults": [1, 2],
               "attention_resolutions": [], "embed_dim": 64}


def sample_frames() -> list[np.ndarray]:
    """Every frame of the bundled sample, RGB."""
    from stages.sample import sample_path

    with av.open(str(sample_path())) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


def write_clip(path: Path, frames: list[np.ndarray], fps: int = 25) -> Path:
    """Encode RGB frames as H.264 (lossless enough for dlib to find the face)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps, options={"crf": "18"})
        stream.width, stream.height, stream.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
        for index, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts = index
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def make_clips(folder: Path, count: int, length: int, frames: list[np.ndarray]) -> list[Path]:
    """`count` distinct clips of `length` frames: clip i starts at frame i of the sample.

    dlib finds no face in the sample's first three frames (nor in its re-encoded fourth): clips shorter than
    5 frames would fail in align, which is why `--frames` is at least 5.
    """
    folder.mkdir(parents=True, exist_ok=True)
    last_start = len(frames) - length
    if count > last_start + 1:
        raise SystemExit(f"at most {last_start + 1} distinct clips of {length} frames from the sample")
    return [write_clip(folder / f"clip{index:03d}.mp4", frames[index : index + length]) for index in range(count)]


def train_micro_model(root: Path, steps: int) -> Path:
    """A micro model trained `steps` steps on the sample's first 24 frames; returns its checkpoint."""
    from pipeline.faces.settings import AlignParams, EncodeParams
    from pipeline.params import parse_params
    from stages.align import align_video
    from stages.encode import encode_video
    from stages.extract import extract_video
    from stages.sample import sample_path
    from stages.train import train_autoencoder

    data = root / "data"
    extract_video(sample_path(), data / "extract" / "sample", max_frames=24, progress=False)
    align_video(data / "extract" / "sample", data / "align" / "sample", AlignParams(), 64, progress=False)
    encode_video(data / "align" / "sample", data / "encode" / "sample", EncodeParams(), progress=False)
    params = parse_params({"videos": {"sample": {"path": "data/raw/sample.mp4"}}, "model": MICRO_MODEL,
                           "train": {"steps": steps, "videos_per_batch": 1, "frames_per_video": 4, "lr": 1e-3,
                                     "ema_decay": 0.9, "checkpoint_every": 1000, "device": "cpu"}})
    train_autoencoder(params, data, root / "train", root / "state.safetensors", progress=False, quiet=True)
    return root / "train" / "model.safetensors"


class TreeMemory:
    """Peak summed resident memory of a process and all its descendants, sampled in a thread."""

    def __init__(self, pid: int, interval: float = 0.2):
        import psutil

        self.root, self.interval, self.peak = psutil.Process(pid), interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        import psutil

        while not self._stop.is_set():
            total = 0
            try:
                for process in [self.root, *self.root.children(recursive=True)]:
                    try:
                        total += process.memory_info().rss
                    except psutil.Error:  # exited between listing and reading
                        pass
            except psutil.Error:
                return
            self.peak = max(self.peak, total)
            self._stop.wait(self.interval)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def run_scale(size: int, root: Path, frames: list[np.ndarray], args, checkpoint: Path, params_file: Path) -> dict:
    """One `dva batch --runner dask` over `size` fresh clips: wall time and peak memory."""
    videos = root / f"videos{size}"
    make_clips(videos, size, args.frames, frames)
    out = root / f"out{size}"
    command = [sys.executable, "-m", "stages.cli", "batch", str(videos), "--checkpoint", str(checkpoint),
               "--edit", "anonymise", "--out", str(out), "--params", str(params_file), "--runner", "dask",
               "--workers", str(args.workers), "--retries", "0", "--quiet"]
    env = os.environ | {"PREFECT_HOME": str(root / f"prefect{size}"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                        "OMP_WAIT_POLICY": "PASSIVE"}
    env.pop("PREFECT_API_URL", None)
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    memory = TreeMemory(process.pid)
    output = process.communicate()[0]
    wall = time.perf_counter() - start
    peak = memory.stop()
    if process.returncode != 0:
        raise SystemExit(f"dva batch over {size} clips failed:\n{output}")
    with (out / "summary.csv").open(newline="") as table:
        rows = list(csv.DictReader(table))
    published = sum(row["status"] != "failed" and (REPO / row["output"]).is_file() for row in rows)  # run in REPO
    if len(rows) != size * len(EDIT) or published != len(rows):
        raise SystemExit(f"dva batch over {size} clips: {published} of {size * len(EDIT)} edits published")
    return {"videos": size, "wall_s": round(wall, 1), "per_video_s": round(wall / size, 2),
            "peak_mib": round(peak / 2**20), "output_lines": len(output.splitlines()),
            "lines_besides_summary": [line for line in output.splitlines() if line.strip()
                                      and not line.lstrip().startswith(SUMMARY_TABLE_CHARACTERS)][:MAX_LINES_KEPT],
            "load_before": round(load_before, 2), "load_after": round(os.getloadavg()[0], 2)}


def add_marginal_costs(scale: list[dict]) -> None:
    """Seconds per added video between consecutive sizes: the start-up both runs pay cancels out."""
    for previous, row in zip(scale, scale[1:]):
        added = row["videos"] - previous["videos"]
        row["marginal_per_video_s"] = round((row["wall_s"] - previous["wall_s"]) / added, 2)


def run_saving(root: Path, frames: list[np.ndarray], args, checkpoint: Path, params_file: Path) -> dict:
    """Per edit: the edit decoded with and without its baseline, and evaluate, on one clip."""
    from pipeline.params import load_params
    from stages.align import align_video
    from stages.edit import edit_video
    from stages.encode import encode_video
    from stages.evaluate import evaluate_edit
    from stages.extract import extract_video
    from stages.invert import invert_video
    from stages.render import render_video

    params = load_params(params_file)
    clip = write_clip(root / "saving.mp4", frames[: args.saving_frames])
    base = root / "saving"
    extract_video(clip, base / "extract", args.saving_frames, progress=False)
    align_video(base / "extract", base / "align", params.align, params.model.crop_size, progress=False)
    encode_video(base / "align", base / "encode", params.encode, progress=False)
    invert_video(checkpoint, base / "align", base / "encode", base / "invert", params.invert, progress=False)
    folders = (base / "align", base / "encode", base / "invert")
    timings: dict[str, list[float]] = {"edit_s": [], "edit_with_baseline_s": [], "evaluate_s": []}
    for repeat in range(args.repeats):
        for label, baseline in (("edit_s", False), ("edit_with_baseline_s", True)):
            start = time.perf_counter()
            edit_video("anonymise", params, checkpoint, *folders, base / f"{label}{repeat}", baseline=baseline,
                       progress=False)
            timings[label].append(time.perf_counter() - start)
        edit_dir = base / f"edit_with_baseline_s{repeat}"
        render_video(base / "extract", base / "align", base / "invert", edit_dir, base / f"render{repeat}",
                     params.render, progress=False)
        start = time.perf_counter()
        evaluate_edit(*folders, edit_dir, base / f"render{repeat}", base / f"evaluate{repeat}", params.encode,
                      progress=False, align=params.align)
        timings["evaluate_s"].append(time.perf_counter() - start)
    medians = {label: round(statistics.median(values), 2) for label, values in timings.items()}
    saved = medians["edit_with_baseline_s"] - medians["edit_s"] + medians["evaluate_s"]
    return {"frames": args.saving_frames, "steps": args.steps, "repeats": args.repeats} | medians | {
        "saved_per_edit_s": round(saved, 2),
        "share_saved": round(saved / (medians["edit_with_baseline_s"] + medians["evaluate_s"]), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 30, 100], help="Clips per batch.")
    parser.add_argument("--frames", type=int, default=8, help="Frames per clip (at least 5: see make_clips).")
    parser.add_argument("--steps", type=int, default=3, help="Sampler steps each way.")
    parser.add_argument("--workers", type=int, default=2, help="Local Dask worker processes.")
    parser.add_argument("--checkpoint", type=Path, default=None, help="Model file (default: train a micro model).")
    parser.add_argument("--train-steps", type=int, default=40)
    parser.add_argument("--saving-frames", type=int, default=24, help="Frames of the clip the saving is timed on.")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-saving", action="store_true", help="Skip the evaluation-on-demand timing.")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.frames < 5:
        parser.error("--frames: at least 5 (the sample's first frames hold no detectable face)")
    frames = sample_frames()
    with tempfile.TemporaryDirectory(prefix="dva-batch-scale-") as folder:
        root = Path(folder)
        checkpoint = args.checkpoint or train_micro_model(root / "model", args.train_steps)
        from pipeline.model.checkpoint import load_model

        resolution = load_model(checkpoint)[0].config.resolution
        params_file = root / "params.yaml"
        params_file.write_text(yaml.safe_dump({"model": {"preset": "tiny", "resolution": resolution},
                                               "extract": {"max_frames": args.frames},
                                               "invert": {"steps": args.steps, "device": "cpu"},
                                               "edit": {"device": "cpu"}, "edits": EDIT}))
        saving = None if args.no_saving else run_saving(root, frames, args, checkpoint, params_file)
        if saving:
            print(json.dumps({"evaluation_on_demand": saving}), flush=True)
        scale = []
        for size in args.sizes:
            scale.append(run_scale(size, root, frames, args, checkpoint, params_file))
            print(json.dumps(scale[-1]), flush=True)
    add_marginal_costs(scale)
    print("\n| clips | wall s | s per video | marginal s per video | peak MiB (process tree) |\n|---|---|---|---|---|")
    for row in scale:
        print(f"| {row['videos']} | {row['wall_s']} | {row['per_video_s']} | {row.get('marginal_per_video_s', '-')} "
              f"| {row['peak_mib']} |")
    results = {"frames_per_clip": args.frames, "frame_size": list(frames[0].shape[:2]), "steps": args.steps,
               "workers": args.workers, "edits": len(EDIT), "resolution": resolution,
               "checkpoint": str(args.checkpoint) if args.checkpoint else f"micro model, {args.train_steps} steps",
               "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
               "scale": scale} | ({"evaluation_on_demand": saving} if saving else {})
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
