"""Alignment geometry: the crop transform, warps into and out of the crop, temporal smoothing,
the landmark feature `z_lnd` and its horizontal flip (used by training augmentation).

Render pastes edited crops back with the same matrices, so a sub-pixel error here shows up as a
visible seam or a drifting face in the final video.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from pipeline.faces import alignment
from pipeline.faces.alignment import (
    LANDMARK_FEATURE_DIM,
    apply_transform,
    crop_frame,
    crop_transform,
    flip_landmark_feature,
    flip_landmarks,
    invert_transform,
    landmark_feature,
    smooth_crops,
    warp_to_crop,
    warp_to_frame,
)

# iBUG 68-point left/right partners, written out from the annotation scheme independently of
# `alignment.MIRROR_68`, so the tests check that table rather than repeat it.
MIRROR_PAIRS = (
    [(k, 16 - k) for k in range(8)]  # jaw
    + [(17 + k, 26 - k) for k in range(5)]  # brows
    + [(31, 35), (32, 34)]  # nostrils
    + [(36, 45), (37, 44), (38, 43), (39, 42), (40, 47), (41, 46)]  # eyes
    + [(48, 54), (49, 53), (50, 52), (59, 55), (58, 56)]  # outer lip
    + [(60, 64), (61, 63), (67, 65)]  # inner lip
)
ON_AXIS = [8, 27, 28, 29, 30, 33, 51, 57, 62, 66]

# Image-left half of a frontal face (x < 0) and its midline, in units of about half a face width;
# y points down. Only the rough shape matters: eyes above the mouth, jaw around both.
_LEFT_HALF = {
    **{k: (-np.cos(k / 8 * np.pi / 2), -0.2 + 1.0 * np.sin(k / 8 * np.pi / 2)) for k in range(8)},
    **{17 + k: (-0.8 + 0.16 * k, -0.5 - 0.05 * min(k, 4 - k)) for k in range(5)},
    31: (-0.2, 0.2), 32: (-0.1, 0.23),
    36: (-0.55, -0.3), 37: (-0.45, -0.35), 38: (-0.3, -0.35), 39: (-0.2, -0.3), 40: (-0.3, -0.25), 41: (-0.45, -0.25),
    48: (-0.35, 0.5), 49: (-0.22, 0.45), 50: (-0.1, 0.42), 59: (-0.22, 0.56), 58: (-0.1, 0.6),
    60: (-0.3, 0.5), 61: (-0.1, 0.48), 67: (-0.1, 0.53),
}
_MIDLINE = {8: 0.8, 27: -0.35, 28: -0.2, 29: -0.05, 30: 0.1, 33: 0.25, 51: 0.44, 57: 0.61, 62: 0.48, 66: 0.54}


def symmetric_face() -> np.ndarray:
    """68 landmarks of a face that is exactly mirror-symmetric about x = 0."""
    points = np.full((68, 2), np.nan)
    for left, right in MIRROR_PAIRS:
        points[left] = _LEFT_HALF[left]
        points[right] = (-_LEFT_HALF[left][0], _LEFT_HALF[left][1])
    for index, y in _MIDLINE.items():
        points[index] = (0.0, y)
    assert not np.isnan(points).any()
    return points


def placed_face(scale: float, angle_deg: float, center: tuple[float, float]) -> np.ndarray:
    """The template face scaled, rotated in-plane and moved into a frame."""
    angle = np.deg2rad(angle_deg)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    return symmetric_face() * scale @ rotation.T + np.asarray(center)


def test_template_is_a_valid_68_point_layout():
    # Guards the helper itself: every point has exactly one role.
    seen = [index for pair in MIRROR_PAIRS for index in pair] + ON_AXIS
    assert sorted(seen) == list(range(68))


# ----------------------------------------------------------------------------------------------
# Crop transform and landmark round trip


@pytest.mark.parametrize("angle", [-25.0, 0.0, 12.0])
def test_landmarks_round_trip_frame_to_crop_to_frame(angle):
    landmarks = placed_face(40.0, angle, (300.5, 180.25))
    matrix = crop_transform(*crop_frame(landmarks), 256)
    in_crop = apply_transform(matrix, landmarks)
    back = apply_transform(invert_transform(matrix), in_crop)
    np.testing.assert_allclose(back, landmarks, atol=1e-9)


@pytest.mark.parametrize("angle", [-30.0, 0.0, 20.0])
def test_crop_undoes_in_plane_rotation_and_centres_the_face(angle):
    # The model sees every face upright at the same place whatever the head roll in the frame.
    size = 64
    landmarks = placed_face(30.0, angle, (120.0, 90.0))
    in_crop = apply_transform(crop_transform(*crop_frame(landmarks), size), landmarks)
    eye_left, eye_right = in_crop[36:42].mean(axis=0), in_crop[42:48].mean(axis=0)
    assert eye_right[0] > eye_left[0]  # not mirrored
    assert abs(eye_right[1] - eye_left[1]) < 1e-6  # eyes level
    # A symmetric face sits on the crop's vertical centre line.
    np.testing.assert_allclose(in_crop[ON_AXIS, 0], (size - 1) / 2, atol=1e-6)
    # Same face, any rotation: the same crop landmarks.
    upright = apply_transform(crop_transform(*crop_frame(placed_face(30.0, 0.0, (50.0, 50.0))), size),
                              placed_face(30.0, 0.0, (50.0, 50.0)))
    np.testing.assert_allclose(in_crop, upright, atol=1e-6)


def test_quad_corners_map_to_outer_pixel_edges():
    center, x = np.array([100.0, 80.0]), np.array([30.0, 10.0])
    y = alignment.perpendicular(x)
    matrix = crop_transform(center, x, 128)
    corners = apply_transform(matrix, np.array([center - x - y, center + x + y, center]))
    np.testing.assert_allclose(corners, [[-0.5, -0.5], [127.5, 127.5], [63.5, 63.5]], atol=1e-9)


# ----------------------------------------------------------------------------------------------
# Pixel-level check of the warps: dots drawn at landmarks must land where the matrix says.

DOT_POINTS = [0, 8, 16, 30, 36, 45, 48, 54]  # far enough apart that their blobs do not mix
# Measured error is ~0.02 px (OpenCV interpolates with 1/32-px weights). A half-pixel convention
# slip (pixel corners vs. centres) moves the dots by 0.3-0.7 px and is a visible seam after paste
# back, so the bound is well below that rather than the loose "within a pixel".
DOT_TOLERANCE = 0.15


def render_dots(points: np.ndarray, width: int, height: int, sigma: float) -> np.ndarray:
    """Gaussian blobs centred exactly (sub-pixel) at `points`, as a uint8 RGB frame."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    image = np.zeros((height, width))
    for px, py in points:
        image += np.exp(-((xs - px) ** 2 + (ys - py) ** 2) / (2 * sigma**2))
    gray = np.clip(np.round(image * 255), 0, 255).astype(np.uint8)
    return np.repeat(gray[..., None], 3, axis=2)


