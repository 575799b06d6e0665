"""What Prefect costs: the batch flow against calling the stage functions directly.

Run: `python benchmarks/flow_bench.py [--clips 3] [--frames 12] [--steps 10] [--checkpoint PATH]
[--out benchmarks/results/flow_cpu.json]`.

Three short clips cut from the bundled sample, two edits. Measures: the stages called one after
the other in this process (no Prefect); `dva batch`'s flow on a fresh output folder (temporary
Prefect server included); the same flow again (everything cached); and how long a standalone
`prefect server start` on 127.0.0.1 takes to answer its health check.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.pipeline_bench import EDITS, make_face_clip  # noqa: E402


def direct_run(clips: list[Path], checkpoint: Path, params_file: Path, work: Path) -> float:
    """Seconds to run every stage for every clip and edit by calling the stage functions."""
    from pipeline.params import load_params
    from stages.align import align_video
    from stages.edit import edit_videos
    from stages.encode import encode_video
    from stages.evaluate import evaluate_edit
    from stages.extract import extract_video
    from stages.invert import invert_video
    from stages.render import render_video

    params = load_params(params_file)
    start = time.perf_counter()
    for clip in clips:
        base = work / clip.stem
        extract_video(clip, base / "extract", params.extract.max_frames, progress=False)
        align_video(base / "extract", base / "align", params.align, params.model.crop_size, progress=False)
        encode_video(base / "align", base / "encode", params.encode, progress=False)
        invert_video(checkpoint, base / "align", base / "encode", base / "invert", params.invert, progress=False)
        edits = {name: base / f"edit-{name}" for name in EDITS}
        edit_videos(edits, params, checkpoint, base / "align", base / "encode", base / "invert", progress=False)
        for name in EDITS:
            render_video(base / "extract", base / "align", base / "invert", edits[name], base / f"render-{name}",
                         params.render, progress=False)
            evaluate_edit(base / "align", base / "encode", base / "invert", edits[name], base / f"render-{name}",
                          base / f"evaluate-{name}", params.encode, progress=False)
    return time.perf_counter() - start


def server_startup_seconds(home: Path) -> float:
    """Seconds from `prefect server start` to a healthy API on a free loopback port."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = os.environ | {"PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    start = time.perf_counter()
    server = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port",
                               str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while time.perf_counter() - start < 300:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2):
                    return time.perf_counter() - start
            except OSError:
                time.sleep(0.2)
        raise RuntimeError("the Prefect server did not answer within 300 s")
    finally:
        server.terminate()
        server.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=3)
    parser.add_argument("--frames", type=int, default=12, help="Frames per clip.")
    parser.add_argument("--steps", type=int, default=10, help="DDIM steps each way.")
    parser.add_argument("--checkpoint", type=Path, default=REPO / "data/train/model.safetensors")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    from pipeline.model.checkpoint import load_model
    from workflows.batch import run_batch

    resolution = load_model(args.checkpoint)[0].config.resolution
    with tempfile.TemporaryDirectory(prefix="dva-flow-bench-") as folder:
        root = Path(folder)
        os.environ["PREFECT_HOME"] = str(root / "prefect")
        videos = root / "videos"
        videos.mkdir()
        clips = []
        for index in range(args.clips):
            clip = videos / f"clip{index}.mp4"
            # Different lengths make different clips (different content hashes).
            make_face_clip(clip, (args.frames + index) / 10, 10)
            clips.append(clip)
        params_file = root / "params.yaml"
        params_file.write_text(yaml.safe_dump({"model": {"preset": "tiny", "resolution": resolution},
                                               "invert": {"steps": args.steps}, "edits": EDITS}))
        direct = direct_run(clips, args.checkpoint, params_file, root / "direct")
        timings = {}
        for label in ("flow", "cached_rerun"):
            start = time.perf_counter()
            rows = run_batch(videos, args.checkpoint, list(EDITS), root / "out", params_file, retries=0, quiet=True)
            timings[label] = time.perf_counter() - start
            assert all(row.status == ("completed" if label == "flow" else "cached") for row in rows), rows
        results = {
            "clips": args.clips, "frames_per_clip": args.frames, "edits": len(EDITS), "steps": args.steps,
            "direct_s": direct, "flow_s": timings["flow"], "flow_overhead_s": timings["flow"] - direct,
            "cached_rerun_s": timings["cached_rerun"], "server_startup_s": server_startup_seconds(root / "server"),
        }
    print(json.dumps(results, indent=2))
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
