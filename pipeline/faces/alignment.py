"""FFHQ-style face alignment: crop geometry from 68 landmarks, temporal smoothing, warps, masks.

Coordinates are continuous pixel coordinates with pixel centres at integers (OpenCV's
convention), so the same affine matrix maps landmarks, crops and paste-backs consistently.
"""

from __future__ import annotations

import io
from typing import Literal

import cv2
import numpy as np
from PIL import Image

JAW = slice(0, 17)
BROWS = slice(17, 27)
# Left/right partner of each of the 68 iBUG points; self for points on the symmetry axis.
MIRROR_68 = np.array(
    list(range(16, -1, -1))  # jaw
    + list(range(26, 16, -1))  # brows
    + [27, 28, 29, 30]  # nose bridge
    + [35, 34, 33, 32, 31]  # nostrils
    + [45, 44, 43, 42, 47, 46]  # left eye <- right eye
    + [39, 38, 37, 36, 41, 40]  # right eye <- left eye
    + [54, 53, 52, 51, 50, 49, 48, 59, 58, 57, 56, 55]  # outer lip
    + [64, 63, 62, 61, 60, 67, 66, 65]  # inner lip
)
LANDMARK_FEATURE_DIM = 102


def crop_frame(landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """FFHQ crop of one face: centre `c` and half-side vector `x` (the crop's horizontal axis).

    The quad is the square `c +- x +- y` with `y` = `x` rotated by 90 degrees; its side grows
    with the larger of the eye distance and the eye-to-mouth distance, as in FFHQ.
    """
    points = np.asarray(landmarks, dtype=np.float64)
    eye_left = points[36:42].mean(axis=0)
    eye_right = points[42:48].mean(axis=0)
    eye_avg = (eye_left + eye_right) / 2
    eye_to_eye = eye_right - eye_left
    mouth_avg = (points[48] + points[54]) / 2
    eye_to_mouth = mouth_avg - eye_avg
    x = eye_to_eye - np.array([-eye_to_mouth[1], eye_to_mouth[0]])
    x /= np.hypot(*x)
    x *= max(np.hypot(*eye_to_eye) * 2.0, np.hypot(*eye_to_mouth) * 1.8)
    center = eye_avg + eye_to_mouth * 0.1
    return center, x


def perpendicular(x: np.ndarray) -> np.ndarray:
    """The crop's vertical axis: `x` rotated by +90 degrees (image y points down)."""
    x = np.asarray(x)
    return np.stack([-x[..., 1], x[..., 0]], axis=-1)


def smooth_crops(
    centers: np.ndarray,
    axes: np.ndarray,
    valid: np.ndarray,
    center_sigma: float,
    axis_sigma: float,
    edges: Literal["nearest", "reflect"] = "nearest",
) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian-smooth crop centres and axes over time within each run of valid frames.

    Without it the crop follows landmark noise and the aligned face jitters (STIT and the
    reference smooth the centre with sigma 1 and the axis vectors with sigma 3). `edges` is
    scipy's boundary mode at the ends of each run. Invalid frames are unchanged.
    """
    # scipy.ndimage is imported here: it takes a noticeable part of a second, which commands that only read
    # aligned crops (an edit, a preview) would pay for nothing.
    from scipy.ndimage import gaussian_filter1d

    centers = np.array(centers, dtype=np.float64)
    axes = np.array(axes, dtype=np.float64)
    for start, stop in _runs(np.asarray(valid, dtype=bool)):
        if center_sigma > 0:
            centers[start:stop] = gaussian_filter1d(centers[start:stop], center_sigma, axis=0, mode=edges)
        if axis_sigma > 0:
            axes[start:stop] = gaussian_filter1d(axes[start:stop], axis_sigma, axis=0, mode=edges)
    return centers, axes


def _runs(valid: np.ndarray) -> list[tuple[int, int]]:
    runs, start = [], None
    for index, flag in enumerate(valid):
        if flag and start is None:
            start = index
        elif not flag and start is not None:
            runs.append((start, index))
            start = None
    if start is not None:
        runs.append((start, len(valid)))
    return runs


def crop_transform(center: np.ndarray, x: np.ndarray, size: int) -> np.ndarray:
    """2x3 affine matrix mapping frame coordinates to crop coordinates of a `size` crop.

    Quad corners map to the crop corners: `c - x - y` -> (-0.5, -0.5) and `c + x + y` ->
    (size - 0.5, size - 0.5), the outer edges of the corner pixels.
    """
    y = perpendicular(x)
    half = size / 2
    rows = np.stack([x / np.dot(x, x), y / np.dot(y, y)]) * half
    offset = half - 0.5 - rows @ np.asarray(center, dtype=np.float64)
    return np.concatenate([rows, offset[:, None]], axis=1)


def apply_transform(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Map (N, 2) points through a 2x3 affine matrix."""
    points = np.asarray(points, dtype=np.float64)
    return points @ matrix[:, :2].T + matrix[:, 2]


def invert_transform(matrix: np.ndarray) -> np.ndarray:
    """Inverse of a 2x3 affine matrix."""
    return cv2.invertAffineTransform(np.asarray(matrix, dtype=np.float64))


def warp_to_crop(
    frame: np.ndarray,
    matrix: np.ndarray,
    size: int,
    outside: Literal["reflect", "black"] = "reflect",
    warp_size: int | None = None,
    jpeg_quality: int | None = None,
) -> np.ndarray:
    """Cut the `size` px aligned crop out of an RGB uint8 frame.

    `outside` fills what lies outside the frame: mirrored frame (as FFHQ pads) or black.
    Without `warp_size`, OpenCV samples the crop directly at `size`. With it, the quad is
    warped to `warp_size` px by PIL's quad transform and resized to `size` by PIL's bilinear
    filter, the reference's crop_image() followed by its loader's resize. `jpeg_quality`
    passes the crop through Pillow's JPEG codec first (at `warp_size` when given), as the
    reference's crops are stored.
    """
    if warp_size is None:
        crop = _opencv_warp(frame, matrix, size, outside)
    else:
        crop = _quad_warp(frame, matrix, size, warp_size, outside)
    if jpeg_quality is not None:
        crop = _jpeg_round_trip(crop, jpeg_quality)
    if crop.shape[0] != size:
        crop = np.asarray(Image.fromarray(crop).resize((size, size), Image.Resampling.BILINEAR))
    return crop


def _opencv_warp(frame: np.ndarray, matrix: np.ndarray, size: int, outside: str) -> np.ndarray:
    # When the crop shrinks the face by more than 2x the frame is first reduced with area
    # averaging, since bilinear sampling alone aliases.
    scale = float(np.sqrt(abs(np.linalg.det(matrix[:, :2]))))
    shrink = int(np.floor(1 / scale)) if scale > 0 else 1
    if shrink >= 2:
        height, width = frame.shape[:2]
        small = cv2.resize(
            frame, (max(1, round(width / shrink)), max(1, round(height / shrink))), interpolation=cv2.INTER_AREA
        )
        # Coordinates in the reduced frame: p_small = (p + 0.5) * s - 0.5 with s = small/full.
        sx, sy = small.shape[1] / width, small.shape[0] / height
        to_small = np.array([[sx, 0, 0.5 * sx - 0.5], [0, sy, 0.5 * sy - 0.5], [0, 0, 1]])
        matrix = matrix @ np.linalg.inv(to_small)
        frame = small
    border = cv2.BORDER_REFLECT_101 if outside == "reflect" else cv2.BORDER_CONSTANT
    return cv2.warpAffine(frame, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=border, borderValue=0)


def _quad_warp(frame: np.ndarray, matrix: np.ndarray, size: int, warp_size: int, outside: str) -> np.ndarray:
    # The quad's corners (top-left, bottom-left, bottom-right, top-right, PIL's order) are the
    # crop's outer corners mapped back into the frame.
    edge = size - 0.5
    corners = np.array([[-0.5, -0.5], [-0.5, edge], [edge, edge], [edge, -0.5]])
    quad = apply_transform(invert_transform(matrix), corners)
    image = Image.fromarray(np.ascontiguousarray(frame))
    # The reference first shrinks the frame by an integer factor (Lanczos) once the quad's diagonal
    # reaches 4x the warp size, and divides the quad by that factor, a scaling that ignores the
    # half-pixel offset of pixel centres (a shift under half a pixel of the shrunk frame, under
    # 0.4 px of the warp-size crop); kept to match its crops.
    shrink = int(np.floor(np.hypot(*(quad[3] - quad[1])) / warp_size * 0.5))
    if shrink > 1:
        width, height = image.size
        image = image.resize((round(width / shrink), round(height / shrink)), Image.Resampling.LANCZOS)
        quad = quad / shrink
    if outside == "reflect":
        image, quad = _reflect_pad(np.asarray(image), quad)
    # PIL samples pixel centres at +0.5 (OpenCV's at integers) and fills outside the image with black.
    data = (quad + 0.5).ravel().tolist()
    return np.asarray(image.transform((warp_size, warp_size), Image.Transform.QUAD, data, Image.Resampling.BILINEAR))


def _reflect_pad(frame: np.ndarray, quad: np.ndarray) -> tuple[Image.Image, np.ndarray]:
    """Extend `frame` by mirroring (OpenCV's BORDER_REFLECT_101) until it covers `quad`, plus
    one pixel for the bilinear neighbours; returns the image and the quad in its coordinates."""
    height, width = frame.shape[:2]
    low = np.floor(quad.min(axis=0)).astype(int) - 1
    high = np.ceil(quad.max(axis=0)).astype(int) + 2
    left, top = max(0, -low[0]), max(0, -low[1])
    right, bottom = max(0, high[0] - width), max(0, high[1] - height)
    padded = np.pad(frame, ((top, bottom), (left, right), (0, 0)), mode="reflect")
    return Image.fromarray(padded), quad + [left, top]


def _jpeg_round_trip(image: np.ndarray, quality: int) -> np.ndarray:
    # Pillow's default chroma subsampling (4:2:0), as the reference's plain `save(... .jpg)`.
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return np.asarray(decoded.convert("RGB"))


def warp_to_frame(crop: np.ndarray, matrix: np.ndarray, width: int, height: int) -> np.ndarray:
    """Map a crop (image or mask) back into frame coordinates; outside the crop is zero."""
    return cv2.warpAffine(
        crop,
        np.asarray(matrix, dtype=np.float64),
        (width, height),
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=0,
    )


def face_mask(crop_landmarks: np.ndarray, size: int, feather: float) -> np.ndarray:
    """Feathered face mask (uint8, 0..255) from crop landmarks: jaw line plus a forehead.

    Landmarks stop at the brows, so the brows are lifted by a third of the brow-to-chin
    height to cover the forehead. `feather` is the blur sigma as a fraction of the crop size.
    """
    points = np.asarray(crop_landmarks, dtype=np.float64)
    brows = points[BROWS]
    chin = points[8]
    lift = (chin - brows.mean(axis=0)) / 3
    outline = np.concatenate([points[JAW], brows - lift])
    hull = cv2.convexHull(np.round(outline).astype(np.int32))
    mask = np.zeros((size, size), dtype=np.uint8)
    cv2.fillConvexPoly(mask, hull, 255, lineType=cv2.LINE_AA)
    return feather_mask(mask, feather)


def feather_mask(mask: np.ndarray, feather: float) -> np.ndarray:
    """A uint8 (0..255) mask blurred with a Gaussian of sigma `feather` x its size (unchanged if 0)."""
    sigma = feather * mask.shape[0]
    return cv2.GaussianBlur(mask, (0, 0), sigmaX=sigma) if sigma > 0 else mask


def landmark_feature(crop_landmarks: np.ndarray, size: int) -> np.ndarray:
    """`z_lnd`: crop landmarks scaled to [0, 1], jaw (points 0-16) dropped; (x0, y0, x1, ...)."""
    points = np.asarray(crop_landmarks, dtype=np.float32)
    return (points[17:] / size).reshape(-1)


def flip_landmarks(crop_landmarks: np.ndarray, size: int) -> np.ndarray:
    """Landmarks of the horizontally mirrored crop: mirror x and swap left/right partners."""
    points = np.asarray(crop_landmarks, dtype=np.float64).copy()
    points[:, 0] = size - 1 - points[:, 0]
    return points[MIRROR_68]


def flip_landmark_feature(features: np.ndarray, size: int) -> np.ndarray:
    """`z_lnd` of the horizontally mirrored crop, for (..., 102) features."""
    features = np.asarray(features)
    points = features.reshape(*features.shape[:-1], 51, 2).copy()
    points[..., 0] = (size - 1) / size - points[..., 0]
    # Drop the jaw from the 68-point permutation: non-jaw points map among themselves.
    permutation = MIRROR_68[17:] - 17
    return points[..., permutation, :].reshape(features.shape)
