"""Tests of classifier and reference-identity edits of the identity code."""

import numpy as np
import pytest

from pipeline.editing.editing import AttributeClassifier, classifier_edit, l2norm, reference_edit


def _clf() -> AttributeClassifier:
    return AttributeClassifier(
        attributes=["glasses", "beard"],
        weights=np.array([[3.0, 4.0], [0.0, -2.0]]),
        bias=np.array([0.1, -0.2]),
        mean=np.array([0.5, -0.5]),
        std=np.array([2.0, 0.5]),
    )


def test_classifier_edit_matches_hand_computation():
    z = np.array([1.0, 0.0], dtype=np.float32)
    # norm(z) = ((1 - 0.5)/2, (0 + 0.5)/0.5) = (0.25, 1).
    # glasses: w/|w| = (0.6, 0.8); s*sqrt(d) = 0.5*sqrt(2) -> + (0.424264, 0.565685) = (0.674264, 1.565685).
    # denorm: (0.674264*2 + 0.5, 1.565685*0.5 - 0.5) = (1.848528, 0.282843); l2norm -> (0.988496, 0.151249).
    out = classifier_edit(z, _clf(), {"glasses": 0.5})
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [0.98849563, 0.15124941], rtol=1e-6)
    # Adding beard -1: w/|w| = (0, -1); -1*sqrt(2) -> + (0, 1.414214) = (0.674264, 2.979899);
    # denorm (1.848528, 0.989949); l2norm -> (0.881546, 0.472098).
    out = classifier_edit(z, _clf(), {"glasses": 0.5, "beard": -1.0})
    np.testing.assert_allclose(out, [0.88154615, 0.47209785], rtol=1e-6)


def test_classifier_edit_empty_and_unknown():
    z = np.array([3.0, 4.0])
    np.testing.assert_allclose(classifier_edit(z, _clf(), {}), [0.6, 0.8])
    with pytest.raises(ValueError, match=r"'hat'.*glasses, beard"):
        classifier_edit(z, _clf(), {"hat": 1.0})


def test_save_load_roundtrip(tmp_path):
    clf = _clf()
    clf.save(tmp_path / "clf.safetensors")
    loaded = AttributeClassifier.load(tmp_path / "clf.safetensors")
    assert loaded.attributes == clf.attributes
    for name in ("weights", "bias", "mean", "std"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(clf, name))
    np.testing.assert_allclose(loaded.logits(np.array([1.0, 0.0])), clf.logits(np.array([1.0, 0.0])))


def test_reference_edit_toward():
    rng = np.random.default_rng(1)
    z, ref = rng.normal(size=8).astype(np.float32), rng.normal(size=8).astype(np.float32)
    expected = l2norm(z.astype(np.float64)).astype(np.float32)
    np.testing.assert_array_equal(reference_edit(z, ref, 0.0), expected)
    np.testing.assert_allclose(reference_edit(z, ref, 1.0), l2norm(ref), rtol=1e-6)


def test_reference_edit_away():
    rng = np.random.default_rng(2)
    z = rng.normal(size=16)
    ref = z + 0.1 * rng.normal(size=16)
    np.testing.assert_array_equal(reference_edit(z, ref, 0.0, away=True), l2norm(z))
    out = reference_edit(z, ref, 1.0, away=True, seed=3)
    assert np.linalg.norm(out) == pytest.approx(1.0)
    # Similarity to the reference shrinks by exactly 1/sqrt(1 + strength^2).
    cos0 = l2norm(z) @ l2norm(ref)
    assert out @ l2norm(ref) == pytest.approx(cos0 / np.sqrt(2))
    np.testing.assert_array_equal(out, reference_edit(z, ref, 1.0, away=True, seed=3))
    assert not np.allclose(out, reference_edit(z, ref, 1.0, away=True, seed=4))
