"""Every face of a real group clip: one track per person, each edited, pasted back and scored on its own.

The clip is `dva sample --group` (a real six-person photo filmed by a panning, zooming virtual camera),
cut to a few frames; the micro model (trained on the sample) inverts and edits every face.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import pytest

from pipeline.core.errors import InputError
from pipeline.faces.alignment import warp_to_frame
from pipeline.faces.settings import AlignParams
from pipeline.faces.tracking import NO_FACE, OK, track_face
from pipeline.runs.artifacts import (
    ALPHA_FILE,
    EDIT_INFO_FILE,
    FRAMES_FILE,
    VIDEO_FILE,
    Alignment,
    open_crops,
    read_alignment,
    read_features,
    read_frame_times,
)
from pipeline.runs.work_store import WorkStore
from pipeline.video.video_io import read_lossless_frames
from stages.align import align_video, crop_transforms
from stages.edit import edit_video
from stages.encode import encode_video
from stages.evaluate import evaluate_edit
from stages.extract import extract_video
from stages.invert import invert_video
from stages.render import composite_frames, faces_by_frame, render_video
from stages.sample import group_clip
from workflows.one_off import face_by_photo

FRAMES = 10  # of the group clip: about 20 s of detection, encoding and inversion for six faces
MIN_TRACKS = 4  # the clip shows at least four detectable faces in every frame (tests/test_sample.py)
EDITS = {
    "anon": {"kind": "reference", "away": True, "strength": 1.0},
    "second_only": {"kind": "reference", "away": True, "strength": 1.0, "tracks": [1]},
}


@dataclass(frozen=True)
class GroupRun:
    extract: Path
    align: Path
    encode: Path
    invert: Path
    edits: dict[str, Path]
    render: Path


@pytest.fixture(scope="module")
def group_run(micro_model, tmp_path_factory) -> GroupRun:
    root = tmp_path_factory.mktemp("group")
    clip = group_clip(root / "group.mp4")
    params = micro_model.settings(edits=EDITS, align={"faces": "all"})
    run = GroupRun(root / "extract", root / "align", root / "encode", root / "invert",
                   {name: root / f"edit_{name}" for name in EDITS}, root / "render")
    extract_video(clip, run.extract, max_frames=FRAMES, progress=False)
    align_video(run.extract, run.align, params.align, params.model.crop_size, progress=False)
    encode_video(run.align, run.encode, params.encode, progress=False)
    invert_video(micro_model.checkpoint, run.align, run.encode, run.invert, params.invert, progress=False)
    for name, folder in run.edits.items():
        edit_video(name, params, micro_model.checkpoint, run.align, run.encode, run.invert, folder, progress=False)
    render_video(run.extract, run.align, run.invert, run.edits["anon"], run.render, params.render, progress=False)
    return run


def test_every_face_gets_its_own_stable_track(group_run):
    alignment, features = read_alignment(group_run.align), read_features(group_run.encode)
    tracks = alignment.tracks
    assert len(tracks) >= MIN_TRACKS
    assert all(len(rows) == FRAMES for rows in tracks.values())  # a row per frame for each track
    assert all(np.array_equal(alignment.frame[rows], np.arange(FRAMES)) for rows in tracks.values())
    detected = {track_id: sum(alignment.status[row] == OK for row in rows) for track_id, rows in tracks.items()}
    assert sum(count == FRAMES for count in detected.values()) >= MIN_TRACKS, detected
    # Stable ids: every detected face is nearer its own track's identity than any other track's.
    means = np.stack([features.track_identities[track_id] for track_id in tracks])
    for position, rows in enumerate(tracks.values()):
        ok = [row for row in rows if features.status[row] == OK]
        nearest = np.argmax(features.identities[ok] @ means.T, axis=1)
        assert np.all(nearest == position), position
    # ... and the crop of a track moves smoothly: never more than a face's size between frames.
    for rows in tracks.values():
        centres = alignment.transforms[rows][:, :, 2]
        valid = np.array([alignment.status[row] != NO_FACE for row in rows])
        scale = np.sqrt(np.abs(np.linalg.det(alignment.transforms[rows][valid][:, :, :2])))
        steps = np.linalg.norm(np.diff(centres[valid], axis=0), axis=1) / scale[1:]
        assert np.all(steps < open_crops(group_run.align).crops.shape[1]), steps


def test_anonymising_changes_every_face_and_nothing_outside_them(group_run):
    alignment = read_alignment(group_run.align)
    info = json.loads((group_run.edits["anon"] / EDIT_INFO_FILE).read_text())
    assert sorted(int(track_id) for track_id in info["tracks"]) == sorted(alignment.tracks)
    edited_codes = np.array([entry["edited_identity"] for entry in info["tracks"].values()])
    assert all(entry["edited"] for entry in info["tracks"].values())
    # Each person gets their own new identity: no two anonymised codes are the same, and each is rotated away
    # from its own person's code by the same angle: cosine 1 / sqrt(1 + strength^2) (pipeline/editing/editing.py).
    similarity = edited_codes @ edited_codes.T
    others = ~np.eye(len(similarity), dtype=bool)
    assert np.all(similarity[others] < 0.999)
    # One random direction per person: rotating every code toward one shared direction would make the new
    # faces more alike than the people were ((s + 1) / 2 for source similarity s, strength 1).
    sources = np.array([entry["video_identity"] for entry in info["tracks"].values()])
    assert similarity[others].mean() < (sources @ sources.T)[others].mean()
    cosines = [entry["identity_cosine_to_source"] for entry in info["tracks"].values()]
    np.testing.assert_allclose(cosines, 1 / np.sqrt(2), atol=1e-5)

    alpha = np.load(group_run.edits["anon"] / ALPHA_FILE)
    changed = {track_id: 0 for track_id in alignment.tracks}
    originals = list(read_lossless_frames(group_run.extract / FRAMES_FILE))
    for index, source, result, rows, score in composite_frames(group_run.extract, group_run.align,
                                                               group_run.edits["anon"], progress=False):
        assert np.array_equal(source, originals[index])
        height, width = source.shape[:2]
        reach = np.zeros((height, width), dtype=bool)
        for row in rows:
            reach |= warp_to_frame(alpha[row].astype(np.float32) / 255, alignment.transforms[row], width, height) > 0
            face = warp_to_frame(alpha[row].astype(np.float32) / 255, alignment.transforms[row], width, height) > 0.5
            changed[int(alignment.track[row])] += bool(np.any(result[face] != source[face]))
        assert np.array_equal(result[~reach], source[~reach]), index  # pixels no blend mask reaches
        assert score is not None and score >= 40
    faces = {track_id: sum(alignment.status[row] != NO_FACE for row in rows)
             for track_id, rows in alignment.tracks.items()}
    assert changed == faces  # the edit is in every face of every frame


def test_an_edit_limited_to_one_track_leaves_the_other_faces_as_they_are(group_run):
    alignment = read_alignment(group_run.align)
    alpha = np.load(group_run.edits["second_only"] / ALPHA_FILE)
    info = json.loads((group_run.edits["second_only"] / EDIT_INFO_FILE).read_text())
    assert [track_id for track_id, entry in info["tracks"].items() if entry["edited"]] == ["1"]
    for track_id, rows in alignment.tracks.items():
        faces = [row for row in rows if alignment.status[row] != NO_FACE]
        assert (alpha[faces].max() > 0) == (track_id == 1), track_id


def test_rendered_video_keeps_every_frame_and_its_time(group_run):
    def times(path: Path) -> list[float]:
        with av.open(str(path)) as container:
            return [float(frame.pts * frame.time_base) for frame in container.decode(video=0)]

    source = read_frame_times(group_run.extract)[1]  # the frames extract kept (extract.max_frames)
    assert len(source) == FRAMES
    np.testing.assert_allclose(times(group_run.render / VIDEO_FILE), source, atol=1e-3)


def test_metrics_have_one_entry_per_track(group_run, micro_model, tmp_path):
    params = micro_model.settings()
    metrics = evaluate_edit(group_run.align, group_run.encode, group_run.invert, group_run.edits["anon"],
                            group_run.render, tmp_path / "evaluate", params.encode, progress=False,
                            align=params.align)
    tracks = read_alignment(group_run.align).tracks
    assert [entry["track"] for entry in metrics["tracks"]] == list(tracks)
    for entry in metrics["tracks"]:
        assert entry["frames"] >= 3 and entry["edited"]
        for name in ("edit", "reconstruction"):
            figures = entry[name]
            assert set(figures) >= {"tl_id", "tg_id", "id_sim_source", "reid_rate"}
            assert 0 <= figures["reid_rate"] <= 1 and -1 <= figures["id_sim_source"] <= 1
    faces = sum(entry["frames"] for entry in metrics["tracks"])
    assert metrics["faces"] == faces and metrics["frames"] == FRAMES
    # The totals weigh every face frame alike.
    expected = sum(entry["edit"]["reid_rate"] * entry["frames"] for entry in metrics["tracks"]) / faces
    assert metrics["edit"]["reid_rate"] == pytest.approx(expected)


def test_larger_faces_are_pasted_last():
    # Two faces in frame 0: the frame-to-crop map of the larger face scales by 0.5, the smaller's by 2.
    transforms = np.array([np.diag([2.0, 2.0, 0.0])[:2], np.diag([0.5, 0.5, 0.0])[:2]])
    alignment = Alignment([OK, OK], np.zeros((2, 68, 2)), transforms, {}, np.array([0, 1]), np.array([0, 0]))
    assert faces_by_frame(alignment) == [[0, 1]]
    swapped = Alignment([OK, OK], np.zeros((2, 68, 2)), transforms[::-1], {}, np.array([0, 1]), np.array([0, 0]))
    assert faces_by_frame(swapped) == [[1, 0]]


def test_largest_face_is_the_single_face_follower(sample_run, sample_extract):
    # `faces: largest` (the default) writes exactly the single-face tracker's crops: one track, a row per frame.
    from pipeline.faces.face_detection import make_landmark_detector

    params = AlignParams()
    alignment = read_alignment(sample_run.align)
    assert set(alignment.track.tolist()) == {0} and np.array_equal(alignment.frame, np.arange(len(alignment.frame)))
    detector = make_landmark_detector(params.backend, None, params.detector_upsample, params.detection_threshold)
    detections = [detector.detect(rgb) for rgb in read_lossless_frames(sample_extract / FRAMES_FILE)]
    single = track_face(detections, params.face_index, params.max_gap)
    assert alignment.status == single.status
    size = open_crops(sample_run.align).crops.shape[1]
    np.testing.assert_array_equal(alignment.transforms, crop_transforms(single, params, size))


def test_a_face_photo_chooses_its_track(group_run, micro_model, sample_clip, tmp_path):
    import cv2

    alignment = read_alignment(group_run.align)
    frame = next(iter(read_lossless_frames(group_run.extract / FRAMES_FILE)))
    # A photo of the person of track 2: the first frame cut around that face.
    row = alignment.tracks[2][0]
    half = open_crops(group_run.align).crops.shape[1] / 2
    x, y = (np.linalg.inv(np.vstack([alignment.transforms[row], [0, 0, 1]])) @ [half, half, 1])[:2].astype(int)
    photo = tmp_path / "person.png"
    cv2.imwrite(str(photo), cv2.cvtColor(frame[max(0, y - 60):y + 60, max(0, x - 60):x + 60], cv2.COLOR_RGB2BGR))
    params = micro_model.settings(extract={"max_frames": FRAMES})
    clip = group_clip(tmp_path / "group.mp4")
    store = WorkStore(tmp_path / "work")
    track_id, similarity = face_by_photo(photo, clip, params, store, progress=False)
    assert track_id == 2 and similarity >= 0.92

    # Someone who is not in the clip (the sample's face): one error naming the photo and the nearest match.
    stranger = tmp_path / "stranger.png"
    rgb = _first_frame(sample_clip)
    cv2.imwrite(str(stranger), cv2.cvtColor(cv2.resize(rgb, None, fx=2, fy=2), cv2.COLOR_RGB2BGR))
    with pytest.raises(InputError, match=r"no face of .* is this person: the nearest is track \d, similarity"):
        face_by_photo(stranger, clip, params, store, progress=False)


def _first_frame(video: Path) -> np.ndarray:
    from pipeline.video.video_io import iter_frames

    return next(iter(iter_frames(video))).rgb


def test_a_videos_own_faces_setting_overrides_align_faces(dva_executable, tmp_path):
    # A project of single-face clips and a group shot: `videos.<id>.faces` chooses that video's faces while
    # align.faces (largest) keeps every other video on the single-face follower; the DVC stage passes --video.
    import subprocess

    import yaml

    extract = tmp_path / "extract"
    extract_video(group_clip(tmp_path / "group.mp4"), extract, max_frames=FRAMES, progress=False)
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({
        "align": {"faces": "largest"},
        "videos": {"group": {"path": "data/group.mp4", "faces": "all"}, "solo": {"path": "data/solo.mp4"}},
    }))

    def align(video: str) -> subprocess.CompletedProcess:
        return subprocess.run([dva_executable, "align", str(extract), str(tmp_path / video), "--video",
                               video, "--params", str(params), "--quiet"], capture_output=True, text=True, timeout=600)

    assert align("group").returncode == 0 and align("solo").returncode == 0
    assert len(read_alignment(tmp_path / "group").tracks) >= MIN_TRACKS
    assert list(read_alignment(tmp_path / "solo").tracks) == [0]
    unknown = align("nobody")
    assert unknown.returncode != 0 and not (tmp_path / "nobody").exists()
    assert unknown.stderr.strip().splitlines() == [f"error: {params}: --video nobody: no video or driver of that id"]
