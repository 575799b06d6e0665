"""A corpus of broken and unusual videos, generated here, run through `dva extract`, `dva align`
and (for those with a face) `dva render`: each input either works correctly or fails with one
line naming the file, never a traceback, a hang (every run has a time limit) or a partial output.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.runs.artifacts import FRAMES_FILE
from pipeline.video.video_io import probe, read_lossless_frames

from .conftest import MICRO_PARAMS

FRAMES = 12
TIME_LIMIT = 180  # seconds per command: far above the few seconds each needs, so only a hang hits it


def _sample_frames(sample_clip: Path, count: int = FRAMES) -> list[np.ndarray]:
    with av.open(str(sample_clip)) as container:
        frames = [frame.to_ndarray(format="rgb24") for _, frame in zip(range(count), container.decode(video=0))]
    return frames


def _rotate_mp4(path: Path) -> Path:
    """Set the track's display matrix to a quarter turn (what a phone held upright writes)."""
    data = bytearray(path.read_bytes())
    identity = struct.pack(">9i", 0x10000, 0, 0, 0, 0x10000, 0, 0, 0, 0x40000000)
    at = data.find(identity, data.find(b"tkhd"))
    data[at : at + 36] = struct.pack(">9i", 0, 0x10000, 0, -0x10000, 0, 0, 0, 0, 0x40000000)
    path.write_bytes(bytes(data))
    return path


def _flip_bytes(source: Path, destination: Path, seed: int, count: int = 20) -> Path:
    data = bytearray(source.read_bytes())
    rng = np.random.default_rng(seed)
    for position in rng.integers(0, len(data), count):
        data[position] ^= 0xFF
    destination.write_bytes(bytes(data))
    return destination


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, sample_clip, video_tools) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("corpus")
    faces = _sample_frames(sample_clip)
    good = video_tools.write_video(root / "good.mp4", faces)
    fast = video_tools.faststart_copy(good, root / "good-faststart.mp4")
    items: dict[str, Path] = {}
    items["zero-length"] = root / "zero.mp4"
    items["zero-length"].write_bytes(b"")
    for fraction in (0.02, 0.2, 0.5, 0.8, 0.98):
        items[f"truncated-{fraction}"] = video_tools.truncated_copy(good, root / f"cut-{fraction}.mp4", fraction)
        items[f"truncated-faststart-{fraction}"] = video_tools.truncated_copy(fast, root / f"cutfs-{fraction}.mp4",
                                                                              fraction)
    for seed in range(4):
        items[f"flipped-{seed}"] = _flip_bytes(fast, root / f"flipped-{seed}.mp4", seed)
    huge = root / "huge.y4m"
    huge.write_bytes(b"YUV4MPEG2 W100000 H100000 F25:1 Ip A1:1 C420jpeg\nFRAME\n" + bytes(1000))
    items["huge-dimensions"] = huge
    items["audio-only"] = video_tools.write_audio_only(root / "audio-only.mp4")
    png = root / "still.mp4"
    with av.open(str(png), "w", format="image2pipe") as container:
        stream = container.add_stream("png", rate=1)
        stream.width, stream.height, stream.pix_fmt = faces[0].shape[1], faces[0].shape[0], "rgb24"
        for packet in stream.encode(av.VideoFrame.from_ndarray(faces[0], format="rgb24")):
            container.mux(packet)
    items["image-renamed"] = png
    items["text-renamed"] = root / "notes.mp4"
    items["text-renamed"].write_text("this is not a video\n")
    tiny = [np.full((1, 1, 3), value, np.uint8) for value in range(4)]
    items["1x1"] = video_tools.write_video(root / "one.mkv", tiny, codec="ffv1", pix_fmt="bgr0")
    thin = [np.full((3, 4097, 3), value, np.uint8) for value in range(4)]
    items["4097x3"] = video_tools.write_video(root / "thin.mkv", thin, codec="ffv1", pix_fmt="bgr0")
    items["rotated"] = _rotate_mp4(video_tools.write_video(root / "rotated.mp4",
                                                           [np.ascontiguousarray(np.rot90(f, 1)) for f in faces]))
    pts = [0, 40, 70, 150, 190, 200, 260, 330, 335, 400, 480, 500]
    items["variable-frame-rate"] = video_tools.write_video(root / "vfr.mkv", faces, pts=pts,
                                                           time_base=Fraction(1, 1000))
    crowd = [np.concatenate([np.concatenate([f, f], axis=1)] * 2, axis=0) for f in faces]
    items["many-faces"] = video_tools.write_video(root / "crowd.mp4", crowd)
    items["unicode-spaces"] = shutil.copyfile(good, root / "visage été 01 ☺.mp4")
    return items


