"""Motion and expression edits with the micro model: `dva edit` driven by another clip of another size and
frame rate, an expression edit through the edit stage, and the one-line errors of bad drivers and names.
"""

from __future__ import annotations

import json
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from pipeline.editing.driving import MotionInputs
from pipeline.editing.motion import expression_direction
from pipeline.runs.artifacts import EDIT_INFO_FILE, EDIT_LANDMARKS_FILE, EDITED_FILE, RECON_FILE, read_features
from pipeline.video.video_io import iter_frames
from stages.cli import main
from stages.edit import edit_video
from tests.conftest import SAMPLE_FRAMES

DRIVER_FPS = 15  # half the sample's rate: each driver frame covers two target frames
DRIVER_SCALE = 1.5


@pytest.fixture(scope="module")
def driver_clip(sample_clip, tmp_path_factory):
    """The sample's first frames played backwards, 1.5x larger, at 15 fps, over the same duration."""
    frames = [frame.rgb for frame in iter_frames(sample_clip, max_frames=SAMPLE_FRAMES)][::-2]
    height, width = frames[0].shape[:2]
    size = (round(width * DRIVER_SCALE) // 2 * 2, round(height * DRIVER_SCALE) // 2 * 2)
    frames = [cv2.resize(frame, size, interpolation=cv2.INTER_CUBIC) for frame in frames]
    from tests.conftest import write_video

    return write_video(tmp_path_factory.mktemp("driver") / "driver.mp4", frames, rate=DRIVER_FPS,
                       options={"crf": "10"})


def _times(path):
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return [float(frame.pts * stream.time_base) for frame in container.decode(stream)]


def test_dva_edit_follows_a_driver_of_another_size_and_frame_rate(micro_model, sample_clip, driver_clip, tmp_path):
    from workflows.one_off import edit_one_video

    params = micro_model.settings(extract={"max_frames": SAMPLE_FRAMES})
    out = tmp_path / "driven.mp4"
    spec = json.dumps({"kind": "motion", "driver": str(driver_clip)})
    metrics = edit_one_video(sample_clip, micro_model.checkpoint, spec, out, params, tmp_path / "work",
                             progress=False)

    # Same frame count and timing as the edited video, whatever the driver's.
    source_times = [frame.time for frame in iter_frames(sample_clip, max_frames=SAMPLE_FRAMES)]
    np.testing.assert_allclose(_times(out), source_times, atol=1e-3)
    with av.open(str(tmp_path / "driven_side_by_side.mp4")) as container:
        assert container.streams.video[0].width == 3 * 176  # source | reconstruction | edit
    saved = json.loads((tmp_path / "driven_metrics.json").read_text())
    assert saved == metrics
    landmarks = metrics["landmarks"]
    assert landmarks["frames_measured"] > 0
    assert landmarks["edit_error"] > 0 and landmarks["reconstruction_error"] > 0
    assert landmarks["error_ratio"] == pytest.approx(landmarks["edit_error"] / landmarks["reconstruction_error"])

    # Each frame took the driver frame on screen at its time: 15 fps against 29.97.
    from pipeline.core.hashing import content_key, sha256_file

    video_work = tmp_path / "work" / content_key(sha256_file(sample_clip))
    edit_dir = next(video_work.glob("edit-*"))
    info = json.loads((edit_dir / EDIT_INFO_FILE).read_text())
    expected = np.minimum(np.floor(np.asarray(source_times) * DRIVER_FPS + 1e-4), SAMPLE_FRAMES // 2 - 1)
    assert info["driver_frame_of_each_frame"] == expected.astype(int).tolist()
    assert info["driver_frames"] == SAMPLE_FRAMES // 2
    # Relative mode: the first frame keeps its own codes, later ones move with the driver.
    codes = np.load(edit_dir / EDIT_LANDMARKS_FILE)
    own = read_features(next(video_work.glob("encode-*"))).landmarks
    np.testing.assert_allclose(codes[0], own[0], atol=1e-6)
    assert np.abs(codes[-1] - own[-1]).max() > 1e-3


def test_expression_edit_moves_the_codes_and_the_face(micro_model, micro_inversion, sample_run, tmp_path):
    params = micro_model.settings(edits={"open": {"kind": "expression", "expressions": {"mouth_open": 1.0}}})
    out = tmp_path / "open"
    edit_video("open", params, micro_model.checkpoint, sample_run.align, sample_run.encode, micro_inversion, out,
               baseline=False, progress=False, motion=MotionInputs(sample_run.extract, {}))
    features = read_features(sample_run.encode)
    status, own = features.status, features.landmarks
    faces = np.array([state != "no_face" for state in status])
    direction = expression_direction("mouth_open", own[faces].mean(axis=0))
    np.testing.assert_allclose(np.load(out / EDIT_LANDMARKS_FILE)[faces] - own[faces], np.tile(direction, (faces.sum(), 1)),
                               atol=1e-6)
    edited, recon = np.load(out / EDITED_FILE).astype(float), np.load(micro_inversion / RECON_FILE).astype(float)
    assert np.abs(edited[faces] - recon[faces]).mean() > 0.5  # grey levels: the decoded face changed


def test_expression_edit_without_frame_times_is_an_error(micro_model, micro_inversion, sample_run, tmp_path):
    from pipeline.core.errors import DvaError

    params = micro_model.settings(edits={"smile": {"kind": "expression", "expressions": {"smile": 0.5}}})
    with pytest.raises(DvaError, match="frame times"):
        edit_video("smile", params, micro_model.checkpoint, sample_run.align, sample_run.encode, micro_inversion,
                   tmp_path / "smile", baseline=False, progress=False)
    assert not (tmp_path / "smile").exists()


def _no_face_clip(path, video_tools):
    return video_tools.write_video(path, video_tools.noise_frames(6, 96, 80), rate=10)


def _broken_clip(path, video_tools):
    path.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    return path


@pytest.mark.parametrize(("make_driver", "problem"), [
    (_no_face_clip, "driving video: no face found"),
    (_broken_clip, "driving video: not a readable video"),
])
def test_bad_driver_is_one_error_line_and_writes_nothing(make_driver, problem, micro_model, sample_clip, tmp_path,
                                                        video_tools, capsys):
    driver = make_driver(tmp_path / "driver.mp4", video_tools)
    out = tmp_path / "out" / "edited.mp4"
    params = tmp_path / "params.yaml"
    params.write_text(json.dumps(micro_model.params | {"extract": {"max_frames": SAMPLE_FRAMES}}))
    with pytest.raises(SystemExit) as exit_info:
        main(["edit", str(sample_clip), "--checkpoint", str(micro_model.checkpoint), "--edit",
              json.dumps({"kind": "motion", "driver": str(driver)}), "--out", str(out), "--params", str(params),
              "--work", str(tmp_path / "work"), "--quiet"])
    assert exit_info.value.code == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {driver}: {problem}")
    assert not (tmp_path / "out").exists()
    assert not list((tmp_path / "work").glob("*/edit-*"))


def test_unknown_expression_is_one_error_line(micro_model, sample_clip, tmp_path, capsys):
    params = tmp_path / "params.yaml"
    params.write_text(json.dumps(micro_model.params))
    with pytest.raises(SystemExit) as exit_info:
        main(["edit", str(sample_clip), "--checkpoint", str(micro_model.checkpoint), "--edit",
              '{"kind": "expression", "expressions": {"frown": 0.5}}', "--out", str(tmp_path / "o.mp4"),
              "--params", str(params), "--work", str(tmp_path / "work"), "--quiet"])
    assert exit_info.value.code == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --edit:") and "unknown expression 'frown'" in lines[0]
    assert not (tmp_path / "o.mp4").exists() and not (tmp_path / "work").exists()


def test_reversed_sample_plays_the_clip_backwards(tmp_path):
    from stages.sample import reversed_sample, sample_path

    reversed_clip = reversed_sample(tmp_path / "reversed.mp4")
    forward = [frame for frame in iter_frames(sample_path())]
    backward = [frame for frame in iter_frames(reversed_clip)]
    assert [frame.pts for frame in backward] == [frame.pts for frame in forward]
    for index in (0, len(forward) // 2, len(forward) - 1):
        difference = np.abs(backward[index].rgb.astype(int) - forward[-1 - index].rgb.astype(int)).mean()
        assert difference < 4, index  # grey levels of lossy encoding, not another frame


MEGAMIND = Path("/usr/share/doc/opencv-doc/examples/data/Megamind.avi")  # Debian's opencv-doc: another face


@pytest.mark.slow
@pytest.mark.skipif(not MEGAMIND.is_file(), reason="needs Debian's opencv-doc (apt-get install opencv-doc)")
def test_dva_edit_follows_another_persons_clip(micro_model, sample_clip, tmp_path):
    from tests.conftest import write_video
    from workflows.one_off import edit_one_video

    # Megamind's face is found from about frame 60 on; a 720x528 clip at 24 fps of it drives the sample.
    frames = [frame.rgb for frame in iter_frames(MEGAMIND, max_frames=60 + SAMPLE_FRAMES)][60:]
    driver = write_video(tmp_path / "megamind.mp4", frames, rate=24, options={"crf": "10"})
    params = micro_model.settings(extract={"max_frames": SAMPLE_FRAMES})
    out = tmp_path / "driven.mp4"
    metrics = edit_one_video(sample_clip, micro_model.checkpoint, json.dumps({"kind": "motion", "driver": str(driver)}),
                             out, params, tmp_path / "work", progress=False)
    source_times = [frame.time for frame in iter_frames(sample_clip, max_frames=SAMPLE_FRAMES)]
    np.testing.assert_allclose(_times(out), source_times, atol=1e-3)
    assert json.loads((tmp_path / "driven_metrics.json").read_text()) == metrics
    assert metrics["landmarks"]["frames_measured"] > 0
    from pipeline.core.hashing import content_key, sha256_file

    info = json.loads((next((tmp_path / "work" / content_key(sha256_file(sample_clip))).glob("edit-*"))
                       / EDIT_INFO_FILE).read_text())
    expected = np.minimum(np.floor(np.asarray(source_times) * 24 + 1e-4), SAMPLE_FRAMES - 1)
    assert info["driver_frame_of_each_frame"] == expected.astype(int).tolist()
