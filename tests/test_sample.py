"""`dva sample --group`: the multi-face clip made from a group photo shipped in a package."""

from __future__ import annotations

import subprocess
import sys

from pipeline.faces.face_detection import DlibLandmarkDetector
from pipeline.video.video_io import iter_frames, probe

# The clip is for tracking every face: it must show at least four detectable faces per frame
# (six at the start; the zoom pushes the outer two out).
MIN_FACES = 4


def dva(*arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stages.cli", *arguments], capture_output=True, text=True)


def test_group_clip_shows_several_real_faces(tmp_path):
    clip = tmp_path / "group.mp4"
    result = dva("sample", str(clip), "--group")
    assert result.returncode == 0, result.stderr
    meta = probe(clip)
    assert (meta.width, meta.height, meta.frame_count) == (640, 360, 48)
    detector = DlibLandmarkDetector()
    frames = list(iter_frames(clip))
    counts = [len(detector.detect(frames[index].rgb)) for index in (0, 24, 47)]
    assert min(counts) >= MIN_FACES, counts
    assert counts[0] == 6


def test_reverse_and_group_together_is_one_error_line(tmp_path):
    result = dva("sample", str(tmp_path / "x.mp4"), "--group", "--reverse")
    assert result.returncode == 1
    assert result.stderr.strip() == "error: choose one of --reverse and --group"
    assert not (tmp_path / "x.mp4").exists()
