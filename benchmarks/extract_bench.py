"""`dva extract` throughput against a plain PyAV decode to RGB of the same file, paired and interleaved.

Run: `python benchmarks/extract_bench.py [--repeats 7] [--out benchmarks/results/extract_cpu.json]`.
Clips: the sample (`dva sample` makes data/raw/carphone.mp4), the sample scaled to 960x540 (real
footage at the larger size) and a synthetic 960x540 clip (moving gradient + noise, H.264). Each
repeat times a plain decode (`frame.to_ndarray(format="rgb24")` for every frame) and
`extract_video` on the same file back to back, in alternating order, in this process; the ratio
decode seconds / extract seconds of each pair is the extract/decode throughput ratio (1.0: extract
runs at decode speed), and its median over the pairs is the figure, robust to a noisy machine. The
peak resident memory of one `dva extract` CLI run per clip is reported too.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from stages.extract import extract_video  # noqa: E402


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


def scaled_copy(source: Path, path: Path, width: int = 960, height: int = 540) -> int:
    """Re-encode `source` at width x height (H.264, crf 20); returns its frame count."""
    count = 0
    with av.open(str(source)) as reader, av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=reader.streams.video[0].average_rate,
                                      options={"preset": "fast", "crf": "20"})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for frame in reader.decode(video=0):
            rgb = frame.reformat(width=width, height=height, format="rgb24").to_ndarray()
            out = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            out.pts, out.time_base = count, Fraction(1, 30)
            for packet in stream.encode(out):
                container.mux(packet)
            count += 1
        for packet in stream.encode():
            container.mux(packet)
    return count


def plain_decode(path: Path) -> int:
    """Decode every frame to RGB with PyAV, as any reader would; returns the frame count."""
    count = 0
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for frame in container.decode(stream):
            frame.to_ndarray(format="rgb24")
            count += 1
    return count


def seconds_of(action) -> tuple[float, float]:
    """Wall seconds and CPU seconds (every thread of this process) that `action` took."""
    start, cpu = time.perf_counter(), time.process_time()
    action()
    return time.perf_counter() - start, time.process_time() - cpu


def measure(name: str, clip: Path, work: Path, repeats: int) -> dict:
    """Paired, interleaved timings of a plain decode and of extract on `clip`."""
    frames = plain_decode(clip)
    out = work / f"extract_{name}"
    extract_video(clip, out, progress=False)  # warm-up: imports, file cache
    ratios, cpu_ratios, decode_times, extract_times = [], [], [], []
    for repeat in range(repeats):
        decode = lambda: plain_decode(clip)  # noqa: E731
        extract = lambda: extract_video(clip, out, progress=False)  # noqa: E731
        if repeat % 2 == 0:
            decode_s, extract_s = seconds_of(decode), seconds_of(extract)
        else:
            extract_s, decode_s = seconds_of(extract), seconds_of(decode)
        ratios.append(decode_s[0] / extract_s[0])
        cpu_ratios.append(decode_s[1] / extract_s[1])
        decode_times.append(decode_s[0])
        extract_times.append(extract_s[0])
    dva = str(Path(sys.executable).parent / "dva")
    _, peak = timed_child([dva, "extract", str(clip), str(work / f"cli_{name}"), "--quiet"])
    with av.open(str(clip)) as container:
        stream = container.streams.video[0]
        size = f"{stream.codec_context.width}x{stream.codec_context.height}"
    return {
        "clip": name,
        "size": size,
        "frames": frames,
        "repeats": repeats,
        "ratio_median": statistics.median(ratios),
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
        # CPU seconds are what a machine shared with other work still measures fairly.
        "cpu_ratio_median": statistics.median(cpu_ratios),
        "decode_fps_median": frames / statistics.median(decode_times),
        "extract_fps_median": frames / statistics.median(extract_times),
        "cli_peak_rss_mib": peak,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sample", type=Path, default=REPO_ROOT / "data/raw/carphone.mp4")
    parser.add_argument("--seconds", type=float, default=4, help="Length of the synthetic clip.")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if not args.sample.is_file():
        raise SystemExit(f"error: {args.sample}: not found (`dva sample` makes it)")
    rows = []
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        clips = {"sample": args.sample}
        scaled_copy(args.sample, work / "sample_960x540.mp4")
        clips["sample_960x540"] = work / "sample_960x540.mp4"
        make_clip(work / "synthetic_960x540.mp4", args.seconds, width=960, height=540)
        clips["synthetic_960x540"] = work / "synthetic_960x540.mp4"
        for name, clip in clips.items():
            row = measure(name, clip, work, args.repeats)
            rows.append(row)
            print(f"{name:>18} {row['size']:>8} {row['frames']:4d} frames: extract/decode throughput ratio "
                  f"{row['ratio_median']:.2f} (min {row['ratio_min']:.2f}, max {row['ratio_max']:.2f}; "
                  f"CPU-time ratio {row['cpu_ratio_median']:.2f}; "
                  f"decode {row['decode_fps_median']:.0f} fps, extract {row['extract_fps_median']:.0f} fps, "
                  f"CLI peak {row['cli_peak_rss_mib']:.0f} MiB)")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
