"""Motion-code geometry: expression directions, keyframe curves, driver matching by timestamp."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.core.errors import ParamsError
from pipeline.editing import motion
from pipeline.params import parse_params


def _shape() -> np.ndarray:
    """A frontal face's 51 jaw-less points (crop fractions): brows, nose, open eyes, closed mouth."""
    points = np.zeros((51, 2))
    points[motion.BROWS] = np.column_stack([np.linspace(0.25, 0.75, 10), np.full(10, 0.35)])
    points[motion._ibug(*range(27, 36))] = np.column_stack([np.full(9, 0.5), np.linspace(0.40, 0.60, 9)])
    for eye, centre in ((motion.RIGHT_EYE, 0.35), (motion.LEFT_EYE, 0.65)):
        angles = np.linspace(np.pi, -np.pi, 6, endpoint=False)  # corner, two upper, corner, two lower
        points[eye] = np.column_stack([centre + 0.06 * np.cos(angles), 0.42 - 0.02 * np.sin(angles)])
    lips = motion.LIPS
    angles = np.concatenate([np.linspace(np.pi, 0, 7), np.linspace(0, np.pi, 7)[1:-1],
                             np.linspace(np.pi, 0, 5), np.linspace(0, np.pi, 5)[1:-1]])
    widths = np.r_[np.full(12, 0.12), np.full(8, 0.08)]
    points[lips] = np.column_stack([0.5 + widths * np.cos(angles), 0.72 - 0.02 * np.sin(angles) * np.r_[
        np.ones(7), -np.ones(5), np.ones(5), -np.ones(3)]])
    return points


def _moved(name: str, strength: float = 1.0, shape: np.ndarray | None = None) -> np.ndarray:
    shape = _shape() if shape is None else shape
    return shape + strength * motion.as_points(motion.expression_direction(name, shape.reshape(-1)))


IOD = 0.30  # eye centres at x = 0.35 and 0.65


def test_mouth_open_drops_the_lower_lip_centre_and_keeps_the_corners():
    shape, opened = _shape(), _moved("mouth_open")
    centre = motion._ibug(66)[0]
    assert opened[centre, 1] - shape[centre, 1] == pytest.approx(motion.MOUTH_OPEN_LOWER * IOD)
    np.testing.assert_allclose(opened[motion.MOUTH_CORNERS], shape[motion.MOUTH_CORNERS])
    np.testing.assert_allclose(opened[motion.BROWS], shape[motion.BROWS])
    closed = _moved("mouth_open", -0.5)
    assert closed[centre, 1] < shape[centre, 1]  # negative strength: the opposite way


def test_smile_moves_the_corners_out_and_up():
    shape, smiling = _shape(), _moved("smile")
    right, left = motion.MOUTH_CORNERS
    assert smiling[right, 0] - shape[right, 0] == pytest.approx(-motion.SMILE_OUT * IOD)
    assert smiling[left, 0] - shape[left, 0] == pytest.approx(motion.SMILE_OUT * IOD)
    assert smiling[left, 1] - shape[left, 1] == pytest.approx(-motion.SMILE_UP * IOD)


def test_eyes_closed_brings_the_lids_together_and_brows_up_lifts_the_brows():
    upper, lower = motion.EYELIDS
    closed = _moved("eyes_closed")
    np.testing.assert_allclose(closed[upper, 1], closed[lower, 1], atol=1e-12)
    lifted = _moved("brows_up")
    np.testing.assert_allclose(lifted[motion.BROWS, 1] - _shape()[motion.BROWS, 1], -motion.BROWS_UP * IOD)


def test_directions_follow_the_face_frame_and_size():
    # Rotate the face by 90 degrees and halve it: the direction rotates and halves with it.
    shape = _shape()
    rotation = np.array([[0.0, -1.0], [1.0, 0.0]])
    turned = 0.5 * shape @ rotation.T
    for name in motion.EXPRESSIONS:
        plain = motion.as_points(motion.expression_direction(name, shape.reshape(-1)))
        rotated = motion.as_points(motion.expression_direction(name, turned.reshape(-1)))
        np.testing.assert_allclose(rotated, 0.5 * plain @ rotation.T, atol=1e-12, err_msg=name)


def test_unknown_expression_name():
    with pytest.raises(KeyError, match="frown"):
        motion.expression_direction("frown", _shape().reshape(-1))


