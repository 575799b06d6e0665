"""Extract throughput against a bare decode, and extract's peak memory on a short and a long clip.

Run: `python benchmarks/extract_bench.py [--seconds 5 60] [--out results.json]`. Generates 720p
test clips (moving gradient + noise, H.264) under a temporary folder, runs `dva extract` on each
in a child process and reports frames/s and the child's peak resident memory. When an `ffmpeg`
binary is on PATH, `ffmpeg -i X -f null -` on the same file is timed for comparison.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np


def make_clip(path: Path, seconds: float, width: int = 1280, height: int = 720, fps: int = 30) -> int:
    """Write a synthetic H.264 clip; returns its frame count."""
    count = int(seconds * fps)
    rng = np.random.default_rng(0)
    base = np.linspace(0, 255, width, dtype=np.float32)[None, :, None].repeat(height, 0).repeat(3, 2)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps, options={"preset": "ultrafast", "crf": "23"})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for index in range(count):
            noise = rng.integers(0, 24, (height, width, 3), dtype=np.uint8)
            rgb = (np.roll(base, index * 8, axis=1).astype(np.uint8) // 2 + noise)
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts, frame.time_base = index, Fraction(1, fps)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return count


def timed_child(command: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of `command`, measured by a fresh wrapper process.

    RUSAGE_CHILDREN keeps the largest child ever waited for, so each measurement needs its own
    wrapper, which reports the peak of its only child.
    """
    probe = (
        "import resource, subprocess, sys, time; start = time.perf_counter(); "
        f"subprocess.run({command!r}, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL); "
        "print(time.perf_counter() - start, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)"
    )
    output = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True).stdout
    elapsed, peak = output.split()
    return float(elapsed), float(peak)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, nargs="+", default=[5, 60])
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    dva = str(Path(sys.executable).parent / "dva")
    ffmpeg = shutil.which("ffmpeg")
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for seconds in args.seconds:
            clip = Path(folder) / f"clip_{int(seconds)}s.mp4"
            frames = make_clip(clip, seconds)
            # Each measurement runs in a fresh child so ru_maxrss is that child's own peak.
            elapsed, peak = timed_child([dva, "extract", str(clip), str(Path(folder) / "out"), "--quiet"])
            row = {"seconds": seconds, "frames": frames, "extract_fps": frames / elapsed, "extract_peak_rss_mib": peak}
            if ffmpeg:
                start = time.perf_counter()
                subprocess.run([ffmpeg, "-v", "error", "-i", str(clip), "-f", "null", "-"], check=True)
                row["ffmpeg_null_fps"] = frames / (time.perf_counter() - start)
            rows.append(row)
            print(json.dumps(row))
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
