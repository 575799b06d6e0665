"""How well decoded faces follow the motion codes they were decoded with.

Landmarks are detected again on the decoded crops with the align stage's detector and compared
with the landmarks the codes ask for; the mean point distance is a fraction of the crop size. The
same figure for the unedited reconstruction is the baseline: a face that follows a new motion is
closer to it than the reconstruction (which keeps the old motion) is.
"""

from __future__ import annotations

import cv2
import numpy as np

from pipeline.face_detection import LandmarkDetector
from pipeline.progress import progress_bar

# Crops are enlarged to this side before detection: dlib's HOG window (80 px) misses faces in 64 px crops.
DETECT_SIZE = 256


def detect_crop_landmarks(
    detector: LandmarkDetector, crops: np.ndarray, frames: np.ndarray, progress: bool, desc: str
) -> np.ndarray:
    """(len(frames), 51, 2) jaw-less landmarks of the largest face of each listed crop, as fractions of
    the crop size; NaN where no face is detected."""
    size = crops.shape[1]
    scale = max(1.0, DETECT_SIZE / size)
    points = np.full((len(frames), 51, 2), np.nan)
    for row, index in enumerate(progress_bar(frames, enabled=progress, total=len(frames), desc=desc)):
        crop = np.asarray(crops[index])
        if scale > 1:
            crop = cv2.resize(crop, (round(size * scale),) * 2, interpolation=cv2.INTER_CUBIC)
        faces = detector.detect(crop)
        if faces:
            landmarks = max(faces, key=lambda face: face.area).landmarks[17:]
            # Back to crop pixels (pixel centres at integers), then to fractions, as landmark_feature does.
            points[row] = ((landmarks + 0.5) / scale - 0.5) / size
    return points


def follow_summary(edit_errors: np.ndarray, reconstruction_errors: np.ndarray) -> dict[str, float | int | None]:
    """Mean landmark errors of the edit and of the reconstruction over the frames both were detected in."""
    both = np.isfinite(edit_errors) & np.isfinite(reconstruction_errors)
    summary: dict[str, float | int | None] = {
        "frames_measured": int(both.sum()),
        "edit_detected": float(np.isfinite(edit_errors).mean()) if len(edit_errors) else 0.0,
        "reconstruction_detected": float(np.isfinite(reconstruction_errors).mean()) if len(edit_errors) else 0.0,
        "edit_error": None, "reconstruction_error": None, "error_ratio": None,
    }
    if both.any():
        edit, reconstruction = float(edit_errors[both].mean()), float(reconstruction_errors[both].mean())
        summary |= {"edit_error": edit, "reconstruction_error": reconstruction,
                    "error_ratio": edit / reconstruction if reconstruction > 0 else None}
    return summary
