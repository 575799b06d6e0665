"""Motion codes as edits: drive a video with another video's landmarks, or move named expressions.

Everything here works on the 102-number landmark feature `z_lnd` (51 points, jaw dropped, (x, y)
interleaved; see `pipeline.faces.alignment.landmark_feature`), whatever backend produced it: directions are
built from the video's own landmark geometry, in the feature's own units.

Expressions. Each named expression is a fixed displacement of the 51 points, built once per video
from its mean face shape, in the face's own frame (x along the eye line, y perpendicular to it,
pointing down the face) and in units of the inter-ocular distance (IOD, between the eye centres).
Strength 1 is the typical full range of the expression, -1 its opposite:

- `mouth_open`: the lower lip down by 0.40 IOD (most at its centre, none at the corners), the upper
  lip up by 0.05 IOD.
- `smile`: the lip corners 0.12 IOD outward and 0.10 IOD up, fading toward the lip centre.
- `eyes_closed`: the upper eyelids down by four fifths of the mean face's own eye opening and the
  lower lids up by the last fifth: at strength 1 the lids meet.
- `brows_up`: the brows up by 0.20 IOD.

Driving. A driver's frames are matched to the target's by timestamp (`match_by_time`); `relative`
mode moves the target's first face frame by the driver's change from its first face frame, scaled
by the ratio of the two faces' IODs, so the target keeps its face shape; `absolute` takes the
driver's codes as they are.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

POINTS = 51  # 68 iBUG points without the jaw (0-16): feature point i is iBUG point i + 17
_OFFSET = 17


def _ibug(*indices: int) -> np.ndarray:
    """Feature-point indices of iBUG point numbers."""
    return np.array(indices) - _OFFSET


BROWS = _ibug(*range(17, 27))
RIGHT_EYE = _ibug(*range(36, 42))  # subject's right eye: the one on the image's left
LEFT_EYE = _ibug(*range(42, 48))
# Upper-lid point -> the lower-lid point facing it.
EYELIDS = (_ibug(37, 38, 43, 44), _ibug(41, 40, 47, 46))
MOUTH_CORNERS = _ibug(48, 54)
LIPS = _ibug(*range(48, 68))
UPPER_LIP = _ibug(49, 50, 51, 52, 53, 61, 62, 63)
LOWER_LIP = _ibug(55, 56, 57, 58, 59, 65, 66, 67)

# Typical ranges (strength 1), in inter-ocular distances.
MOUTH_OPEN_LOWER, MOUTH_OPEN_UPPER = 0.40, 0.05
SMILE_OUT, SMILE_UP = 0.12, 0.10
EYES_CLOSED_LOWER_SHARE = 0.2
BROWS_UP = 0.20


def as_points(features: np.ndarray) -> np.ndarray:
    """(..., 102) features -> (..., 51, 2) points."""
    features = np.asarray(features)
    return features.reshape(*features.shape[:-1], POINTS, 2)


def face_frame(shape: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Unit axes (x along the eye line, y down the face) and the inter-ocular distance of a (51, 2) shape."""
    right, left = shape[RIGHT_EYE].mean(axis=0), shape[LEFT_EYE].mean(axis=0)
    iod = float(np.hypot(*(left - right)))
    if not np.isfinite(iod) or iod <= 0:
        raise ValueError("the face shape has no eye distance")
    x = (left - right) / iod
    return x, np.array([-x[1], x[0]]), iod


def _mouth_coordinates(shape: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, float]:
    """Each point's offset along the eye line from the mouth centre, and the mouth's half width."""
    left, right = shape[MOUTH_CORNERS[1]], shape[MOUTH_CORNERS[0]]
    centre = (left + right) / 2
    half_width = abs(float((left - right) @ x)) / 2
    return (shape - centre) @ x, max(half_width, 1e-6)


def _mouth_open(shape: np.ndarray) -> np.ndarray:
    x, y, iod = face_frame(shape)
    along, half_width = _mouth_coordinates(shape, x)
    # Lips open most at their centre and not at all at the corners, as a jaw drop does.
    weight = np.clip(1 - (along / half_width) ** 2, 0, 1)
    move = np.zeros_like(shape)
    move[LOWER_LIP] = np.outer(weight[LOWER_LIP] * MOUTH_OPEN_LOWER * iod, y)
    move[UPPER_LIP] = np.outer(-weight[UPPER_LIP] * MOUTH_OPEN_UPPER * iod, y)
    return move


def _smile(shape: np.ndarray) -> np.ndarray:
    x, y, iod = face_frame(shape)
    along, half_width = _mouth_coordinates(shape, x)
    # The corners move most; the lip centre stays, so the lips curve.
    weight = np.clip(np.abs(along) / half_width, 0, 1) ** 2
    move = np.zeros_like(shape)
    outward = np.sign(along[LIPS])[:, None] * x * SMILE_OUT - y * SMILE_UP
    move[LIPS] = weight[LIPS, None] * outward * iod
    return move


def _eyes_closed(shape: np.ndarray) -> np.ndarray:
    _, y, _ = face_frame(shape)
    upper, lower = EYELIDS
    # The eye's own opening sets the range: at strength 1 the lids meet.
    opening = ((shape[lower] - shape[upper]) @ y)[:, None] * y
    move = np.zeros_like(shape)
    move[upper] = opening * (1 - EYES_CLOSED_LOWER_SHARE)
    move[lower] = -opening * EYES_CLOSED_LOWER_SHARE
    return move


