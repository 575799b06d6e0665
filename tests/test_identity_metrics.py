"""Tests of TL-ID / TG-ID, mean cosine similarity and masked PSNR against hand computations."""

import numpy as np
import pytest

from pipeline.evaluation.identity_metrics import (
    PSNR_CAP_DB,
    masked_psnr,
    mean_cosine_similarity,
    temporal_identity_consistency,
)

# Source frames (unit rows): similarities s01 = 0.6, s02 = 0.8, s12 = 0.6*0.8 + 0.8*0.6 = 0.96.
SRC = np.array([[1.0, 0.0], [0.6, 0.8], [0.8, 0.6]])
# Edited frames: t01 = 0.8, t02 = 0.6, t12 = 0.8*0.6 + 0.6*0.8 = 0.96.
EDIT = np.array([[1.0, 0.0], [0.8, 0.6], [0.6, 0.8]])


def test_hand_computed_values():
    # R = S_edit / S_src: r01 = 0.8/0.6 = 4/3, r12 = 0.96/0.96 = 1, r02 = 0.6/0.8 = 3/4.
    # TL-ID = mean(r01, r12) = (4/3 + 1) / 2 = 7/6.
    # TG-ID = mean over the 6 off-diagonal entries (R is symmetric) = (4/3 + 1 + 3/4) / 3 = 37/36.
    tl, tg = temporal_identity_consistency(SRC, EDIT)
    assert tl == pytest.approx(7 / 6)
    assert tg == pytest.approx(37 / 36)


def test_rows_are_normalised_first():
    scales = np.array([[2.0], [0.5], [7.0]])
    tl, tg = temporal_identity_consistency(SRC * scales, EDIT * scales[::-1])
    assert (tl, tg) == pytest.approx((7 / 6, 37 / 36))


def test_identical_embeddings_give_one():
    emb = np.random.default_rng(0).normal(size=(5, 16)) + 3.0
    assert temporal_identity_consistency(emb, emb.copy()) == pytest.approx((1.0, 1.0))


def test_invalid_inputs():
    with pytest.raises(ValueError, match="at least 2 frames"):
        temporal_identity_consistency(SRC[:1], EDIT[:1])
    with pytest.raises(ValueError, match="differ in shape"):
        temporal_identity_consistency(SRC, EDIT[:2])


def test_mean_cosine_similarity():
    a = np.array([[1.0, 0.0], [0.0, 2.0]])
    # Each row against (1, 1): cos = 1/sqrt(2).
    assert mean_cosine_similarity(a, np.array([1.0, 1.0])) == pytest.approx(1 / np.sqrt(2))
    # Row-wise: cos((1,0),(1,0)) = 1, cos((0,2),(1,0)) = 0 -> mean 0.5.
    assert mean_cosine_similarity(a, np.array([[3.0, 0.0], [1.0, 0.0]])) == pytest.approx(0.5)


def test_masked_psnr():
    a = np.zeros((4, 4, 3), dtype=np.uint8)
    b = a.copy()
    b[:2] = 5  # differs by 5 in the top half only
    keep = np.zeros((4, 4), dtype=bool)
    keep[2:] = True
    assert masked_psnr(a, b, keep) == PSNR_CAP_DB
    # Over the top half: MSE = 25, PSNR = 10 log10(255^2 / 25) = 10 log10(2601).
    assert masked_psnr(a, b, ~keep) == pytest.approx(10 * np.log10(2601))
    with pytest.raises(ValueError, match="no pixels"):
        masked_psnr(a, b, np.zeros((4, 4), dtype=bool))
