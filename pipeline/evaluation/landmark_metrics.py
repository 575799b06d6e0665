"""How well decoded faces follow the motion codes they were decoded with.

Landmarks are detected again on the decoded crops with the align stage's detector and compared
with the landmarks the codes ask for; the mean point distance is a fraction of the crop size. The
same figure for the unedited reconstruction is the baseline: a face that follows a new motion is
closer to it than the reconstruction (which keeps the old motion) is. Where the detector finds
no face (a blurry decode), dlib's 68-point predictor is run in the box of the source face's
landmarks instead, so every frame is measured; the share of frames the detector found is reported.
"""

from __future__ import annotations

import cv2
import numpy as np

from pipeline.core.progress import progress_bar
from pipeline.faces.face_detection import LandmarkDetector

# Crops are enlarged to this side before detection: dlib's HOG window (80 px) misses faces in 64 px crops.
DETECT_SIZE = 256


def detect_crop_landmarks(
    detector: LandmarkDetector, crops: np.ndarray, frames: np.ndarray, source_landmarks: np.ndarray, progress: bool,
    desc: str,
) -> tuple[np.ndarray, np.ndarray]:
    """Jaw-less landmarks (len(frames), 51, 2) of each listed crop as fractions of the crop size, and
    whether the detector found the face (else the predictor ran in the box of `source_landmarks`,
    the (N, 68, 2) crop landmarks of the source)."""
    import dlib

    from pipeline.faces.face_detection import _dlib_model_files

    predictor = dlib.shape_predictor(str(_dlib_model_files()[0]))
    size = crops.shape[1]
    scale = max(1.0, DETECT_SIZE / size)
    points = np.zeros((len(frames), 51, 2))
    detected = np.zeros(len(frames), dtype=bool)
    for row, index in enumerate(progress_bar(frames, enabled=progress, total=len(frames), desc=desc)):
        crop = np.asarray(crops[index])
        if scale > 1:
            crop = np.ascontiguousarray(cv2.resize(crop, (round(size * scale),) * 2, interpolation=cv2.INTER_CUBIC))
        faces = detector.detect(crop)
        detected[row] = bool(faces)
        if faces:
            landmarks = max(faces, key=lambda face: face.area).landmarks
        else:
            x0, y0 = (source_landmarks[index].min(axis=0) + 0.5) * scale - 0.5
            x1, y1 = (source_landmarks[index].max(axis=0) + 0.5) * scale - 0.5
            shape = predictor(crop, dlib.rectangle(int(x0), int(y0), int(x1), int(y1)))
            landmarks = np.array([[part.x, part.y] for part in shape.parts()], dtype=np.float64)
        # Back to crop pixels (pixel centres at integers), then to fractions, as landmark_feature does.
        points[row] = ((landmarks[17:] + 0.5) / scale - 0.5) / size
    return points, detected


def follow_summary(
    edit_errors: np.ndarray, reconstruction_errors: np.ndarray, edit_detected: np.ndarray,
    reconstruction_detected: np.ndarray,
) -> dict[str, float | int | None]:
    """Mean landmark errors of the edit and of the reconstruction (the baseline), their ratio, and the
    share of frames where the detector found each face."""
    edit, reconstruction = float(np.mean(edit_errors)), float(np.mean(reconstruction_errors))
    return {
        "frames_measured": len(edit_errors),
        "edit_error": edit,
        "reconstruction_error": reconstruction,
        "error_ratio": edit / reconstruction if reconstruction > 0 else None,
        "edit_detected": float(np.mean(edit_detected)),
        "reconstruction_detected": float(np.mean(reconstruction_detected)),
    }