def locate_dot(image: np.ndarray, near: np.ndarray, radius: float) -> np.ndarray:
    """Intensity centroid of the blob within `radius` of `near` (x, y)."""
    gray = image[..., 0].astype(np.float64) if image.ndim == 3 else image.astype(np.float64)
    ys, xs = np.mgrid[0 : gray.shape[0], 0 : gray.shape[1]]
    window = (xs - near[0]) ** 2 + (ys - near[1]) ** 2 <= radius**2
    weights = gray * window
    assert weights.sum() > 0, f"no dot near {near}"
    return np.array([(weights * xs).sum(), (weights * ys).sum()]) / weights.sum()


@pytest.mark.parametrize(
    ("face_scale", "size", "sigma", "frame_size"),
    [
        # Crop larger than the face's frame region (upsampling, the common low-res case).
        (40.0, 256, 1.5, (200, 160)),
        # Face much larger than the crop: exercises the area pre-shrink path of `warp_to_crop`.
        (300.0, 64, 12.0, (1100, 1000)),
    ],
)
def test_dots_land_where_the_transform_says(face_scale, size, sigma, frame_size):
    width, height = frame_size
    landmarks = placed_face(face_scale, 17.0, (width / 2 + 0.3, height / 2 - 0.4))
    matrix = crop_transform(*crop_frame(landmarks), size)
    frame = render_dots(landmarks[DOT_POINTS], width, height, sigma)

    crop = warp_to_crop(frame, matrix, size)
    assert crop.shape == (size, size, 3) and crop.dtype == np.uint8
    expected = apply_transform(matrix, landmarks[DOT_POINTS])
    scale = np.sqrt(abs(np.linalg.det(matrix[:, :2])))
    radius = max(3.0, 3.5 * sigma * scale)
    found = np.array([locate_dot(crop, point, radius) for point in expected])
    np.testing.assert_array_less(np.linalg.norm(found - expected, axis=1), DOT_TOLERANCE)


def test_pasted_back_crop_puts_dots_at_their_original_positions():
    width, height, size = 200, 160, 256
    landmarks = placed_face(40.0, -11.0, (97.3, 84.6))
    matrix = crop_transform(*crop_frame(landmarks), size)
    frame = render_dots(landmarks[DOT_POINTS], width, height, 1.5)

    pasted = warp_to_frame(warp_to_crop(frame, matrix, size), matrix, width, height)
    assert pasted.shape == frame.shape and pasted.dtype == np.uint8
    found = np.array([locate_dot(pasted, point, 5.0) for point in landmarks[DOT_POINTS]])
    np.testing.assert_array_less(np.linalg.norm(found - landmarks[DOT_POINTS], axis=1), DOT_TOLERANCE)


