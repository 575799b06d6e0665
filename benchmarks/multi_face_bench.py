"""`dva edit --faces all` against the single-face run on the group clip: wall time per frame and per face.

Run: `python benchmarks/multi_face_bench.py --checkpoint MODEL [--params PARAMS] [--frames 48] [--evaluate]
[--out benchmarks/results/multi_face_cpu.json]`.

The clip is `dva sample --group` (six real faces, 640x360, 48 frames at 24 fps). Each run is its own `dva edit`
process in a fresh work store, as a user would start it, so every step (extract, align, encode, invert, edit,
render, and evaluate with `--evaluate`) is in the time. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.faces.tracking import NO_FACE  # noqa: E402
from pipeline.runs.artifacts import read_alignment  # noqa: E402
from stages.sample import group_clip  # noqa: E402

EDIT = {"kind": "reference", "away": True, "strength": 0.8}


def run_edit(clip: Path, checkpoint: Path, params: Path | None, faces: str, work: Path, evaluate: bool) -> float:
    """Wall seconds of one `dva edit` of `clip` with `--faces faces` in the work store `work`."""
    command = [sys.executable, "-m", "stages.cli", "edit", str(clip), "--checkpoint", str(checkpoint),
               "--edit", json.dumps(EDIT), "--faces", faces, "--out", str(work / "out.mp4"), "--work", str(work),
               "--quiet", *(["--params", str(params)] if params else []), *(["--evaluate"] if evaluate else [])]
    start = time.perf_counter()
    subprocess.run(command, check=True, cwd=REPO, env=os.environ | {"OMP_WAIT_POLICY": "PASSIVE"})
    return time.perf_counter() - start


def face_rows(work: Path) -> tuple[int, int, int]:
    """Frames, tracks and faces (rows with a face) of the one align output in the work store."""
    alignment = read_alignment(next((work / "align").iterdir()))
    faces = sum(state != NO_FACE for state in alignment.status)
    return int(alignment.metadata["frame_count"]), len(alignment.tracks), faces


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--params", type=Path, default=None, help="params file (default: dva edit's own choice)")
    parser.add_argument("--evaluate", action="store_true", help="also score each edit (--evaluate)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/multi_face_cpu.json")
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        clip = group_clip(root / "group.mp4")
        for faces in ("largest", "all"):
            work = root / f"work_{faces}"
            seconds = run_edit(clip, args.checkpoint.resolve(), args.params and args.params.resolve(), faces, work,
                               args.evaluate)
            frames, tracks, rows = face_rows(work)
            results[faces] = {"seconds": round(seconds, 1), "frames": frames, "tracks": tracks, "faces": rows,
                              "seconds_per_frame": round(seconds / frames, 3),
                              "seconds_per_face": round(seconds / rows, 3)}
            print(f"--faces {faces:8s} {tracks} track(s), {rows:4d} faces in {frames} frames: {seconds:7.1f} s, "
                  f"{seconds / frames:.2f} s/frame, {seconds / rows:.2f} s/face")
    ratio = results["all"]["seconds_per_frame"] / results["largest"]["seconds_per_frame"]
    print(f"all / largest per frame: {ratio:.2f}")
    record = {"machine": platform.node(), "cpus": os.cpu_count(), "evaluate": args.evaluate, "edit": EDIT,
              "load_average": os.getloadavg(), "runs": results, "per_frame_ratio": round(ratio, 2)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
