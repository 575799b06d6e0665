"""Fitting linear attribute classifiers in identity-code space (the ``fit_classifiers`` stage).

The classifiers give the edit directions of :func:`pipeline.editing.editing.classifier_edit`. Inputs are 0/1
labels and the identity embeddings they belong to: a label table (CelebA ``list_attr_celeba.txt`` or
CSV/Parquet) and the codes of its images, or labels measured from the landmarks of the pipeline's own aligned
video faces (:mod:`pipeline.faces.landmark_attributes`) and the codes of those faces.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from pipeline.core.errors import InputError
from pipeline.editing.editing import AttributeClassifier

if TYPE_CHECKING:  # pandas is imported where label tables are read: an edit that loads a classifier never needs it
    import pandas as pd


class LabelTableError(InputError, ValueError):
    """A label table that cannot be parsed; a ValueError whose one-line message names the file."""


# The 40 CelebA attributes in the order of the reference code's classifier outputs (its CelebAttrDataset),
# which is also the column order of CelebA's list_attr_celeba.txt.
CELEBA_ATTRIBUTES = (
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs", "Big_Lips",
    "Big_Nose", "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair", "Bushy_Eyebrows", "Chubby", "Double_Chin",
    "Eyeglasses", "Goatee", "Gray_Hair", "Heavy_Makeup", "High_Cheekbones", "Male", "Mouth_Slightly_Open",
    "Mustache", "Narrow_Eyes", "No_Beard", "Oval_Face", "Pale_Skin", "Pointy_Nose", "Receding_Hairline",
    "Rosy_Cheeks", "Sideburns", "Smiling", "Straight_Hair", "Wavy_Hair", "Wearing_Earrings", "Wearing_Hat",
    "Wearing_Lipstick", "Wearing_Necklace", "Wearing_Necktie", "Young",
)
# Identity-code size of the reference classifier (the IR-SE50 embedding).
REFERENCE_ID_DIM = 512

IMAGE_COLUMN = "image"
# Kaggle's CSV export of CelebA names the column image_id; accept it so that file works unchanged.
_IMAGE_ALIASES = ("image_id",)


def _to_binary(values: np.ndarray, path: Path, what: str) -> np.ndarray:
    """Map a table's attribute values (all -1/1 or all 0/1) to 0/1 int64, or raise a one-line ValueError."""
    if values.size and not np.all(np.isfinite(values.astype(np.float64))):
        raise LabelTableError(path, f"{what} contain missing or non-numeric values")
    uniq = set(np.unique(values).tolist())
    if uniq <= {0, 1}:
        return values.astype(np.int64)
    if uniq <= {-1, 1}:
        return (values > 0).astype(np.int64)
    raise LabelTableError(path, f"{what} must be all -1/1 or all 0/1; found values {sorted(uniq)[:5]}")


def _read_celeba(path: Path) -> pd.DataFrame:
    """Parse the CelebA attribute format: count line, attribute-name line, then ``filename v1 ... vA`` rows."""
    import pandas as pd

    lines = [ln.split() for ln in path.read_text().splitlines()]
    lines = [ln for ln in lines if ln]
    if len(lines) < 2:
        raise LabelTableError(path, "expected a count line and an attribute-name line (CelebA format)")
    if len(lines[0]) != 1 or not lines[0][0].isdigit():
        first = " ".join(lines[0])
        raise LabelTableError(path, f"first line must be the number of images (CelebA format); got {first!r}")
    count = int(lines[0][0])
    names = lines[1]
    rows = lines[2:]
    if len(rows) != count:
        raise LabelTableError(path, f"header says {count} images but the file has {len(rows)} rows")
    for i, row in enumerate(rows):
        if len(row) != len(names) + 1:
            problem = f"row {i + 3} has {len(row) - 1} values, expected {len(names)} (one per attribute)"
            raise LabelTableError(path, problem)
    try:
        values = np.array([row[1:] for row in rows], dtype=np.int64).reshape(len(rows), len(names))
    except ValueError:
        raise LabelTableError(path, "attribute values must be integers -1 or 1") from None
    table = pd.DataFrame(_to_binary(values, path, "attribute values"), columns=names)
    table.insert(0, IMAGE_COLUMN, [row[0] for row in rows])
    return table