def test_keyframe_curve_interpolates_in_time_and_holds_its_ends():
    times = np.array([-1.0, 0.0, 1.0, 2.0, 5.0])
    np.testing.assert_allclose(motion.curve_values([(0.0, 0.0), (2.0, 1.0)], times), [0, 0, 0.5, 1, 1])
    np.testing.assert_allclose(motion.curve_values(0.3, times), 0.3)


def test_expression_codes_move_face_frames_only():
    codes = np.tile(_shape().reshape(-1), (4, 1))
    valid = np.array([True, True, False, True])
    times = np.array([0.0, 1.0, 2.0, 3.0])
    moved = motion.expression_codes(codes, valid, times, {"brows_up": [(0.0, 0.0), (3.0, 1.0)]})
    direction = motion.expression_direction("brows_up", codes[0])
    np.testing.assert_allclose(moved[2], codes[2])
    np.testing.assert_allclose(moved[[0, 1, 3]] - codes[[0, 1, 3]], np.outer([0, 1 / 3, 1], direction), atol=1e-6)


def test_match_by_time_same_timing_is_frame_for_frame():
    times = np.arange(10) * 1001 / 30000
    np.testing.assert_array_equal(motion.match_by_time(times, times), np.arange(10))


def test_match_by_time_other_frame_rate_and_start():
    target = 5.0 + np.arange(8) / 30  # timestamps need not start at 0
    driver = np.arange(4) / 15
    np.testing.assert_array_equal(motion.match_by_time(target, driver), [0, 0, 1, 1, 2, 2, 3, 3])
    faster = np.arange(16) / 60
    np.testing.assert_array_equal(motion.match_by_time(target, faster), np.arange(0, 16, 2))


def test_shorter_driver_holds_or_loops():
    target = np.arange(7) / 10
    driver = np.arange(3) / 10
    np.testing.assert_array_equal(motion.match_by_time(target, driver, "hold"), [0, 1, 2, 2, 2, 2, 2])
    np.testing.assert_array_equal(motion.match_by_time(target, driver, "loop"), [0, 1, 2, 0, 1, 2, 0])


def test_driven_codes_relative_and_absolute():
    rng = np.random.default_rng(0)
    target = np.tile(_shape().reshape(-1), (3, 1))
    driver = 2 * np.tile(_shape().reshape(-1), (3, 1)) + rng.normal(0, 0.01, (3, 102))  # a face twice as big
    driver_valid = np.array([True, False, True])
    matched = np.array([0, 1, 2])
    absolute = motion.driven_codes(target, np.ones(3, bool), driver, driver_valid, matched, "absolute")
    np.testing.assert_allclose(absolute, driver[[0, 0, 2]], atol=1e-6)  # the faceless frame takes its neighbour
    relative = motion.driven_codes(target, np.ones(3, bool), driver, driver_valid, matched, "relative")
    np.testing.assert_allclose(relative[0], target[0], atol=1e-6)
    scale = motion.face_frame(_shape())[2] / motion.face_frame(motion.as_points(driver[[0, 2]].mean(axis=0)))[2]
    np.testing.assert_allclose(relative[2], target[0] + scale * (driver[2] - driver[0]), atol=1e-6)


def test_feature_to_crop_fraction_per_backend():
    features = np.full(102, 0.5)
    np.testing.assert_allclose(motion.feature_to_crop_fraction(features, "dlib"), 0.5)
    np.testing.assert_allclose(motion.feature_to_crop_fraction(features, "mobilenet"), (112 + 16) / 256)


@pytest.mark.parametrize(("edit", "message"), [
    ({"kind": "expression", "expressions": {"frown": 0.5}}, "unknown expression 'frown'"),
    ({"kind": "expression", "expressions": {"smile": [[1.0, 0.0], [0.5, 1.0]]}}, "strictly increasing"),
    ({"kind": "motion", "driver": "../elsewhere.mp4"}, "edits.drive.driver"),
    ({"kind": "motion", "driver": "data/x.mp4", "shorter": "bounce"}, "shorter"),
])
def test_bad_motion_and_expression_specs_are_params_errors(edit, message):
    with pytest.raises(ParamsError, match=message):
        parse_params({"edits": {"drive": edit}})


def test_motion_driver_may_be_an_id_or_a_data_path():
    params = parse_params({"drivers": {"other": {"path": "data/other.mp4"}},
                           "edits": {"a": {"kind": "motion", "driver": "other"},
                                     "b": {"kind": "motion", "driver": "data/clip.mp4", "mode": "absolute"}}})
    assert params.edits["a"].mode == "relative" and params.edits["a"].shorter == "hold"
