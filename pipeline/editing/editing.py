"""Edits of the video-level identity code ``z_id``.

Editing changes ``z_id`` once per video; every frame is then decoded with the same edited code, which is
what keeps the edit identical from frame to frame. Two kinds live here: linear attribute classifiers
(the paper's classifier editing) and reference identities (move toward another person, or away from the
video's own identity for anonymisation). Text (CLIP) editing is in :mod:`pipeline.editing.text_edit`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from pipeline.core.errors import InputError


def l2norm(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Scale ``x`` to unit L2 norm along ``axis``; a zero vector raises ValueError."""
    x = np.asarray(x)
    norm = np.linalg.norm(x, axis=axis, keepdims=True)
    if np.any(norm == 0):
        raise ValueError("cannot L2-normalise a zero vector")
    return x / norm


def _out_dtype(z: np.ndarray) -> np.dtype:
    # Edits return the caller's float precision (usually float32, what the model consumes).
    return np.result_type(z.dtype, np.float32)


@dataclass
class AttributeClassifier:
    """Linear attribute classifiers on standardised identity codes.

    ``logit_a(z) = weights[a] . ((z - mean) / std) + bias[a]``; ``weights`` is (A, D), ``bias`` (A,),
    ``mean`` and ``std`` (D,) are the per-dimension statistics of the whole labelled set.
    """

    attributes: list[str]
    weights: np.ndarray
    bias: np.ndarray
    mean: np.ndarray
    std: np.ndarray

    def __post_init__(self) -> None:
        self.attributes = [str(a) for a in self.attributes]
        self.weights = np.asarray(self.weights, dtype=np.float32)
        self.bias = np.asarray(self.bias, dtype=np.float32)
        self.mean = np.asarray(self.mean, dtype=np.float32)
        self.std = np.asarray(self.std, dtype=np.float32)
        n_attr = len(self.attributes)
        if len(set(self.attributes)) != n_attr:
            raise ValueError(f"attribute names must be unique; got {self.attributes}")
        if self.weights.ndim != 2 or self.weights.shape[0] != n_attr:
            raise ValueError(f"weights must be ({n_attr}, D); got {self.weights.shape}")
        dim = self.weights.shape[1]
        expected = {"bias": (self.bias, (n_attr,)), "mean": (self.mean, (dim,)), "std": (self.std, (dim,))}
        for name, (arr, shape) in expected.items():
            if arr.shape != shape:
                raise ValueError(f"{name} must have shape {shape}; got {arr.shape}")
        if np.any(self.std <= 0):
            raise ValueError("std must be positive in every dimension")

    @property
    def dim(self) -> int:
        """Dimension D of the identity codes the classifier was fitted on."""
        return int(self.weights.shape[1])

    def logits(self, z: np.ndarray) -> np.ndarray:
        """Attribute logits (..., A) for identity codes ``z`` (..., D)."""
        return ((np.asarray(z) - self.mean) / self.std) @ self.weights.T + self.bias

    def save(self, path: Path | str) -> None:
        """Write the classifier to a safetensors file; attribute names go into its metadata as JSON."""
        tensors = {"weights": self.weights, "bias": self.bias, "mean": self.mean, "std": self.std}
        save_file(tensors, str(path), metadata={"attributes": json.dumps(self.attributes)})

    @classmethod
    def load(cls, path: Path | str) -> AttributeClassifier:
        """Read a classifier written by :meth:`save`.

        A file that is missing, not a readable safetensors file (random bytes, cut short), or not a classifier
        (no attribute names, a tensor missing, mis-shaped or holding NaN or infinite values) raises
        :class:`InputError` naming it, so the CLI reports it on one line.
        """
        path = Path(path)
        if not path.is_file():
            raise InputError(path, "attribute classifier not found")
        metadata, tensors = _read_classifier_file(path)
        problem = "not an attribute classifier"
        attributes = _attribute_names(metadata.get("attributes"))
        if attributes is None:
            raise InputError(path, f"{problem}: the metadata has no 'attributes' list of names")
        unusable = [name for name, value in tensors.items() if not np.issubdtype(value.dtype, np.number)
                    or not np.all(np.isfinite(value))]
        if unusable:
            raise InputError(path, f"{problem}: tensors {unusable} hold NaN, infinite or non-numeric values")
        try:
            return cls(attributes=attributes, **tensors)
        except ValueError as exc:
            raise InputError(path, f"{problem}: {exc}") from None


# Tensors of a classifier file, as :meth:`AttributeClassifier.save` names them.
CLASSIFIER_TENSORS = ("weights", "bias", "mean", "std")


