"""The reference's CelebA attribute classifier, imported into the project's format, edits as the reference does."""

import numpy as np
import pytest
import torch

from pipeline.core.errors import InputError
from pipeline.editing.classifiers import CELEBA_ATTRIBUTES, classifier_from_reference
from pipeline.editing.editing import AttributeClassifier, classifier_edit
from tests.reference_fixture import golden, max_abs_difference, meta, tolerance


def reference_state(g: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A ClsModel state dict in the reference layout holding the fixture's classifier and statistics."""
    weight = g["input.classifier_weight"]
    return {
        "classifier.weight": weight,
        "classifier.bias": torch.linspace(-1, 1, weight.shape[0]),
        # The EMA copy differs, so a test would notice if the import took it instead of `classifier`.
        "ema_classifier.weight": -weight,
        "ema_classifier.bias": torch.zeros(weight.shape[0]),
        "conds_mean": g["input.conds_mean"][None],
        "conds_std": g["input.conds_std"][None],
    }


def test_reference_classifier_edit_matches_golden(tmp_path):
    g, settings = golden(), meta()["classifier_edit"]
    path = tmp_path / "celeba.safetensors"
    classifier_from_reference(reference_state(g), tmp_path / "last.ckpt").save(path)
    clf = AttributeClassifier.load(path)
    # CelebA's own column order (list_attr_celeba.txt), which the reference's classifier outputs follow.
    assert clf.attributes == list(CELEBA_ATTRIBUTES) and CELEBA_ATTRIBUTES[15] == "Eyeglasses"
    attribute = clf.attributes[settings["attribute_index"]]

    edited = classifier_edit(g["classifier_edit.avg_id"][0].numpy(), clf, {attribute: settings["scale"]})

    expected = g["classifier_edit.edited_id"]
    difference = max_abs_difference(torch.from_numpy(edited)[None], expected)
    print(f"classifier_edit.edited_id: max |difference| {difference:.3e} (tolerance {tolerance(expected):.1e})")
    assert difference <= tolerance(expected)


def test_statistics_may_be_plain_vectors():
    g = golden()
    state = reference_state(g) | {"conds_mean": g["input.conds_mean"], "conds_std": g["input.conds_std"]}
    clf = classifier_from_reference(state, "cls.ckpt")
    np.testing.assert_array_equal(clf.mean, g["input.conds_mean"].numpy())
    np.testing.assert_array_equal(clf.weights, g["input.classifier_weight"].numpy())


def test_ema_copy_is_optional():
    state = {k: v for k, v in reference_state(golden()).items() if not k.startswith("ema_")}
    assert classifier_from_reference(state, "cls.ckpt").dim == 512


@pytest.mark.parametrize(
    ("change", "listed"),
    [
        (lambda s: s.pop("conds_std"), "conds_std"),
        (lambda s: s.update({"classifier.weight": torch.zeros(39, 512)}), "classifier.weight (39, 512)"),
        (lambda s: s.update({"conds_mean": torch.zeros(2, 512)}), "conds_mean (2, 512)"),
        (lambda s: s.update({"model.input_blocks.0.0.weight": torch.zeros(1)}), "model.input_blocks.0.0.weight"),
        (lambda s: s.update({"classifier.bias": torch.zeros(40, dtype=torch.long)}), "classifier.bias (torch.int64"),
        (lambda s: s.update({"conds_std": torch.zeros(1, 512)}), "conds_std must be positive"),
    ],
    ids=["missing", "mis-shaped weight", "mis-shaped stats", "unexpected", "integer", "zero std"],
)
def test_bad_state_names_file_and_tensor(change, listed):
    state = reference_state(golden())
    change(state)
    with pytest.raises(InputError, match="cls.ckpt") as info:
        classifier_from_reference(state, "cls.ckpt")
    assert listed in str(info.value)


def test_every_problem_is_listed():
    state = reference_state(golden())
    del state["classifier.bias"]
    state["conds_std"] = torch.ones(3)
    state["extra"] = torch.ones(1)
    with pytest.raises(InputError) as info:
        classifier_from_reference(state, "cls.ckpt")
    message = str(info.value)
    assert "classifier.bias" in message and "conds_std (3,)" in message and "extra" in message
