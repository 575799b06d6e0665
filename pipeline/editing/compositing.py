"""Background-safe compositing: blend masks in crop space and paste-back into full frames."""

from __future__ import annotations

import cv2
import numpy as np

from pipeline.editing.settings import EditParams
from pipeline.faces.alignment import warp_to_frame


def _disk(radius: int) -> np.ndarray:
    size = 2 * radius + 1
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size))


def edit_blend_mask(
    face_mask: np.ndarray,
    edited: np.ndarray,
    reconstruction: np.ndarray,
    threshold: float,
    dilation: float,
    feather: float,
) -> np.ndarray:
    """Where the edit replaces the source, as float32 (R, R) in [0, 1].

    The union of the original face mask and the region the edit changed (where the edited
    decode differs from the plain reconstruction by more than `threshold` of the range), so
    edits that grow the face region, like a beard or longer hair, survive. The changed region
    is confined to the face mask dilated by `dilation` of the crop size: background further
    out always comes from the source. Edges are feathered with a Gaussian of `feather`.
    """
    size = face_mask.shape[0]
    face = face_mask.astype(np.float32) / 255 > 0.5
    reach = cv2.dilate(face.astype(np.uint8), _disk(max(1, round(dilation * size)))) > 0
    change = np.abs(edited.astype(np.float32) - reconstruction.astype(np.float32)).mean(axis=-1) / 255
    changed = cv2.morphologyEx((change > threshold).astype(np.uint8), cv2.MORPH_OPEN, _disk(1)) > 0
    region = (face | (changed & reach)).astype(np.float32)
    sigma = feather * size
    if sigma > 0:
        region = cv2.GaussianBlur(region, (0, 0), sigmaX=sigma)
        # Blur must not leak past the allowed reach, or the far background would change.
        region *= cv2.dilate(reach.astype(np.uint8), _disk(1)).astype(np.float32)
    return np.clip(region, 0, 1)


def composite_crop(
    edited: np.ndarray, source: np.ndarray, face_mask: np.ndarray, reconstruction: np.ndarray, params: EditParams
) -> tuple[np.ndarray, np.ndarray]:
    """The edited crop over the source crop, and the mask (float32 (R, R) in [0, 1]) render pastes it back with.

    `union` (the project's): :func:`edit_blend_mask`, and render pastes only that region. `reference`: the
    reference's hard face mask of the source inside the crop, then the whole crop pasted back.
    """
    if params.blend == "reference":
        hard = (face_mask > 127).astype(np.float32)
        return blend(edited, source, hard), np.ones_like(hard)
    alpha = edit_blend_mask(face_mask, edited, reconstruction, params.region_threshold, params.region_dilation,
                            params.feather)
    return blend(edited, source, alpha), alpha


def blend(edited: np.ndarray, source: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """`edited * alpha + source * (1 - alpha)` for uint8 images and an (H, W) alpha, rounded."""
    weight = alpha.astype(np.float32)[..., None]
    mixed = edited.astype(np.float32) * weight + source.astype(np.float32) * (1 - weight)
    return np.clip(np.round(mixed), 0, 255).astype(np.uint8)


def paste_back(frame: np.ndarray, crop: np.ndarray, alpha: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Paste an edited crop into its full-resolution frame through the inverse crop transform.

    Pixels where the warped alpha is zero keep the frame's exact values.
    """
    height, width = frame.shape[:2]
    warped = warp_to_frame(crop, matrix, width, height)
    weight = warp_to_frame(alpha.astype(np.float32), matrix, width, height)
    inside = weight > 0
    result = frame.copy()
    result[inside] = blend(warped[inside][None], frame[inside][None], weight[inside][None])[0]
    return result


def dilated_face_region(face_mask: np.ndarray, dilation: float) -> np.ndarray:
    """Boolean (R, R) face mask grown by `dilation` of the crop size (used to score the background)."""
    size = face_mask.shape[0]
    face = (face_mask > 0).astype(np.uint8)
    return cv2.dilate(face, _disk(max(1, round(dilation * size)))) > 0