RENDERED = ("rotated", "variable-frame-rate", "many-faces", "unicode-spaces")


def _run(dva: str, *arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run([dva, *arguments, "--quiet"], capture_output=True, text=True, timeout=TIME_LIMIT)


def _check_outcome(result: subprocess.CompletedProcess, source: Path, out: Path) -> bool:
    """True when the command worked; otherwise assert it failed the way users are promised."""
    assert "Traceback" not in result.stderr, result.stderr
    leftovers = list(out.parent.glob(f".{out.name}.tmp-*"))
    assert not leftovers, f"temporary output left behind: {leftovers}"
    if result.returncode == 0:
        return True
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert str(source) in lines[0], lines[0]
    assert not out.exists(), "a failed run left an output folder"
    return False


def test_corpus_through_extract_and_align(corpus, dva_executable, tmp_path):
    worked = set()
    for name, source in corpus.items():
        extract_out = tmp_path / name / "extract"
        result = _run(dva_executable, "extract", str(source), str(extract_out))
        if not _check_outcome(result, source, extract_out):
            continue
        table = pq.read_table(extract_out / "frames.parquet")
        assert table.num_rows > 0
        assert sum(1 for _ in read_lossless_frames(extract_out / FRAMES_FILE)) == table.num_rows
        align_out = tmp_path / name / "align"
        if _check_outcome(_run(dva_executable, "align", str(extract_out), str(align_out)), extract_out, align_out):
            worked.add(name)
    # The inputs with a face that are merely unusual must go all the way through align.
    assert {"rotated", "variable-frame-rate", "many-faces", "unicode-spaces"} <= worked, worked
    assert not worked & {"zero-length", "huge-dimensions", "audio-only", "text-renamed", "1x1", "4097x3"}


def test_unusual_videos_with_faces_render_with_their_timing(corpus, micro_model, dva_executable, tmp_path):
    from stages.align import align_video
    from stages.edit import edit_video
    from stages.encode import encode_video
    from stages.extract import extract_video
    from stages.invert import invert_video

    params = micro_model.settings(edits={"anon": {"kind": "reference", "away": True, "strength": 1.0}})
    for name in RENDERED:
        source, work = corpus[name], tmp_path / name
        meta = extract_video(source, work / "extract", progress=False)
        align_video(work / "extract", work / "align", params.align, MICRO_PARAMS["model"]["resolution"],
                    progress=False)
        encode_video(work / "align", work / "encode", params.encode, progress=False)
        invert_video(micro_model.checkpoint, work / "align", work / "encode", work / "invert", params.invert,
                     progress=False)
        edit_video("anon", params, micro_model.checkpoint, work / "align", work / "encode", work / "invert",
                   work / "edit", progress=False)
        out = work / "render"
        result = _run(dva_executable, "render", str(work / "extract"), str(work / "align"), str(work / "invert"),
                      str(work / "edit"), str(out))
        assert _check_outcome(result, work, out), result.stderr
        rendered = probe(out / "edited.mp4")
        assert (rendered.width, rendered.height) == (meta.width, meta.height)
        source_times = pq.read_table(work / "extract" / "frames.parquet").column("time").to_numpy()
        with av.open(str(out / "edited.mp4")) as container:
            stream = container.streams.video[0]
            times = sorted(float(frame.pts * stream.time_base) for frame in container.decode(stream))
        np.testing.assert_allclose(times, source_times - source_times[0], atol=2e-3)
    upright = _sample_frames(corpus["unicode-spaces"], 1)[0]
    assert probe(corpus["rotated"]).rotation in (90, 270)
    assert (probe(corpus["rotated"]).width, probe(corpus["rotated"]).height) == (upright.shape[1], upright.shape[0])
