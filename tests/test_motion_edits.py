"""Motion and expression edits with the micro model.

The edits are held against a zero-strength expression edit of the same video, decoded in the same pass: an
expression moves the lips by its documented range and changes the decoded face inside the face mask, and a
driven face takes its driver's motion and changes where, and as much as, the driver moves it. Also `dva edit`
driven by another clip of another size and frame rate, and the one-line errors of bad drivers and names.

The micro model (40 training steps) decodes changed codes into changed faces, but not into faces whose
landmarks a detector finds where the codes put them (dlib finds 0-40% of them; the demo model, 2000 steps,
does: README, "What the demo model can and cannot show"), so "toward the driver" is checked on the codes
each frame is decoded with and on where and how much the decoded faces change.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from pipeline.editing.driving import DriverArtifacts, MotionInputs
from pipeline.faces.settings import AlignParams, EncodeParams
from pipeline.faces.tracking import NO_FACE
from pipeline.runs.artifacts import (
    EDIT_INFO_FILE,
    EDIT_LANDMARKS_FILE,
    EDITED_FILE,
    open_crops,
    read_features,
    read_frame_times,
)
from pipeline.video.video_io import iter_frames
from stages.cli import main
from stages.edit import edit_video, edit_videos
from tests.conftest import CROP_SIZE, SAMPLE_FRAMES, write_video

DRIVER_FPS = 15  # half the sample's rate: each driver frame covers two target frames
DRIVER_SCALE = 1.5

# Landmark features are the 51 jaw-less iBUG points, (x, y) interleaved: feature point i is iBUG point i + 17.
RIGHT_EYE, LEFT_EYE = np.arange(36, 42) - 17, np.arange(42, 48) - 17
LIPS = np.arange(48, 68) - 17
INNER_UPPER_LIP, INNER_LOWER_LIP = 62 - 17, 66 - 17  # the centres of the inner lip lines
# mouth_open at strength 1, in inter-ocular distances along the face's downward axis (pipeline/editing/motion.py).
LOWER_LIP_DOWN, UPPER_LIP_UP = 0.40, 0.05
# The move fades as 1 - (offset / half width)^2 away from the mouth's centre line. The inner lip centres of the
# sample's near-frontal face lie within 6% of the half width from it (weight >= 0.996: the lower lip moves
# 0.3985-0.40); 0.01 of the inter-ocular distance allows offsets up to 15% (weight 0.975).
LIP_MOVE_TOLERANCE = 0.01
# Mean change (grey levels) inside the face mask that an edit must make over the zero-strength edit. Decoding
# the same codes in another place of a UNet batch changes a grey level by at most 1 (test_edit_render), and
# two zero-strength edits decoded together differ by exactly 0; the micro model changes the face by about 52
# for mouth_open at 1 and 21 for the driven edit.
MIN_FACE_CHANGE = 2.0
# Rank correlation over the frames between how far the driver moves each frame from its own motion and how
# much its decoded face changes. Observed 0.82-0.89; frames changed independently of the driver would give
# 0 +- 0.21 (1 / sqrt(frames - 2) for 23 frames), so 0.5 is 2.4 of those from chance.
MIN_CHANGE_RANK_CORRELATION = 0.5
# The driven codes' motion must be this much closer to the driver's than to the source's own (mean absolute
# difference of the motion from the first frame). Relative driving only rescales the driver's motion, by the
# ratio of the faces' inter-ocular distances, and alignment puts the eyes of every crop in nearly the same
# place (observed ratio 2e-4), while the driver (the clip backwards) and the source move differently.
MAX_DRIVER_TO_SOURCE_RATIO = 0.1


def _driver_frames(times: np.ndarray) -> np.ndarray:
    """The driver frame on screen at each time: frame k of a DRIVER_FPS clip shows from k / DRIVER_FPS on."""
    return np.minimum(np.floor(times * DRIVER_FPS + 1e-4), SAMPLE_FRAMES // 2 - 1).astype(int)


@pytest.fixture(scope="module")
def driver_clip(sample_clip, tmp_path_factory):
    """The sample's first frames played backwards, 1.5x larger, at 15 fps, over the same duration."""
    frames = [frame.rgb for frame in iter_frames(sample_clip, max_frames=SAMPLE_FRAMES)][::-2]
    height, width = frames[0].shape[:2]
    size = (round(width * DRIVER_SCALE) // 2 * 2, round(height * DRIVER_SCALE) // 2 * 2)
    frames = [cv2.resize(frame, size, interpolation=cv2.INTER_CUBIC) for frame in frames]
    return write_video(tmp_path_factory.mktemp("driver") / "driver.mp4", frames, rate=DRIVER_FPS,
                       options={"crf": "10"})


@pytest.fixture(scope="module")
def driver_run(driver_clip, tmp_path_factory) -> DriverArtifacts:
    """The driver through extract, align and encode, as `dva edit` and DVC prepare a driver."""
    from stages.align import align_video
    from stages.encode import encode_video
    from stages.extract import extract_video

    root = tmp_path_factory.mktemp("driver_run")
    extract_video(driver_clip, root / "extract", progress=False)
    align_video(root / "extract", root / "align", AlignParams(), CROP_SIZE, progress=False)
    encode_video(root / "align", root / "encode", EncodeParams(), progress=False)
    return DriverArtifacts(driver_clip, root / "extract", root / "encode")


# The zero-strength edit is the baseline: the same kind of edit, decoded with the video's own codes.
EDITS = {
    "zero": {"kind": "expression", "expressions": {"mouth_open": 0.0}},
    "open": {"kind": "expression", "expressions": {"mouth_open": 1.0}},
    "driven": {"kind": "motion", "driver": "reversed"},
}


@dataclass(frozen=True)
class Decoded:
    """The EDITS of the sample, decoded in one pass, and what the tests compare them with."""

    edited: dict[str, np.ndarray]  # edit name -> (N, R, R, 3) blended crops
    codes: dict[str, np.ndarray]  # edit name -> (N, 102) motion codes each frame was decoded with
    own: np.ndarray  # (N, 102) the video's own codes
    faces: np.ndarray  # (N,) frames with a face
    inside: np.ndarray  # (N, R, R) the align stage's face mask


@pytest.fixture(scope="module")
def decoded(micro_model, micro_inversion, sample_run, driver_run, tmp_path_factory) -> Decoded:
    """EDITS decoded together by the edit stage from the micro model's inversion of the sample."""
    root = tmp_path_factory.mktemp("motion_edits")
    out_dirs = {name: root / name for name in EDITS}
    # The id's file is never read: the prepared driver comes in through `motion`.
    params = micro_model.settings(edits=EDITS, drivers={"reversed": {"path": "data/reversed.mp4"}})
    edit_videos(out_dirs, params, micro_model.checkpoint, sample_run.align, sample_run.encode, micro_inversion,
                baseline=False, progress=False, motion=MotionInputs(sample_run.extract, {"driven": driver_run}))
    features = read_features(sample_run.encode)
    return Decoded(
        edited={name: np.load(out / EDITED_FILE) for name, out in out_dirs.items()},
        codes={name: np.load(out / EDIT_LANDMARKS_FILE) for name, out in out_dirs.items()},
        own=features.landmarks,
        faces=np.array([state != NO_FACE for state in features.status]),
        inside=np.asarray(open_crops(sample_run.align).masks) > 127,
    )


def _face_change(decoded: Decoded, name: str) -> np.ndarray:
    """Per face frame, the mean absolute change (grey levels) of edit `name` from the zero edit inside the face."""
    change = np.abs(decoded.edited[name].astype(int) - decoded.edited["zero"].astype(int)).mean(axis=-1)
    return np.array([change[frame][decoded.inside[frame]].mean() for frame in np.flatnonzero(decoded.faces)])


def test_mouth_open_moves_only_the_lips_by_its_documented_range(decoded):
    np.testing.assert_array_equal(decoded.codes["zero"], decoded.own)
    own = decoded.own[decoded.faces].reshape(-1, 51, 2)
    shift = decoded.codes["open"][decoded.faces].reshape(-1, 51, 2) - own
    np.testing.assert_array_equal(np.delete(shift, LIPS, axis=1), 0)
    # The face's own frame, from its mean shape: across along the eye line, down perpendicular to it.
    mean = own.mean(axis=0)
    right, left = mean[RIGHT_EYE].mean(axis=0), mean[LEFT_EYE].mean(axis=0)
    iod = float(np.linalg.norm(left - right))
    across = (left - right) / iod
    down = np.array([-across[1], across[0]])
    np.testing.assert_allclose(shift[:, INNER_LOWER_LIP] @ down / iod, LOWER_LIP_DOWN, atol=LIP_MOVE_TOLERANCE)
    np.testing.assert_allclose(shift[:, INNER_UPPER_LIP] @ down / iod, -UPPER_LIP_UP, atol=LIP_MOVE_TOLERANCE)


def test_expression_changes_the_face_against_a_zero_strength_edit(decoded):
    assert _face_change(decoded, "open").mean() > MIN_FACE_CHANGE


def test_driven_codes_take_the_drivers_motion_not_the_sources(decoded, driver_run, sample_run):
    driver = read_features(driver_run.encode)
    assert all(state != NO_FACE for state in driver.status) and decoded.faces.all()
    matched = _driver_frames(read_frame_times(sample_run.extract)[1])
    driven = decoded.codes["driven"]
    # Relative mode: the first frame keeps its own codes, and every frame moves from there as the driver does.
    np.testing.assert_array_equal(driven[0], decoded.own[0])
    driven_motion = driven - driven[0]
    to_driver = np.abs(driven_motion - (driver.landmarks[matched] - driver.landmarks[matched[0]])).mean()
    to_source = np.abs(driven_motion - (decoded.own - decoded.own[0])).mean()
    assert to_driver < MAX_DRIVER_TO_SOURCE_RATIO * to_source, (to_driver, to_source)


def test_driven_face_changes_where_its_driver_moves_it(decoded, driver_run, sample_run):
    assert decoded.faces.all()
    change = _face_change(decoded, "driven")
    # The first frame keeps its own codes, so it decodes as the zero edit does.
    assert change[0] <= 1
    assert change[1:].mean() > MIN_FACE_CHANGE
    # Elsewhere the face changes the more, the further the driver takes the frame from its own motion.
    driver = read_features(driver_run.encode).landmarks
    matched = _driver_frames(read_frame_times(sample_run.extract)[1])
    away = np.linalg.norm((driver[matched] - driver[matched[0]]) - (decoded.own - decoded.own[0]), axis=1)
    ranks = [np.argsort(np.argsort(values[1:])) for values in (away, change)]
    assert np.corrcoef(*ranks)[0, 1] > MIN_CHANGE_RANK_CORRELATION


def _edit_info(work: Path) -> dict:
    """The record of the one edit made in the work folder `work`, wherever its layout puts it."""
    (record,) = work.rglob(EDIT_INFO_FILE)
    return json.loads(record.read_text())


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
                             progress=False, evaluate=True)

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
    info = _edit_info(tmp_path / "work")
    assert info["driver_frame_of_each_frame"] == _driver_frames(np.asarray(source_times)).tolist()
    assert info["driver_frames"] == SAMPLE_FRAMES // 2
    # Where the codes lead the face: test_driven_codes_take_the_drivers_motion_not_the_sources.


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
    assert not list((tmp_path / "work").rglob(EDITED_FILE))  # nor a partial edit, under any name


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
    from workflows.one_off import edit_one_video

    # Megamind's face is found from about frame 60 on; a 720x528 clip at 24 fps of it drives the sample.
    frames = [frame.rgb for frame in iter_frames(MEGAMIND, max_frames=60 + SAMPLE_FRAMES)][60:]
    driver = write_video(tmp_path / "megamind.mp4", frames, rate=24, options={"crf": "10"})
    params = micro_model.settings(extract={"max_frames": SAMPLE_FRAMES})
    out = tmp_path / "driven.mp4"
    metrics = edit_one_video(sample_clip, micro_model.checkpoint, json.dumps({"kind": "motion", "driver": str(driver)}),
                             out, params, tmp_path / "work", progress=False, evaluate=True)
    source_times = [frame.time for frame in iter_frames(sample_clip, max_frames=SAMPLE_FRAMES)]
    np.testing.assert_allclose(_times(out), source_times, atol=1e-3)
    assert json.loads((tmp_path / "driven_metrics.json").read_text()) == metrics
    assert metrics["landmarks"]["frames_measured"] > 0
    info = _edit_info(tmp_path / "work")
    expected = np.minimum(np.floor(np.asarray(source_times) * 24 + 1e-4), SAMPLE_FRAMES - 1)
    assert info["driver_frame_of_each_frame"] == expected.astype(int).tolist()
