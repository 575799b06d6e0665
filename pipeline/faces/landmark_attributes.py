"""Expression attributes measured from a face's 68 iBUG landmarks: labels the project makes offline.

No labelled attribute data exists offline, so `fit_classifiers` (with `source: landmarks`) labels the
pipeline's own aligned faces from their landmark geometry. Two CelebA attributes can be read off the mouth:

- `Mouth_Slightly_Open`: the inner-lip gap, the mean over the three inner-lip pairs (61-67, 62-66, 63-65)
  of the upper point's height above the lower one.
- `Smiling`: in a smile the lip corners move outward and up (the `smile` expression of
  `pipeline/editing/motion.py` moves each corner 0.12 IOD out and 0.10 IOD up), so the measure adds the mouth
  width (corner 48 to corner 54) and the corners' lift: the height of their midpoint above the centre of the
  inner lips. The inner-lip centre, not the lower lip, is the reference because it sits halfway between the
  lips: opening the jaw lowers it and the corners together, so talking does not read as smiling.

Every length is divided by the inter-ocular distance (IOD, between the two eye centres) and every height is
measured along the face's own up direction (perpendicular to the eye line), so the measures do not change
with the face's size, position or in-plane rotation, and the eyes do not move with the mouth.

A continuous measure becomes a 0/1 label by :func:`split_within_groups`: 1 above the median of the same
person's faces, 0 otherwise. Mouth shape differs between people at rest (a wide mouth is not a smile), so a
fixed threshold would partly label who the person is, and the classifier fitted on identity codes would learn
that instead of the expression; within one person the only difference is the expression. The split also
gives every person both classes, so one video of one person is enough to fit a direction.
"""

from __future__ import annotations

import numpy as np

# iBUG 68-point indices (0-based).
EYE_A = slice(36, 42)  # the eye on the image's left (the subject's right)
EYE_B = slice(42, 48)
MOUTH_CORNER_A, MOUTH_CORNER_B = 48, 54
INNER_UPPER = (61, 62, 63)
INNER_LOWER = (67, 66, 65)  # below INNER_UPPER, pair by pair
INNER_LIPS = slice(60, 68)

MOUTH_OPEN = "Mouth_Slightly_Open"
SMILING = "Smiling"
LANDMARK_ATTRIBUTES = (MOUTH_OPEN, SMILING)

# What each label means, in words, for the classifier card.
LABEL_RULES = {
    MOUTH_OPEN: "mean inner-lip gap (61-67, 62-66, 63-65) / inter-ocular distance, above the person's median",
    SMILING: "(mouth width 48-54 + lift of the corners' midpoint above the inner-lip centre) / inter-ocular "
             "distance, above the person's median",
}


def _check(landmarks: np.ndarray) -> np.ndarray:
    points = np.asarray(landmarks, dtype=np.float64)
    if points.ndim != 3 or points.shape[1:] != (68, 2):
        raise ValueError(f"landmarks must be (N, 68, 2); got shape {points.shape}")
    return points


def mouth_geometry(landmarks: np.ndarray) -> dict[str, np.ndarray]:
    """Mouth measures of each face in inter-ocular distances: ``opening``, ``width`` and ``corner_lift``, each (N,).

    ``landmarks`` are (N, 68, 2) iBUG points in image coordinates (y down). ``opening`` and ``corner_lift``
    are signed heights along the face's up direction (the eye line turned by 90 degrees): a gap closed with
    overlapping lips is slightly negative, corners below the inner-lip centre give a negative lift. A face
    whose two eye centres coincide has no scale: its measures are NaN.
    """
    points = _check(landmarks)
    eye_line = points[:, EYE_B].mean(axis=1) - points[:, EYE_A].mean(axis=1)
    iod = np.linalg.norm(eye_line, axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = np.where(iod > 0, 1.0 / iod, np.nan)
    across = eye_line * scale[:, None]
    # Image y points down: turning the eye line (left to right) by -90 degrees points up the face.
    up = np.stack([across[:, 1], -across[:, 0]], axis=1)
    gaps = points[:, INNER_UPPER] - points[:, INNER_LOWER]
    opening = np.einsum("npk,nk->n", gaps, up) / len(INNER_UPPER) * scale
    width = np.linalg.norm(points[:, MOUTH_CORNER_B] - points[:, MOUTH_CORNER_A], axis=1) * scale
    corners = (points[:, MOUTH_CORNER_A] + points[:, MOUTH_CORNER_B]) / 2
    lift = np.einsum("nk,nk->n", corners - points[:, INNER_LIPS].mean(axis=1), up) * scale
    return {"opening": opening, "width": width, "corner_lift": lift}


def attribute_measures(landmarks: np.ndarray) -> dict[str, np.ndarray]:
    """The continuous measure of each of :data:`LANDMARK_ATTRIBUTES` per face, (N,) each (see the module doc)."""
    mouth = mouth_geometry(landmarks)
    return {MOUTH_OPEN: mouth["opening"], SMILING: mouth["width"] + mouth["corner_lift"]}


def split_within_groups(measure: np.ndarray, groups: np.ndarray) -> tuple[np.ndarray, dict]:
    """0/1 labels: 1 where ``measure`` is above the median of its group (one group per person); and the medians.

    ``measure`` and ``groups`` are (N,), the groups any hashable ids. Returns the (N,) int64 labels and a
    mapping group id -> median. A value equal to its median is labelled 0, so a group of identical values
    is all 0; an odd-sized group has one more 0 than 1.
    """
    values = np.asarray(measure, dtype=np.float64)
    keys = np.asarray(groups)
    if values.shape != keys.shape or values.ndim != 1:
        raise ValueError(f"measure and groups must be (N,) each; got {values.shape} and {keys.shape}")
    labels = np.zeros(len(values), dtype=np.int64)
    medians = {}
    for key in dict.fromkeys(keys.tolist()):
        rows = keys == key
        medians[key] = float(np.median(values[rows]))
        labels[rows] = values[rows] > medians[key]
    return labels, medians
