"""Linking every face into per-person tracks, on hand-made detections.

A wrong link swaps two people's edits mid-clip (or anonymises one person with two identities), so
each case a real video produces is pinned down: faces crossing, a face leaving and coming back,
a face appearing mid-clip, spurious short detections.
"""

from __future__ import annotations

import numpy as np

from pipeline.faces.face_detection import FaceDetection
from pipeline.faces.track_linking import link_tracks
from pipeline.faces.tracking import INTERPOLATED, NO_FACE, OK

_PATTERN = np.random.default_rng(0).uniform(0.1, 0.9, size=(68, 2))
# Two people's identity vectors: orthogonal plus a little per-frame noise, as an encoder gives.
_IDENTITY = {"a": np.eye(8)[0], "b": np.eye(8)[1], "c": np.eye(8)[2]}


def face(cx: float, cy: float, size: float = 50.0) -> FaceDetection:
    x0, y0 = cx - size / 2, cy - size / 2
    return FaceDetection(box=(x0, y0, x0 + size, y0 + size), score=1.0, landmarks=_PATTERN * size + [x0, y0])


def identity(person: str, frame: int) -> np.ndarray:
    return _IDENTITY[person] + np.random.default_rng(frame).normal(0, 0.05, 8)


def frames_of(track) -> list[int]:
    return list(track.detected_frames)


def center_x(track, frame: int) -> float:
    landmarks = track.face.landmarks[frame]
    return float((landmarks.min(0)[0] + landmarks.max(0)[0]) / 2)


def test_crossing_faces_keep_their_ids_by_motion_alone():
    # A walks right, B walks left; they pass through the same spot at frame 10.
    per_frame = [[face(100 + 10 * i, 100), face(300 - 10 * i, 100)] for i in range(21)]
    per_frame = [list(reversed(faces)) if i % 2 else faces for i, faces in enumerate(per_frame)]
    tracks = link_tracks(per_frame)
    assert len(tracks) == 2
    for track in tracks:
        xs = [center_x(track, frame) for frame in range(21)]
        steps = np.diff(xs)
        assert np.all(steps > 0) or np.all(steps < 0), "a track switched person at the crossing"


def test_crossing_faces_of_different_people_swap_without_identity_are_resolved_with_it():
    # Both stop at the same spot for a frame and then each goes back: position alone cannot tell
    # who is who after the meeting, the identity vectors can.
    positions = [100, 140, 180, 200, 180, 140, 100]
    per_frame, vectors = [], []
    for frame, x in enumerate(positions):
        per_frame.append([face(x, 100), face(400 - x, 100)])
        vectors.append([identity("a", frame), identity("b", frame)])
    tracks = link_tracks(per_frame, vectors)
    assert len(tracks) == 2
    a_track = next(track for track in tracks if center_x(track, 0) < 200)
    assert [round(center_x(a_track, frame)) for frame in range(len(positions))] == positions


def test_face_leaving_and_reentering_rejoins_its_track_by_identity():
    per_frame, vectors = [], []
    for frame in range(30):
        faces, ids = [face(100, 100)], [identity("a", frame)]
        if not 8 <= frame < 20:  # B is away for 12 frames (> max_gap), comes back elsewhere
            faces.append(face(300 if frame < 8 else 250, 120))
            ids.append(identity("b", frame))
        per_frame.append(faces)
        vectors.append(ids)
    tracks = link_tracks(per_frame, vectors, max_gap=5)
    assert len(tracks) == 2
    b_track = tracks[1]
    assert frames_of(b_track) == list(range(8)) + list(range(20, 30))
    assert b_track.face.status[10] == NO_FACE
    # Without identity vectors a long absence starts a new track: positions cannot re-join it.
    assert len(link_tracks(per_frame, max_gap=5)) == 3


def test_face_appearing_mid_clip_gets_the_next_id():
    per_frame = [[face(100, 100)] + ([face(300, 100, size=80)] if frame >= 6 else []) for frame in range(12)]
    tracks = link_tracks(per_frame)
    assert [track.track_id for track in tracks] == [0, 1]
    assert frames_of(tracks[0]) == list(range(12))
    assert frames_of(tracks[1]) == list(range(6, 12))
    assert tracks[1].face.status[:6] == [NO_FACE] * 6


def test_faces_appearing_together_are_numbered_largest_first_whatever_the_detection_order():
    small, large = face(100, 100, size=40), face(300, 100, size=90)
    for order in ([small, large], [large, small]):
        tracks = link_tracks([list(order) for _ in range(5)])
        assert [round(track.mean_area) for track in tracks][0] > [round(track.mean_area) for track in tracks][1]


def test_short_gaps_are_interpolated_and_short_tracks_dropped():
    per_frame = [[face(100 + 4 * frame, 100)] if frame not in (3, 4) else [] for frame in range(10)]
    per_frame[7].append(face(400, 300))  # a one-frame false detection
    tracks = link_tracks(per_frame, max_gap=5, min_length=3)
    assert len(tracks) == 1
    track = tracks[0]
    assert track.face.status[3:5] == [INTERPOLATED, INTERPOLATED]
    assert track.face.status[2] == OK
    np.testing.assert_allclose(track.face.landmarks[3], face(100 + 4 * 3, 100).landmarks)


def test_a_far_jump_is_another_person_not_a_move():
    per_frame = [[face(100, 100)] for _ in range(5)] + [[face(600, 100)] for _ in range(5)]
    tracks = link_tracks(per_frame, max_gap=0)
    assert [frames_of(track) for track in tracks] == [list(range(5)), list(range(5, 10))]