def _read_tabular(path: Path) -> pd.DataFrame:
    """Parse a CSV/Parquet table with an ``image`` column and one 0/1 (or -1/1) column per attribute."""
    import pandas as pd

    try:
        raw = pd.read_parquet(path) if path.suffix.lower() in (".parquet", ".pq") else pd.read_csv(path)
    except Exception as exc:  # pandas/pyarrow raise many types; the user needs one clear line
        detail = (str(exc).splitlines() or [""])[0]
        raise LabelTableError(path, f"cannot be read as a table ({type(exc).__name__}: {detail})") from exc
    if IMAGE_COLUMN not in raw.columns:
        alias = next((a for a in _IMAGE_ALIASES if a in raw.columns), None)
        if alias is None:
            columns = list(raw.columns)[:8]
            raise LabelTableError(path, f"no '{IMAGE_COLUMN}' column with the image paths; columns are {columns}")
        raw = raw.rename(columns={alias: IMAGE_COLUMN})
    attrs = [c for c in raw.columns if c != IMAGE_COLUMN]
    if not attrs:
        raise LabelTableError(path, f"no attribute columns besides '{IMAGE_COLUMN}'")
    non_numeric = [c for c in attrs if not pd.api.types.is_numeric_dtype(raw[c])]
    if non_numeric:
        raise LabelTableError(path, f"attribute columns must be numeric 0/1; not numeric: {non_numeric[:5]}")
    values = _to_binary(raw[attrs].to_numpy(dtype=np.float64), path, "attribute columns")
    table = pd.DataFrame(values, columns=[str(c) for c in attrs])
    table.insert(0, IMAGE_COLUMN, raw[IMAGE_COLUMN].astype(str).to_numpy())
    return table


def read_label_table(path: Path) -> pd.DataFrame:
    """Read an attribute label table into a DataFrame with column ``image`` and one 0/1 int column per attribute.

    ``.txt`` files are read in CelebA ``list_attr_celeba.txt`` format (-1/1 values); ``.csv`` and
    ``.parquet`` files need an ``image`` (or ``image_id``) column plus attribute columns holding 0/1 or -1/1.
    Image paths are returned as written in the file. A malformed file raises ValueError naming it.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"label table not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".txt":
        table = _read_celeba(path)
    elif suffix in (".csv", ".parquet", ".pq"):
        table = _read_tabular(path)
    else:
        raise LabelTableError(path, f"unsupported label table type {suffix!r}; use CelebA .txt, .csv or .parquet")
    if table.empty:
        raise LabelTableError(path, "the table has no rows")
    return table


def _holdout_split(labels: np.ndarray, fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Split row indices into (train, held-out), stratified on the attribute with the rarest class.

    Stratifying on one attribute is the cheap way to make sure the hardest attribute has both classes in
    the held-out split; the other attributes are left to chance.
    """
    minority = np.minimum(labels.sum(axis=0), len(labels) - labels.sum(axis=0))
    strat = labels[:, int(np.argmin(minority))]
    held: list[np.ndarray] = []
    for cls in (0, 1):
        idx = rng.permutation(np.flatnonzero(strat == cls))
        n_held = int(round(len(idx) * fraction))
        if len(idx) >= 2:
            n_held = min(max(n_held, 1), len(idx) - 1)
        held.append(idx[:n_held])
    held_idx = np.sort(np.concatenate(held))
    train_idx = np.setdiff1d(np.arange(len(labels)), held_idx)
    return train_idx, held_idx


def _group_folds(groups: np.ndarray, folds: int, rng: np.random.Generator) -> np.ndarray:
    """The fold (0..folds-1) of every row: whole groups, shuffled, dealt to the folds in turn."""
    keys, inverse = np.unique(np.asarray(groups), return_inverse=True)
    if len(keys) < 2:
        raise ValueError(f"cross-validation needs at least 2 groups of rows; got {len(keys)}")
    fold_of_group = np.empty(len(keys), dtype=np.int64)
    fold_of_group[rng.permutation(len(keys))] = np.arange(len(keys)) % min(folds, len(keys))
    return fold_of_group[inverse.reshape(-1)]


def _train_linear(x: torch.Tensor, t: torch.Tensor, epochs: int, lr: float, weight_decay: float) -> torch.nn.Linear:
    """Full-batch Adam on BCE-with-logits from a zero start (deterministic given the rows)."""
    linear = torch.nn.Linear(x.shape[1], t.shape[1]).to(x.device)
    torch.nn.init.zeros_(linear.weight)
    torch.nn.init.zeros_(linear.bias)
    groups = [{"params": [linear.weight], "weight_decay": weight_decay}, {"params": [linear.bias]}]
    opt = torch.optim.Adam(groups, lr=lr)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    for _ in range(epochs):
        opt.zero_grad()
        loss_fn(linear(x), t).backward()
        opt.step()
    return linear