def _read_classifier_file(path: Path) -> tuple[dict[str, str], dict[str, np.ndarray]]:
    """The metadata and the :data:`CLASSIFIER_TENSORS` of a safetensors file, or InputError naming it."""
    try:
        with safe_open(str(path), framework="numpy") as f:
            metadata = f.metadata() or {}
            present = set(f.keys())
            missing = [name for name in CLASSIFIER_TENSORS if name not in present]
            if missing:
                found = sorted(present)[:8]
                raise InputError(path, f"not an attribute classifier: missing tensors {missing} (found {found})")
            return metadata, {name: f.get_tensor(name) for name in CLASSIFIER_TENSORS}
    except (SafetensorError, OSError, TypeError) as exc:  # TypeError: a dtype numpy lacks (bfloat16)
        detail = (str(exc).splitlines() or [""])[0]
        raise InputError(path, f"not a readable safetensors file ({type(exc).__name__}: {detail})") from None


def _attribute_names(text: str | None) -> list[str] | None:
    """The attribute names of a classifier's metadata entry (a JSON list of strings), or None if it is not one."""
    try:
        names = json.loads(text) if text is not None else None
    except json.JSONDecodeError:
        return None
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        return None
    return names


def classifier_edit(z_mean: np.ndarray, clf: AttributeClassifier, scales: dict[str, float]) -> np.ndarray:
    """Move the identity code along attribute directions: ``l2norm(denorm(norm(z) + sum_a s_a*sqrt(d)*w_a/|w_a|))``.

    ``norm(z) = (z - mean) / std`` and ``denorm`` is its inverse. The ``sqrt(d)`` factor makes a scale of 1
    a step of about one standard deviation per dimension in total, so scales mean the same across code
    sizes. Positive scales add the attribute, negative ones remove it.
    """
    z = np.asarray(z_mean)
    if z.shape != (clf.dim,):
        raise ValueError(f"z_mean must have shape ({clf.dim},) to match the classifier; got {z.shape}")
    index = {name: i for i, name in enumerate(clf.attributes)}
    u = (z.astype(np.float64) - clf.mean) / clf.std
    for name, scale in scales.items():
        if name not in index:
            raise ValueError(f"unknown attribute {name!r}; the classifier knows: {', '.join(clf.attributes)}")
        w = clf.weights[index[name]].astype(np.float64)
        u = u + float(scale) * np.sqrt(clf.dim) * w / np.linalg.norm(w)
    return l2norm(u * clf.std + clf.mean).astype(_out_dtype(z))


def reference_edit(
    z_mean: np.ndarray, z_ref: np.ndarray, strength: float, away: bool = False, seed: int = 0
) -> np.ndarray:
    """Move the identity code toward a reference identity, or away from one (anonymisation).

    Toward: ``l2norm(z_mean + strength * (z_ref - z_mean))``; strength 0 keeps the source, 1 gives the
    reference, values in between interpolate.

    Away: stepping along ``z_mean - z_ref`` is useless when ``z_ref`` is the video's own identity (the
    usual case), so the code is rotated instead along a fixed unit direction ``u`` orthogonal to both
    ``z_mean`` and ``z_ref``: ``l2norm(l2norm(z_mean) + strength * u)``. ``u`` is a Gaussian vector drawn
    from ``seed`` and projected, so the same seed anonymises every video the same reproducible way. The
    cosine similarity to ``z_ref`` is then exactly the source's divided by ``sqrt(1 + strength^2)``
    (strength 1: a 45 degree rotation).

    With strength 0 both modes return exactly ``l2norm(z_mean)``.
    """
    z = np.asarray(z_mean)
    ref = np.asarray(z_ref)
    if z.ndim != 1 or ref.shape != z.shape:
        raise ValueError(f"z_mean and z_ref must be 1-D vectors of the same size; got {z.shape} and {ref.shape}")
    if not np.isfinite(strength):
        raise ValueError(f"strength must be finite; got {strength}")
    z64 = z.astype(np.float64)
    if not away:
        return l2norm(z64 + strength * (ref.astype(np.float64) - z64)).astype(_out_dtype(z))

    if strength < 0:
        raise ValueError(f"strength must be >= 0 when moving away from a reference; got {strength}")
    z_unit = l2norm(z64)
    u = np.random.default_rng(seed).standard_normal(z.shape[0])
    # Gram-Schmidt against z and the reference (twice each for numerical orthogonality).
    basis = [z_unit]
    ref_perp = ref.astype(np.float64) - (ref @ z_unit) * z_unit
    if np.linalg.norm(ref_perp) > 1e-8 * np.linalg.norm(ref):
        basis.append(l2norm(ref_perp))
    for _ in range(2):
        for b in basis:
            u = u - (u @ b) * b
    if np.linalg.norm(u) < 1e-8:
        raise ValueError("code dimension too small to find a direction orthogonal to z_mean and z_ref")
    u = l2norm(u)
    # cos/sin form of l2norm(z_unit + strength*u): exact at strength 0 and unit-norm by construction.
    denom = np.sqrt(1.0 + strength**2)
    return (z_unit / denom + (strength / denom) * u).astype(_out_dtype(z))
