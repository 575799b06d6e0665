"""Follow one face through a video and fill short detection gaps."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.faces.face_detection import FaceDetection

OK, INTERPOLATED, NO_FACE = "ok", "interpolated", "no_face"


@dataclass(frozen=True)
class FaceTrack:
    """Per-frame landmarks (N, 68, 2; NaN where no face), scores (NaN unless detected), status."""

    landmarks: np.ndarray
    scores: np.ndarray
    status: list[str]

    @property
    def valid(self) -> np.ndarray:
        """Frames with landmarks (ok or interpolated)."""
        return np.array([state != NO_FACE for state in self.status])


def _pick_first(detections: list[FaceDetection], face_index: int) -> FaceDetection:
    return sorted(detections, key=lambda face: face.area, reverse=True)[face_index]


def _nearest(detections: list[FaceDetection], previous: FaceDetection) -> FaceDetection | None:
    # A face further than one box size from the last position is someone else, not a move.
    size = max(previous.box[2] - previous.box[0], previous.box[3] - previous.box[1], 1.0)
    distances = [np.linalg.norm(face.center - previous.center) for face in detections]
    best = int(np.argmin(distances))
    return detections[best] if distances[best] <= size else None


def track_face(per_frame: list[list[FaceDetection]], face_index: int = 0, max_gap: int = 5) -> FaceTrack:
    """Choose one face and follow it; interpolate gaps of at most `max_gap` frames.

    The face is the `face_index`-th largest at the first frame with more than `face_index`
    faces, then the detection nearest to its last position. Gaps between two detections are
    interpolated linearly; short gaps at the start or end hold the nearest detection; longer
    gaps are `no_face`.
    """
    count = len(per_frame)
    landmarks = np.full((count, 68, 2), np.nan)
    scores = np.full(count, np.nan)
    status = [NO_FACE] * count
    previous: FaceDetection | None = None
    for index, detections in enumerate(per_frame):
        if not detections:
            continue
        if previous is None:
            if len(detections) <= face_index:
                continue
            chosen = _pick_first(detections, face_index)
        else:
            chosen = _nearest(detections, previous)
            if chosen is None:
                continue
        previous = chosen
        landmarks[index] = chosen.landmarks
        scores[index] = chosen.score
        status[index] = OK
    fill_gaps(landmarks, status, max_gap)
    return FaceTrack(landmarks=landmarks, scores=scores, status=status)


def fill_gaps(landmarks: np.ndarray, status: list[str], max_gap: int) -> None:
    """Interpolate (in place) detection gaps of at most `max_gap` frames; hold short gaps at the ends."""
    detected = [index for index, state in enumerate(status) if state == OK]
    if not detected:
        return
    count = len(status)
    first, last = detected[0], detected[-1]
    if 0 < first <= max_gap:
        landmarks[:first] = landmarks[first]
        status[:first] = [INTERPOLATED] * first
    if 0 < count - 1 - last <= max_gap:
        landmarks[last + 1 :] = landmarks[last]
        status[last + 1 :] = [INTERPOLATED] * (count - 1 - last)
    for before, after in zip(detected, detected[1:]):
        gap = after - before - 1
        if 0 < gap <= max_gap:
            for index in range(before + 1, after):
                weight = (index - before) / (after - before)
                landmarks[index] = (1 - weight) * landmarks[before] + weight * landmarks[after]
                status[index] = INTERPOLATED