def _aucs(scores: torch.Tensor, targets: torch.Tensor, attributes: list[str]) -> dict[str, float]:
    """AUC of each attribute's scores; NaN where the rows hold one class only."""
    # Imported here: torchmetrics takes seconds to import, and only fitting needs it, not an edit.
    from torchmetrics.functional.classification import binary_auroc

    aucs: dict[str, float] = {}
    for j, name in enumerate(attributes):
        target = targets[:, j]
        if target.min() == target.max():
            aucs[name] = float("nan")
        else:
            aucs[name] = float(binary_auroc(scores[:, j], target.long()))
    return aucs


def fit_attribute_classifiers(
    embeddings: np.ndarray,
    labels: pd.DataFrame,
    holdout_fraction: float = 0.2,
    seed: int = 0,
    epochs: int = 300,
    lr: float = 0.05,
    weight_decay: float = 1e-4,
    device: str | torch.device = "cpu",
    groups: np.ndarray | None = None,
) -> tuple[AttributeClassifier, dict[str, float]]:
    """Fit ``Linear(D -> A)`` attribute classifiers on standardised identity codes; return it and held-out AUCs.

    ``embeddings`` (N, D) and ``labels`` (N rows, one 0/1 column per attribute; an ``image`` column is
    ignored) correspond row by row. Codes are standardised with the mean/std of the WHOLE set (the
    reference used one batch). Training is full-batch Adam on BCE-with-logits from a zero start, so the
    result depends only on ``seed``, which fixes the held-out rows. A small weight decay keeps the
    weights finite when an attribute is linearly separable. The AUC of an attribute whose held-out rows
    are all one class is NaN.

    Without ``groups`` (independent images) a stratified ``holdout_fraction`` of the rows is held out and
    the classifier is the one fitted on the rest. With ``groups`` (N,) the rows are not independent (video
    frames: neighbours are near copies, and a random split would score a classifier on copies of its
    training rows), so rows of one group are never split: the AUC is cross-validated over
    ``round(1 / holdout_fraction)`` folds of whole groups (every row scored once, by the classifier fitted
    without its group), and the classifier returned is fitted on every row.
    """
    emb = np.asarray(embeddings, dtype=np.float64)
    attr_frame = labels.drop(columns=[IMAGE_COLUMN], errors="ignore")
    attributes = [str(c) for c in attr_frame.columns]
    if emb.ndim != 2:
        raise ValueError(f"embeddings must be 2-D (N, D); got shape {emb.shape}")
    if len(attr_frame) != emb.shape[0]:
        raise ValueError(f"{emb.shape[0]} embeddings but {len(attr_frame)} label rows")
    if groups is not None and np.shape(groups) != (emb.shape[0],):
        raise ValueError(f"groups must be ({emb.shape[0]},), one per embedding; got {np.shape(groups)}")
    if not attributes:
        raise ValueError("the label table has no attribute columns")
    if not 0.0 < holdout_fraction < 1.0:
        raise ValueError(f"holdout_fraction must be in (0, 1); got {holdout_fraction}")
    y = attr_frame.to_numpy()
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0/1 (use read_label_table to convert -1/1)")
    y = y.astype(np.int64)
    for j, name in enumerate(attributes):
        if y[:, j].min() == y[:, j].max():
            raise ValueError(f"attribute {name!r} has only one class ({y[0, j]}) in the labels; cannot fit it")

    mean = emb.mean(axis=0)
    std = emb.std(axis=0)
    # A constant dimension carries no information; std 1 keeps norm/denorm well defined.
    std = np.where(std > 1e-12, std, 1.0)
    x = torch.as_tensor((emb - mean) / std, dtype=torch.float32, device=device)
    t = torch.as_tensor(y, dtype=torch.float32, device=device)
    rng = np.random.default_rng(seed)

    if groups is None:
        train_idx, held_idx = _holdout_split(y, holdout_fraction, rng)
        linear = _train_linear(x[train_idx], t[train_idx], epochs, lr, weight_decay)
        with torch.no_grad():
            aucs = _aucs(linear(x[held_idx]), t[held_idx], attributes)
    else:
        fold = torch.as_tensor(_group_folds(groups, round(1 / holdout_fraction), rng), device=device)
        scores = torch.empty_like(t)
        for k in torch.unique(fold).tolist():
            held = fold == k
            fold_linear = _train_linear(x[~held], t[~held], epochs, lr, weight_decay)
            with torch.no_grad():
                scores[held] = fold_linear(x[held])
        aucs = _aucs(scores, t, attributes)
        linear = _train_linear(x, t, epochs, lr, weight_decay)

    clf = AttributeClassifier(
        attributes=attributes,
        weights=linear.weight.detach().cpu().numpy(),
        bias=linear.bias.detach().cpu().numpy(),
        mean=mean,
        std=std,
    )
    return clf, aucs


