"""Alignment geometry: the crop transform, warps into and out of the crop, temporal smoothing,
the landmark feature `z_lnd` and its horizontal flip (used by training augmentation).

Render pastes edited crops back with the same matrices, so a sub-pixel error here shows up as a
visible seam or a drifting face in the final video.
"""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from PIL import Image
from scipy.ndimage import gaussian_filter1d

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
from pipeline.faces.settings import AlignParams

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


def scipy_reflect_smoothing(values: np.ndarray, sigma: float) -> np.ndarray:
    """scipy's `reflect` Gaussian smoothing along axis 0, written out: the sampled Gaussian over
    +-round(4 sigma) frames (scipy's `truncate`), normalised, with each end mirrored about its outer
    edge so the end frame repeats (d c b a | a b c d | d c b a)."""
    radius = int(4 * sigma + 0.5)
    assert len(values) >= radius, "one mirror image must cover the kernel"
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps /= taps.sum()
    padded = np.concatenate([values[:radius][::-1], values, values[-radius:][::-1]])
    return np.stack([np.convolve(padded[:, k], taps, mode="valid") for k in range(values.shape[1])], axis=1)


def reference_quads(centers: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """(..., 4, 2) quads in the reference's corner order: c-x-y, c-x+y, c+x+y, c+x-y."""
    return np.stack([centers - xs - ys, centers - xs + ys, centers + xs + ys, centers + xs - ys], axis=-2)


def test_reference_smoothing_equals_scipy_reflect_and_differs_from_nearest_at_the_ends():
    # A face drifting and turning (and zooming) over 30 frames, with landmark noise: the reference
    # smooths the centre (sigma 1) and both quad vectors (sigma 3) over all frames with scipy's
    # default edges, then builds the quad from them.
    rng = np.random.default_rng(5)
    count = 30
    frames = np.arange(count)[:, None]
    centers = 100 + frames * [2.0, -0.7] + rng.normal(0, 1.5, (count, 2))
    angle = 0.02 * frames[:, 0]
    axes = (40 + 0.5 * frames) * np.stack([np.cos(angle), np.sin(angle)], axis=1) + rng.normal(0, 0.8, (count, 2))
    ys = np.flipud(axes.T).T * [-1, 1]  # the reference's y: x turned by +90 degrees, smoothed on its own

    expected = reference_quads(
        scipy_reflect_smoothing(centers, 1.0), scipy_reflect_smoothing(axes, 3.0), scipy_reflect_smoothing(ys, 3.0)
    )
    # The written-out smoothing is scipy's default mode, the call the reference makes.
    np.testing.assert_allclose(expected[:, 0], (gaussian_filter1d(centers, 1.0, axis=0)
                                                - gaussian_filter1d(axes, 3.0, axis=0)
                                                - gaussian_filter1d(ys, 3.0, axis=0)), atol=1e-9)

    def project_quads(edges: str) -> np.ndarray:
        smoothed_centers, smoothed_axes = smooth_crops(centers, axes, np.ones(count, bool), 1.0, 3.0, edges)
        return reference_quads(smoothed_centers, smoothed_axes, alignment.perpendicular(smoothed_axes))

    np.testing.assert_allclose(project_quads("reflect"), expected, atol=1e-9)
    # `nearest` (the default) agrees away from the ends, where neither kernel reaches past the
    # clip (12 frames for sigma 3), and moves the end quads by more than half a pixel.
    nearest = project_quads("nearest")
    np.testing.assert_allclose(nearest[12:-12], expected[12:-12], atol=1e-9)
    shift = np.abs(nearest - expected).max(axis=(1, 2))
    assert shift[0] > 0.5 and shift[-1] > 0.5, shift


def frame_pixel_positions(matrix: np.ndarray, size: int) -> np.ndarray:
    """(size, size, 2) frame coordinates (x, y) of each crop pixel centre."""
    ys, xs = np.mgrid[0:size, 0:size]
    centres = np.stack([xs.ravel(), ys.ravel()], axis=1).astype(np.float64)
    return apply_transform(invert_transform(matrix), centres).reshape(size, size, 2)


@pytest.mark.parametrize("warp_size", [None, 256])
def test_crop_is_black_outside_the_frame_with_outside_black(warp_size):
    width, height, size = 120, 100, 64
    frame = np.full((height, width, 3), 200, np.uint8)
    landmarks = placed_face(20.0, 12.0, (16.0, 22.0))  # near the top-left corner: the quad leaves the frame
    matrix = crop_transform(*crop_frame(landmarks), size)
    where = frame_pixel_positions(matrix, size)
    # Bilinear sampling mixes frame and fill within a pixel of the frame's edge, and the PIL path's
    # final resize within one more crop pixel: only pixels clear of both are pure.
    margin = 1.0 + 2.0 * np.sqrt(1 / abs(np.linalg.det(matrix[:, :2])))
    beyond = (where < -0.5 - margin) | (where > np.array([width, height]) - 0.5 + margin)
    within = (where > -0.5 + margin) & (where < np.array([width, height]) - 0.5 - margin)
    outside, inside = beyond.any(axis=2), within.all(axis=2)
    assert outside.mean() > 0.1 and inside.mean() > 0.3  # the case really straddles the edge

    black = warp_to_crop(frame, matrix, size, outside="black", warp_size=warp_size)
    assert black.shape == (size, size, 3) and black.dtype == np.uint8
    assert black[outside].max() == 0
    assert black[inside].min() == black[inside].max() == 200
    # The default mirrors the frame: nothing is black.
    reflected = warp_to_crop(frame, matrix, size, outside="reflect", warp_size=warp_size)
    assert reflected.min() == reflected.max() == 200


def test_reflected_border_is_the_same_through_either_warp():
    # `outside: reflect` with `warp_size` pads the frame for PIL's warp; the padding must mirror the
    # frame as OpenCV's BORDER_REFLECT_101 does. OpenCV interpolates with 1/32-px weights and PIL
    # exactly, so on this smooth frame (under 4 levels per pixel) they agree to a level.
    width, height, size = 120, 100, 64
    ys, xs = np.mgrid[0:height, 0:width]
    gray = 128 + 60 * np.sin(xs / 9.0) * np.cos(ys / 13.0) + 0.5 * xs - 0.3 * ys
    frame = np.repeat(np.clip(np.round(gray), 0, 255).astype(np.uint8)[..., None], 3, axis=2)
    matrix = crop_transform(*crop_frame(placed_face(20.0, -15.0, (14.0, 80.0))), size)
    opencv = warp_to_crop(frame, matrix, size).astype(int)
    pil = warp_to_crop(frame, matrix, size, warp_size=size).astype(int)
    assert np.abs(pil - opencv).max() <= 1


def reference_warp(frame: np.ndarray, quad: np.ndarray, warp_size: int) -> np.ndarray:
    """crop_image(frame, warp_size, quad) of the reference (editing_classifier.py) step by step: an
    integer Lanczos shrink of very large faces, a crop to the quad's box plus a border, then PIL's
    quad warp (black outside the frame)."""
    quad = np.array(quad, dtype=np.float64)
    image = Image.fromarray(frame)
    diagonal = np.hypot(*(quad[3] - quad[1]))
    shrink = int(np.floor(diagonal / warp_size * 0.5))
    if shrink > 1:
        image = image.resize((int(np.rint(image.width / shrink)), int(np.rint(image.height / shrink))),
                             Image.Resampling.LANCZOS)
        quad /= shrink
        diagonal /= shrink
    border = max(int(np.rint(diagonal * 0.1)), 3)
    left, top = np.maximum(np.floor(quad.min(axis=0)).astype(int) - border, 0)
    right, bottom = np.minimum(np.ceil(quad.max(axis=0)).astype(int) + border, image.size)
    if right - left < image.width or bottom - top < image.height:
        image = image.crop((left, top, right, bottom))
        quad -= [left, top]
    warped = image.transform((warp_size, warp_size), Image.Transform.QUAD, (quad + 0.5).flatten(),
                             Image.Resampling.BILINEAR)
    return np.asarray(warped)


def reference_load(warped: np.ndarray, size: int) -> np.ndarray:
    """The reference's crop as its model sees it: `.save(... .jpg)` with Pillow's defaults, then
    ImageDataset's loading (RGB, torchvision's Resize to `size`)."""
    from torchvision import transforms

    stored = io.BytesIO()
    Image.fromarray(warped).save(stored, format="JPEG")
    stored.seek(0)
    with Image.open(stored) as image:
        return np.asarray(transforms.Resize(size)(image.convert("RGB")))


@pytest.mark.parametrize(
    ("warp_size", "size", "center", "half_side", "angle"),
    [
        # The reference's sizes, the quad crossing the frame's left and bottom edges.
        (1024, 256, (61.7, 203.4), 83.3, 0.31),
        # A quad diagonal over 4x the warp size: the reference's integer shrink (here by 2).
        (64, 32, (181.2, 139.6), 107.9, -0.12),
    ],
)
def test_reference_settings_crop_as_the_reference_does(warp_size, size, center, half_side, angle):
    rng = np.random.default_rng(6)
    width, height = 360, 280
    frame = cv2.GaussianBlur(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), (0, 0), 1.0)
    center = np.array(center)
    x = half_side * np.array([np.cos(angle), np.sin(angle)])
    y = np.flipud(x) * [-1, 1]
    quad = reference_quads(center, x, y)
    reference_warped = reference_warp(frame, quad, warp_size)
    expected = reference_load(reference_warped, size).astype(int)

    # The project derives the quad from the frame-to-crop matrix it stores: ~1e-13 px from the
    # reference's c +- x +- y. PIL rounds each bilinear sample to an integer, so a sample on an exact
    # rounding tie can come out one level apart; measured: none here (the crops are identical),
    # about 2 in 1e5 warp pixels with round-number coordinates. JPEG can spread such a one-level
    # change over its 8x8 block and the reduction averages it down, hence up to 2 levels, almost all
    # pixels equal. Measured on these cases, no JPEG round trip, quality 90, OpenCV's warp or a
    # quarter-pixel shift differ by 0.8 to 5 levels on average, with maxima of 8 or more.
    warped = warp_to_crop(frame, crop_transform(center, x, warp_size), warp_size, outside="black",
                          warp_size=warp_size)
    assert np.abs(warped.astype(int) - reference_warped).max() <= 1
    assert np.mean(warped != reference_warped) < 1e-3

    crop = warp_to_crop(frame, crop_transform(center, x, size), size, outside="black", warp_size=warp_size,
                        jpeg_quality=75).astype(int)
    assert crop.shape == expected.shape == (size, size, 3)
    assert np.abs(crop - expected).max() <= 2
    assert np.abs(crop - expected).mean() < 0.05
    assert (expected == 0).all(axis=2).any() == (warp_size == 1024)  # the first case has black corners