def test_paste_back_leaves_outside_of_crop_empty():
    # Render blends with a mask; anything outside the crop's quad must be zero, not smeared border.
    landmarks = placed_face(20.0, 0.0, (100.0, 80.0))
    matrix = crop_transform(*crop_frame(landmarks), 64)
    pasted = warp_to_frame(np.full((64, 64), 255, np.uint8), matrix, 200, 160)
    corners = apply_transform(invert_transform(matrix), np.array([[-0.5, -0.5], [63.5, 63.5]]))
    (x0, y0), (x1, y1) = corners
    assert pasted[int(y0) + 2 : int(y1) - 2, int(x0) + 2 : int(x1) - 2].min() == 255
    assert pasted[:, : int(x0) - 1].max() == 0 and pasted[:, int(x1) + 2 :].max() == 0
    assert pasted[: int(y0) - 1].max() == 0 and pasted[int(y1) + 2 :].max() == 0


# ----------------------------------------------------------------------------------------------
# Temporal smoothing


def test_constant_crops_are_unchanged_by_smoothing():
    count = 12
    centers = np.tile([50.0, 40.0], (count, 1))
    axes = np.tile([20.0, 3.0], (count, 1))
    smoothed_centers, smoothed_axes = smooth_crops(centers, axes, np.ones(count, bool), 1.0, 3.0)
    np.testing.assert_allclose(smoothed_centers, centers)
    np.testing.assert_allclose(smoothed_axes, axes)


def test_smoothing_reduces_frame_to_frame_jitter():
    rng = np.random.default_rng(1)
    count = 60
    drift = np.linspace(0, 30, count)[:, None] * [1.0, 0.5]
    centers = 100 + drift + rng.normal(0, 2.0, (count, 2))
    axes = np.array([25.0, 0.0]) + rng.normal(0, 1.0, (count, 2))
    smoothed_centers, smoothed_axes = smooth_crops(centers, axes, np.ones(count, bool), 1.0, 3.0)
    assert np.diff(smoothed_centers, axis=0).var() < 0.5 * np.diff(centers, axis=0).var()
    assert np.diff(smoothed_axes, axis=0).var() < 0.2 * np.diff(axes, axis=0).var()
    # Smoothing follows the slow motion instead of flattening it.
    assert abs(smoothed_centers[-5:, 0].mean() - smoothed_centers[:5, 0].mean()) > 20
    # Inputs are not modified in place (align reuses them).
    assert not np.allclose(centers, smoothed_centers)


def test_smoothing_skips_invalid_frames_and_does_not_cross_gaps():
    # Two runs of a constant crop at different places, separated by no-face frames holding junk:
    # any smoothing across the gap would pull the runs toward each other or toward the junk.
    valid = np.array([True] * 5 + [False] * 3 + [True] * 6)
    centers = np.where(valid[:, None], 0.0, 1e6)
    centers[8:] = 100.0
    axes = np.where(valid[:, None], 10.0, -1e6)
    axes[8:] = 30.0
    smoothed_centers, smoothed_axes = smooth_crops(centers, axes, valid, 2.0, 4.0)
    # Within a run only float rounding may change a constant; the invalid frames stay bit-exact.
    np.testing.assert_allclose(smoothed_centers[:5], 0.0, atol=1e-9)
    np.testing.assert_array_equal(smoothed_centers[5:8], 1e6)
    np.testing.assert_allclose(smoothed_centers[8:], 100.0, atol=1e-9)
    np.testing.assert_allclose(smoothed_axes[:5], 10.0, atol=1e-9)
    np.testing.assert_array_equal(smoothed_axes[5:8], -1e6)
    np.testing.assert_allclose(smoothed_axes[8:], 30.0, atol=1e-9)


def test_zero_sigma_disables_smoothing():
    rng = np.random.default_rng(2)
    centers, axes = rng.normal(size=(10, 2)), rng.normal(size=(10, 2))
    smoothed_centers, smoothed_axes = smooth_crops(centers, axes, np.ones(10, bool), 0.0, 0.0)
    np.testing.assert_array_equal(smoothed_centers, centers)
    np.testing.assert_array_equal(smoothed_axes, axes)


# ----------------------------------------------------------------------------------------------
# Landmark feature and flips


