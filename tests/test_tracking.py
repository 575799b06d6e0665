"""Face tracking: which face is followed, and how detection gaps are filled.

A wrong choice here silently edits the wrong person or makes the crop jump between people, so
each rule of `track_face` is pinned down on hand-made detections.
"""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.faces.face_detection import FaceDetection
from pipeline.faces.tracking import INTERPOLATED, NO_FACE, OK, track_face

# A fixed 68-point pattern in a unit box; each detection scales and moves it into its box.
_PATTERN = np.random.default_rng(0).uniform(0.1, 0.9, size=(68, 2))


def face(cx: float, cy: float, size: float = 50.0, score: float = 1.0) -> FaceDetection:
    """A detection whose box is centred at (cx, cy) with landmarks inside the box."""
    x0, y0 = cx - size / 2, cy - size / 2
    return FaceDetection(box=(x0, y0, x0 + size, y0 + size), score=score, landmarks=_PATTERN * size + [x0, y0])


def test_every_frame_detected_is_all_ok():
    per_frame = [[face(100 + i, 80, score=0.5 + i / 10)] for i in range(4)]
    track = track_face(per_frame)
    assert track.status == [OK] * 4
    assert track.valid.all()
    np.testing.assert_allclose(track.scores, [0.5, 0.6, 0.7, 0.8])
    np.testing.assert_allclose(track.landmarks[2], per_frame[2][0].landmarks)


@pytest.mark.parametrize("gap", [1, 3, 5])
def test_gaps_up_to_max_gap_are_interpolated_linearly(gap):
    start, end = face(100, 80), face(100 + 6 * (gap + 1), 80 - 2 * (gap + 1))
    per_frame = [[start]] + [[] for _ in range(gap)] + [[end]]
    track = track_face(per_frame, max_gap=5)
    assert track.status == [OK] + [INTERPOLATED] * gap + [OK]
    for index in range(1, gap + 1):
        weight = index / (gap + 1)
        expected = (1 - weight) * start.landmarks + weight * end.landmarks
        np.testing.assert_allclose(track.landmarks[index], expected, atol=1e-9)
        # Interpolated frames have no detector score: the score column means "detected".
        assert np.isnan(track.scores[index])


def test_gaps_longer_than_max_gap_are_no_face():
    per_frame = [[face(100, 80)]] + [[] for _ in range(6)] + [[face(104, 80)]]
    track = track_face(per_frame, max_gap=5)
    assert track.status == [OK] + [NO_FACE] * 6 + [OK]
    assert np.isnan(track.landmarks[1:7]).all()
    assert list(track.valid) == [True] + [False] * 6 + [True]


def test_max_gap_zero_interpolates_nothing():
    per_frame = [[face(100, 80)], [], [face(101, 80)]]
    assert track_face(per_frame, max_gap=0).status == [OK, NO_FACE, OK]


def test_short_leading_and_trailing_gaps_hold_the_nearest_detection():
    first, last = face(100, 80), face(110, 84)
    per_frame = [[], [], [first], [face(105, 82)], [last], [], [], []]
    track = track_face(per_frame, max_gap=3)
    assert track.status == [INTERPOLATED] * 2 + [OK] * 3 + [INTERPOLATED] * 3
    for index in (0, 1):
        np.testing.assert_allclose(track.landmarks[index], first.landmarks)
    for index in (5, 6, 7):
        np.testing.assert_allclose(track.landmarks[index], last.landmarks)


def test_long_leading_and_trailing_gaps_are_no_face():
    per_frame = [[]] * 4 + [[face(100, 80)]] + [[]] * 4
    track = track_face(per_frame, max_gap=3)
    assert track.status == [NO_FACE] * 4 + [OK] + [NO_FACE] * 4


def test_no_detection_at_all_gives_an_all_no_face_track():
    track = track_face([[], [], []])
    assert track.status == [NO_FACE] * 3
    assert not track.valid.any()


def test_face_index_picks_the_second_largest_face_and_keeps_following_it():
    big, medium, small = face(60, 60, size=100), face(250, 70, size=60), face(400, 80, size=30)
    per_frame = [
        [small, big, medium],  # detector order must not matter, only size
        [face(62, 60, size=100), face(254, 71, size=60)],
        [face(256, 72, size=58), face(64, 61, size=100), face(402, 80, size=30)],
    ]
    track = track_face(per_frame, face_index=1)
    assert track.status == [OK] * 3
    np.testing.assert_allclose(track.landmarks[0], medium.landmarks)
    np.testing.assert_allclose(track.landmarks[1], per_frame[1][1].landmarks)
    np.testing.assert_allclose(track.landmarks[2], per_frame[2][0].landmarks)
    # face_index 0 follows the largest instead.
    np.testing.assert_allclose(track_face(per_frame, face_index=0).landmarks[2], per_frame[2][1].landmarks)


def test_face_index_waits_for_a_frame_with_enough_faces():
    per_frame = [[face(60, 60, size=100)], [face(60, 60, size=100), face(250, 70, size=60)]]
    track = track_face(per_frame, face_index=1, max_gap=0)
    assert track.status == [NO_FACE, OK]
    np.testing.assert_allclose(track.landmarks[1], per_frame[1][1].landmarks)


def test_a_far_away_face_is_not_followed():
    # The tracked face leaves; another person appears across the frame. Following them would
    # paste the edit onto someone else.
    tracked, stranger = face(100, 100, size=50), face(400, 300, size=80)
    per_frame = [[tracked]] + [[stranger]] * 7
    track = track_face(per_frame, max_gap=2)
    # The trailing gap (7 frames) is longer than max_gap, so nothing is held either.
    assert track.status == [OK] + [NO_FACE] * 7
    assert np.isnan(track.landmarks[1:]).all()
    # With a short absence the tracked face is held over the stranger's frames, then picked up.
    per_frame = [[tracked], [stranger], [stranger], [face(104, 102, size=50), stranger]]
    track = track_face(per_frame, max_gap=2)
    assert track.status == [OK, INTERPOLATED, INTERPOLATED, OK]
    np.testing.assert_allclose(track.landmarks[3], per_frame[3][0].landmarks)
    assert np.all(np.abs(track.landmarks[1] - tracked.landmarks) < 5)  # near the tracked face


def test_nearest_face_is_followed_even_when_a_larger_one_is_present():
    tracked = face(100, 100, size=50)
    per_frame = [[tracked], [face(420, 300, size=120), face(110, 104, size=48)]]
    track = track_face(per_frame)
    np.testing.assert_allclose(track.landmarks[1], per_frame[1][1].landmarks)