def _brows_up(shape: np.ndarray) -> np.ndarray:
    _, y, iod = face_frame(shape)
    move = np.zeros_like(shape)
    move[BROWS] = -y * BROWS_UP * iod
    return move


EXPRESSIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "mouth_open": _mouth_open,
    "smile": _smile,
    "eyes_closed": _eyes_closed,
    "brows_up": _brows_up,
}


def expression_direction(name: str, reference: np.ndarray) -> np.ndarray:
    """The (102,) displacement of expression `name` at strength 1 for a face whose mean feature is `reference`."""
    if name not in EXPRESSIONS:
        raise KeyError(f"unknown expression {name!r} (known: {', '.join(EXPRESSIONS)})")
    return EXPRESSIONS[name](as_points(np.asarray(reference, dtype=np.float64))).reshape(-1)


Curve = float | Sequence[Sequence[float]]


def curve_values(curve: Curve, times: np.ndarray) -> np.ndarray:
    """Strength at each time: a constant, or keyframes [[seconds, strength], ...] linearly interpolated.

    Before the first keyframe and after the last the curve holds its end values.
    """
    times = np.asarray(times, dtype=np.float64)
    if isinstance(curve, int | float):
        return np.full(len(times), float(curve))
    keys = np.asarray(curve, dtype=np.float64)
    return np.interp(times, keys[:, 0], keys[:, 1])


def expression_codes(
    codes: np.ndarray, valid: np.ndarray, times: np.ndarray, expressions: dict[str, Curve]
) -> np.ndarray:
    """Per-frame codes moved by the named expressions (strength curves over `times`, in seconds).

    The directions come from the mean code of the `valid` (face) frames; other frames are left as they are.
    """
    codes = np.asarray(codes, dtype=np.float64)
    valid = np.asarray(valid, dtype=bool)
    reference = codes[valid].mean(axis=0)
    moved = codes.copy()
    for name, curve in expressions.items():
        moved[valid] += np.outer(curve_values(curve, times)[valid], expression_direction(name, reference))
    return moved.astype(np.float32)


# Timestamps closer than this (seconds) count as equal: frame times are rounded from integer pts.
TIME_TOLERANCE = 1e-4


def match_by_time(target_times: np.ndarray, driver_times: np.ndarray, shorter: str = "hold") -> np.ndarray:
    """For each target frame, the driver frame on screen at the same time since each video's start.

    The driver frame shown at time t is the last one whose timestamp is at or before t. Past the
    driver's end, `hold` keeps its last frame and `loop` starts it again (its period is its last
    timestamp plus one median frame step).
    """
    target = np.asarray(target_times, dtype=np.float64)
    driver = np.asarray(driver_times, dtype=np.float64)
    if not len(driver):
        raise ValueError("the driver has no frames")
    if shorter not in ("hold", "loop"):
        raise ValueError(f"unknown shorter-driver policy {shorter!r}")
    target = target - target[0] + TIME_TOLERANCE
    driver = driver - driver[0]
    if shorter == "loop" and len(driver) > 1:
        period = driver[-1] + float(np.median(np.diff(driver)))
        target = np.mod(target, period)
    return np.clip(np.searchsorted(driver, target, side="right") - 1, 0, len(driver) - 1)


def fill_missing(codes: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Codes where each invalid (faceless) frame takes the code of the nearest valid frame in time."""
    valid = np.asarray(valid, dtype=bool)
    if not valid.any():
        raise ValueError("no frame has a face")
    present = np.flatnonzero(valid)
    nearest = present[np.abs(np.arange(len(valid))[:, None] - present[None, :]).argmin(axis=1)]
    return np.asarray(codes)[nearest]


def driven_codes(
    target_codes: np.ndarray,
    target_valid: np.ndarray,
    driver_codes: np.ndarray,
    driver_valid: np.ndarray,
    matched: np.ndarray,
    mode: str = "relative",
) -> np.ndarray:
    """The target's per-frame codes driven by the driver's frames `matched` (one driver index per target frame).

    `relative`: the target's first face frame plus the driver's change from its first face frame,
    scaled by the ratio of the faces' inter-ocular distances; `absolute`: the driver's codes.
    """
    driver = fill_missing(driver_codes, driver_valid).astype(np.float64)
    if mode == "absolute":
        return driver[matched].astype(np.float32)
    if mode != "relative":
        raise ValueError(f"unknown motion mode {mode!r}")
    target = np.asarray(target_codes, dtype=np.float64)
    target_valid, driver_valid = np.asarray(target_valid, dtype=bool), np.asarray(driver_valid, dtype=bool)
    anchor = target[np.flatnonzero(target_valid)[0]]
    driver_anchor = driver[np.flatnonzero(driver_valid)[0]]
    scale = (face_frame(as_points(target[target_valid].mean(axis=0)))[2]
             / face_frame(as_points(driver[driver_valid].mean(axis=0)))[2])
    return (anchor + scale * (driver[matched] - driver_anchor)).astype(np.float32)


def feature_to_crop_fraction(features: np.ndarray, backend: str) -> np.ndarray:
    """(..., 102) landmark features -> (..., 51, 2) points as fractions of the crop size.

    `dlib` features already are crop fractions; `mobilenet` ones live in the centre 224 of a 256 crop.
    """
    points = as_points(np.asarray(features, dtype=np.float64))
    if backend == "mobilenet":
        return (224 * points + 16) / 256
    return points


def landmark_errors(detected: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Per-frame mean point distance between (N, 51, 2) point sets."""
    return np.linalg.norm(np.asarray(detected) - np.asarray(target), axis=-1).mean(axis=-1)
