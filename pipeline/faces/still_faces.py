"""Align and encode the face of a still image (reference faces, labelled attribute tables)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from pipeline.core.errors import InputError
from pipeline.faces import alignment
from pipeline.faces.face_detection import LandmarkDetector
from pipeline.faces.identity import IdentityEncoder, l2_normalise


@dataclass(frozen=True)
class AlignedStill:
    """The aligned crop of an image's largest face, its crop landmarks and identity code."""

    crop: np.ndarray
    crop_landmarks: np.ndarray
    identity: np.ndarray


def read_image(path: Path) -> np.ndarray:
    """An image file as RGB uint8 (H, W, 3); clear error when unreadable."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "image not found")
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise InputError(path, "not a readable image")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def align_still(rgb: np.ndarray, detector: LandmarkDetector, size: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Crop and crop landmarks of the largest face in `rgb`, or None when no face is found."""
    faces = detector.detect(rgb)
    if not faces:
        return None
    face = max(faces, key=lambda candidate: candidate.area)
    center, axis = alignment.crop_frame(face.landmarks)
    matrix = alignment.crop_transform(center, axis, size)
    return alignment.warp_to_crop(rgb, matrix, size), alignment.apply_transform(matrix, face.landmarks)


VIDEO_SUFFIXES = {".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v"}


def reference_identity(
    path: Path, detector: LandmarkDetector, encoder: IdentityEncoder, size: int, max_frames: int = 16
) -> np.ndarray:
    """Identity of a reference face: from an image, or the normalised mean over a video's frames.

    For a video, up to `max_frames` evenly spaced frames are read (streaming) and every frame
    where a face is found contributes its largest face.
    """
    path = Path(path)
    if path.suffix.lower() not in VIDEO_SUFFIXES:
        return encode_still(path, detector, encoder, size).identity
    from pipeline.video.video_io import iter_frames, probe

    total = max(probe(path).frame_count, 1)
    stride = max(total // max_frames, 1)
    codes = []
    for frame in iter_frames(path, max_frames=stride * max_frames):
        if frame.index % stride:
            continue
        aligned = align_still(frame.rgb, detector, size)
        if aligned is not None:
            codes.append(encoder.embed(aligned[0][None], aligned[1][None])[0])
    if not codes:
        raise InputError(path, "no face found in the reference video")
    return l2_normalise(np.mean(codes, axis=0)).astype(np.float32)


def encode_still(path: Path, detector: LandmarkDetector, encoder: IdentityEncoder, size: int) -> AlignedStill:
    """Align and encode the largest face of an image file."""
    aligned = align_still(read_image(path), detector, size)
    if aligned is None:
        raise InputError(path, "no face found in the image")
    crop, points = aligned
    identity = encoder.embed(crop[None], points[None])[0]
    return AlignedStill(crop=crop, crop_landmarks=points, identity=identity)