def test_landmark_feature_layout():
    size = 64
    points = np.stack([np.arange(68) * 0.5, 10 + np.arange(68) * 0.25], axis=1)
    feature = landmark_feature(points, size)
    assert feature.shape == (LANDMARK_FEATURE_DIM,) == (102,)
    assert feature.dtype == np.float32
    # Jaw (0-16) dropped, then x0, y0, x1, y1, ... of points 17..67, divided by the crop size.
    assert feature[0] == pytest.approx(17 * 0.5 / size)
    assert feature[1] == pytest.approx((10 + 17 * 0.25) / size)
    assert feature[-2] == pytest.approx(67 * 0.5 / size)
    np.testing.assert_allclose(feature.reshape(51, 2) * size, points[17:], rtol=1e-6)
    # Moving a jaw point changes nothing.
    moved = points.copy()
    moved[:17] += 7.0
    np.testing.assert_array_equal(landmark_feature(moved, size), feature)


def test_landmark_feature_of_a_centred_crop_is_in_unit_range():
    size = 64
    landmarks = placed_face(25.0, 8.0, (90.0, 70.0))
    in_crop = apply_transform(crop_transform(*crop_frame(landmarks), size), landmarks)
    feature = landmark_feature(in_crop, size)
    assert feature.min() > 0 and feature.max() < 1


def test_flip_landmarks_is_an_involution():
    rng = np.random.default_rng(3)
    points = rng.uniform(0, 64, size=(68, 2))
    once = flip_landmarks(points, 64)
    assert not np.allclose(once, points)
    np.testing.assert_allclose(flip_landmarks(once, 64), points, atol=1e-12)


def test_symmetric_face_is_its_own_mirror():
    size = 64
    face = symmetric_face() * 20 + [(size - 1) / 2, 30.0]  # mirror axis of a `size` crop
    np.testing.assert_allclose(flip_landmarks(face, size), face, atol=1e-12)


def test_flip_landmarks_matches_mirrored_pixels():
    # A dot drawn at landmark 36 (outer corner of the image-left eye) must, after np.fliplr of the
    # crop, sit where flip_landmarks puts landmark 45 (outer corner of the image-right eye).
    size = 64
    face = placed_face(18.0, 6.0, (27.3, 30.6))
    crop = render_dots(face[[36]], size, size, 1.2)
    mirrored = np.fliplr(crop)
    expected = flip_landmarks(face, size)[45]
    np.testing.assert_allclose(locate_dot(mirrored, expected, 4.0), expected, atol=0.05)


def test_flip_landmark_feature_agrees_with_flipping_landmarks():
    rng = np.random.default_rng(4)
    size = 64
    batch = rng.uniform(0, size, size=(3, 68, 2))
    features = np.stack([landmark_feature(points, size) for points in batch])
    flipped = flip_landmark_feature(features, size)
    expected = np.stack([landmark_feature(flip_landmarks(points, size), size) for points in batch])
    assert flipped.shape == features.shape
    np.testing.assert_allclose(flipped, expected, atol=1e-6)
    np.testing.assert_allclose(flip_landmark_feature(flipped, size), features, atol=1e-6)


def test_flip_matches_dlib_landmarks_on_a_mirrored_real_crop(sample_align):
    # Training flips crops horizontally and uses flip_landmark_feature for their z_lnd; if the
    # left/right partner table were wrong, the flipped feature would describe a different face
    # than the flipped pixels. Compare against what the detector actually sees.
    from pipeline.faces.face_detection import DlibLandmarkDetector
    from pipeline.runs.artifacts import open_crops, read_alignment

    status = read_alignment(sample_align).status
    crops = open_crops(sample_align).crops
    size = crops.shape[1]
    upscale = 4  # dlib's HOG finds nothing in a 64-px crop; work at 256 px and scale back
    detector = DlibLandmarkDetector(upsample=0, threshold=0.0)

    def landmarks_at_crop_scale(crop: np.ndarray) -> np.ndarray:
        big = cv2.resize(crop, (size * upscale, size * upscale), interpolation=cv2.INTER_CUBIC)
        faces = detector.detect(big)
        assert len(faces) == 1, "expected exactly one face in an aligned crop"
        return (faces[0].landmarks + 0.5) / upscale - 0.5

    errors = []
    frames = [index for index, state in enumerate(status) if state == "ok"][:: max(1, len(status) // 3)][:3]
    assert frames
    for index in frames:
        crop = np.ascontiguousarray(crops[index])
        original = landmarks_at_crop_scale(crop)
        mirrored = landmarks_at_crop_scale(np.ascontiguousarray(np.fliplr(crop)))
        errors.append(np.linalg.norm(flip_landmarks(original, size) - mirrored, axis=1))
    per_point = np.mean(errors, axis=0)
    # Detector noise at crop scale: ~0.35 px mean, ~1.5 px worst point (measured). One wrong
    # partner pair (e.g. eye corners 36/45 not swapped) puts those two points ~25 px off, which
    # the mean over 68 points alone would hide, hence the per-point bound as well.
    assert per_point.mean() < 1.0, per_point.mean()
    assert per_point.max() < 3.0, (per_point.argmax(), per_point.max())