def _reference_shapes() -> dict[str, tuple[tuple[int, ...], ...]]:
    """Accepted shapes of each tensor of the reference classifier checkpoint, by state-dict name."""
    n_attr, dim = len(CELEBA_ATTRIBUTES), REFERENCE_ID_DIM
    linear = {"weight": ((n_attr, dim),), "bias": ((n_attr,),)}
    # The reference registers the statistics as (1, D) buffers; a bare (D,) vector is accepted too.
    stats = ((1, dim), (dim,))
    return {
        **{f"classifier.{leaf}": shape for leaf, shape in linear.items()},
        **{f"ema_classifier.{leaf}": shape for leaf, shape in linear.items()},
        "conds_mean": stats,
        "conds_std": stats,
    }


# Tensors the import uses. The reference's edit script reads `classifier.*`, not its EMA copy
# `ema_classifier.*`, which is recognised (shape-checked) and left out.
REFERENCE_CLASSIFIER_USED = ("classifier.weight", "classifier.bias", "conds_mean", "conds_std")


def classifier_from_reference(state: Mapping[str, torch.Tensor], source: Path) -> AttributeClassifier:
    """Build the project classifier from the state dict of the reference's CelebA attribute classifier.

    ``state`` is the ``state_dict`` of the reference's ``ClsModel`` Lightning checkpoint: ``classifier.weight``
    (40, 512) and ``classifier.bias`` (40,) of the linear classifier over the standardised identity code,
    ``conds_mean`` and ``conds_std`` ((1, 512) or (512,)), the standardisation statistics, and optionally
    ``ema_classifier.weight`` / ``ema_classifier.bias``, which are checked but not used (the reference edits
    with ``classifier``). Attributes are named :data:`CELEBA_ATTRIBUTES`, in the reference's order. Any other
    tensor, a missing or mis-shaped one, or unusable values raise :class:`InputError` naming ``source`` and
    listing every problem found.
    """
    shapes = _reference_shapes()
    problems = []
    unknown = sorted(set(state) - set(shapes))
    if unknown:
        problems.append(f"unexpected tensors {unknown}")
    missing = [name for name in REFERENCE_CLASSIFIER_USED if name not in state]
    if missing:
        problems.append(f"missing tensors {missing}")
    wrong = []
    for name, accepted in shapes.items():
        if name not in state:
            continue
        tensor = state[name]
        if not isinstance(tensor, torch.Tensor):
            wrong.append(f"{name} (a {type(tensor).__name__}, not a tensor)")
        elif not tensor.is_floating_point():
            wrong.append(f"{name} ({tensor.dtype}, expected floating point)")
        elif tuple(tensor.shape) not in accepted:
            expected = " or ".join(str(shape) for shape in accepted)
            wrong.append(f"{name} {tuple(tensor.shape)} (expected {expected})")
        elif not torch.isfinite(tensor).all():
            wrong.append(f"{name} (contains NaN or infinite values)")
    if wrong:
        problems.append(f"unusable tensors {wrong}")
    if not problems and not bool((state["conds_std"] > 0).all()):
        problems.append("conds_std must be positive in every dimension")
    if problems:
        raise InputError(source, "not a reference attribute classifier: " + "; ".join(problems))

    def vector(name: str) -> np.ndarray:
        return state[name].detach().to(device="cpu", dtype=torch.float32).reshape(-1).numpy()

    return AttributeClassifier(
        attributes=list(CELEBA_ATTRIBUTES),
        weights=state["classifier.weight"].detach().to(device="cpu", dtype=torch.float32).numpy(),
        bias=vector("classifier.bias"),
        mean=vector("conds_mean"),
        std=vector("conds_std"),
    )
