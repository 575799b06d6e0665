"""Identity and fidelity metrics for edited face videos.

TL-ID / TG-ID follow the STIT authors' metric: they compare how similar the frames of the edited video are
to each other, relative to how similar the source frames are to each other. An edit that is applied
identically to every frame leaves those ratios at 1; flicker in identity pushes them below 1.
"""

from __future__ import annotations

import numpy as np

# PSNR of identical images is infinite; a finite cap keeps metric files valid JSON and plots finite.
PSNR_CAP_DB = 100.0


def _unit_rows(emb: np.ndarray, name: str) -> np.ndarray:
    """Return ``emb`` (N, D) as float64 with each row scaled to unit L2 norm."""
    emb = np.asarray(emb, dtype=np.float64)
    norms = np.linalg.norm(emb, axis=-1, keepdims=True)
    if np.any(norms == 0) or not np.all(np.isfinite(norms)):
        raise ValueError(f"{name} has rows with zero or non-finite norm; cannot normalise them")
    return emb / norms


def temporal_identity_consistency(src_emb: np.ndarray, edit_emb: np.ndarray) -> tuple[float, float]:
    """Return ``(TL-ID, TG-ID)`` for per-frame identity embeddings of a source and an edited video.

    Both inputs are (N, D) with row ``n`` belonging to frame ``n``. Rows are L2-normalised, the frame
    similarity matrices ``S = E E^T`` are formed for each video and ``R = S_edit / S_src`` element-wise.
    TL-ID is the mean of R's first off-diagonal (adjacent frames), TG-ID the mean of all off-diagonal
    entries. 1 is ideal; values above 1 mean the edited frames agree more than the source frames did.
    """
    src = np.asarray(src_emb)
    edit = np.asarray(edit_emb)
    if src.ndim != 2 or edit.ndim != 2:
        raise ValueError(f"embeddings must be 2-D (frames, dim); got shapes {src.shape} and {edit.shape}")
    if src.shape != edit.shape:
        raise ValueError(f"source and edited embeddings differ in shape: {src.shape} vs {edit.shape}")
    n = src.shape[0]
    if n < 2:
        raise ValueError(f"TL-ID/TG-ID need at least 2 frames; got {n}")

    e_src = _unit_rows(src, "source embeddings")
    e_edit = _unit_rows(edit, "edited embeddings")
    s_src = e_src @ e_src.T
    s_edit = e_edit @ e_edit.T
    off_diag = ~np.eye(n, dtype=bool)
    if np.any(s_src[off_diag] == 0):
        raise ValueError("two source frames have orthogonal embeddings (similarity 0); the ratio is undefined")
    ratio = s_edit / np.where(off_diag, s_src, 1.0)
    tl_id = float(np.mean(np.diagonal(ratio, offset=1)))
    tg_id = float(np.mean(ratio[off_diag]))
    return tl_id, tg_id


def mean_cosine_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Mean row-wise cosine similarity between ``a`` (N, D) and ``b`` (N, D), or ``b`` (D,) against every row."""
    a_arr = np.asarray(a)
    b_arr = np.asarray(b)
    if a_arr.ndim != 2:
        raise ValueError(f"a must be 2-D (N, D); got shape {a_arr.shape}")
    if b_arr.ndim == 1:
        b_arr = b_arr[None, :]
    if b_arr.ndim != 2 or b_arr.shape[1] != a_arr.shape[1] or b_arr.shape[0] not in (1, a_arr.shape[0]):
        n, d = a_arr.shape
        raise ValueError(f"b must have shape ({n}, {d}) or ({d},); got {np.shape(b)}")
    cos = np.sum(_unit_rows(a_arr, "a") * _unit_rows(b_arr, "b"), axis=1)
    return float(np.mean(cos))


def masked_psnr(a: np.ndarray, b: np.ndarray, keep_mask: np.ndarray) -> float:
    """PSNR in dB between images ``a`` and ``b`` (values in [0, 255]) over the pixels where ``keep_mask`` is true.

    ``keep_mask`` has the image's shape or, for (H, W, C) images, (H, W) and then applies to every channel.
    Identical pixels give an infinite PSNR, reported as ``PSNR_CAP_DB`` (100 dB) so results stay finite.
    """
    a_arr = np.asarray(a, dtype=np.float64)
    b_arr = np.asarray(b, dtype=np.float64)
    mask = np.asarray(keep_mask, dtype=bool)
    if a_arr.shape != b_arr.shape:
        raise ValueError(f"images differ in shape: {a_arr.shape} vs {b_arr.shape}")
    if mask.ndim == a_arr.ndim - 1:
        mask = mask[..., None]
    try:
        mask = np.broadcast_to(mask, a_arr.shape)
    except ValueError:
        raise ValueError(
            f"keep_mask of shape {np.shape(keep_mask)} does not fit images of shape {a_arr.shape}"
        ) from None
    if not mask.any():
        raise ValueError("keep_mask selects no pixels; PSNR is undefined")
    mse = float(np.mean((a_arr[mask] - b_arr[mask]) ** 2))
    if mse == 0.0:
        return PSNR_CAP_DB
    return float(min(PSNR_CAP_DB, 10.0 * np.log10(255.0**2 / mse)))