def test_default_settings_keep_the_project_crop():
    # Results made before these settings existed must not change: nearest smoothing edges, an
    # OpenCV warp straight to the crop size with mirrored borders, no JPEG.
    params = AlignParams()
    assert (params.smooth_edges, params.outside, params.warp_size, params.jpeg_quality) == (
        "nearest", "reflect", None, None)
    rng = np.random.default_rng(7)
    frame = rng.integers(0, 256, (100, 120, 3), dtype=np.uint8)
    matrix = crop_transform(*crop_frame(placed_face(20.0, 8.0, (20.0, 50.0))), 64)
    expected = cv2.warpAffine(frame, matrix, (64, 64), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    np.testing.assert_array_equal(warp_to_crop(frame, matrix, 64), expected)


def test_align_stage_applies_the_reference_crop_settings(sample_extract, sample_align, tmp_path):
    # The settings reach the stage: transforms smoothed with reflected edges over the whole clip,
    # crops warped through PIL at the warp size with a JPEG round trip (a 128 px warp keeps it quick).
    from pipeline.core.tables import column_matrix, read_table
    from pipeline.runs.artifacts import ALIGN_TABLE_FILE, FRAMES_FILE, open_crops, read_alignment
    from pipeline.video.video_io import read_lossless_frames
    from stages.align import align_video

    size = open_crops(sample_align).crops.shape[1]
    params = AlignParams(smooth_edges="reflect", outside="black", warp_size=128, jpeg_quality=75)
    align_video(sample_extract, tmp_path / "align", params, size, progress=False)

    table, _ = read_table(tmp_path / "align" / ALIGN_TABLE_FILE)
    landmarks = column_matrix(table, "landmarks").reshape(-1, 68, 2)
    result = read_alignment(tmp_path / "align")
    assert "no_face" not in result.status  # one run of frames (some interpolated): smoothed as a whole
    centers, axes = map(np.array, zip(*(crop_frame(points) for points in landmarks)))
    smoothed_centers, smoothed_axes = gaussian_filter1d(centers, 1.0, axis=0), gaussian_filter1d(axes, 3.0, axis=0)
    expected = np.stack([crop_transform(c, x, size) for c, x in zip(smoothed_centers, smoothed_axes)])
    np.testing.assert_allclose(result.transforms, expected, atol=1e-9)
    assert not np.allclose(result.transforms, read_alignment(sample_align).transforms, atol=1e-3)

    crops = open_crops(tmp_path / "align").crops
    for index, frame in enumerate(read_lossless_frames(sample_extract / FRAMES_FILE)):
        expected_crop = warp_to_crop(frame, result.transforms[index], size, "black", 128, 75)
        np.testing.assert_array_equal(crops[index], expected_crop)
    assert not np.array_equal(crops, open_crops(sample_align).crops)


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
