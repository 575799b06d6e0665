"""Tests of attribute-classifier fitting and label-table parsing."""

import numpy as np
import pandas as pd
import pytest

from pipeline.editing.classifiers import fit_attribute_classifiers, read_label_table


def _synthetic(n: int = 400, dim: int = 32, seed: int = 0):
    """Anisotropic unit vectors labelled by the sign of a hidden direction, with a little label noise."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, dim)) * np.linspace(0.5, 2.0, dim)  # unequal per-dimension std
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    hidden = rng.normal(size=dim)
    hidden /= np.linalg.norm(hidden)
    margin = x @ hidden + 0.02 * rng.normal(size=n)
    other = rng.normal(size=dim)
    labels = pd.DataFrame({"smiling": (margin > 0).astype(int), "hat": (x @ other > 0.1).astype(int)})
    return x.astype(np.float32), labels, hidden


def test_fit_recovers_hidden_direction():
    x, labels, hidden = _synthetic()
    clf, aucs = fit_attribute_classifiers(x, labels, seed=0)
    assert clf.attributes == ["smiling", "hat"]
    assert aucs["smiling"] > 0.9 and aucs["hat"] > 0.9
    # Weights act on standardised codes; in the original space the direction is w / std.
    direction = clf.weights[0] / clf.std
    assert direction @ hidden / np.linalg.norm(direction) > 0.8
    np.testing.assert_allclose(clf.mean, x.mean(axis=0), atol=1e-6)  # statistics of the whole set
    clf2, _ = fit_attribute_classifiers(x, labels, seed=0)
    np.testing.assert_array_equal(clf.weights, clf2.weights)


def test_fit_rejects_single_class_attribute():
    x, labels, _ = _synthetic(n=50)
    labels["bald"] = 0
    with pytest.raises(ValueError, match="'bald'"):
        fit_attribute_classifiers(x, labels)


def test_read_celeba_format(tmp_path):
    path = tmp_path / "list_attr_celeba.txt"
    path.write_text("2\nEyeglasses Smiling\n000001.jpg -1  1\n000002.jpg  1 -1\n")
    table = read_label_table(path)
    assert list(table.columns) == ["image", "Eyeglasses", "Smiling"]
    assert table["image"].tolist() == ["000001.jpg", "000002.jpg"]
    assert table["Eyeglasses"].tolist() == [0, 1] and table["Smiling"].tolist() == [1, 0]


def test_read_csv_and_parquet(tmp_path):
    frame = pd.DataFrame({"image": ["a.png", "b.png"], "Beard": [1, 0]})
    frame.to_csv(tmp_path / "labels.csv", index=False)
    frame.to_parquet(tmp_path / "labels.parquet")
    for name in ("labels.csv", "labels.parquet"):
        table = read_label_table(tmp_path / name)
        assert table["image"].tolist() == ["a.png", "b.png"] and table["Beard"].tolist() == [1, 0]
    # Kaggle's CelebA CSV: image_id column and -1/1 values.
    pd.DataFrame({"image_id": ["c.jpg"], "Bald": [-1]}).to_csv(tmp_path / "kaggle.csv", index=False)
    assert read_label_table(tmp_path / "kaggle.csv")["Bald"].tolist() == [0]


@pytest.mark.parametrize(
    "name, text, problem",
    [
        ("count.txt", "3\nA B\nx.jpg 1 -1\n", "header says 3 images"),
        ("row.txt", "1\nA B\nx.jpg 1\n", "row 3 has 1 values"),
        ("values.txt", "1\nA\nx.jpg 2\n", "all -1/1 or all 0/1"),
        ("noimage.csv", "path,A\nx.jpg,1\n", "no 'image' column"),
    ],
)
def test_malformed_tables(tmp_path, name, text, problem):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ValueError, match=problem) as info:
        read_label_table(path)
    message = str(info.value)
    assert str(path) in message and "\n" not in message


# ----------------------------------------------------------------------------------------------
# Classifier files that cannot be used: one InputError naming the file, whatever is wrong with it.


def _good_classifier():
    from pipeline.editing.editing import AttributeClassifier

    rng = np.random.default_rng(0)
    return AttributeClassifier(["glasses", "beard"], rng.normal(size=(2, 8)), np.zeros(2), np.zeros(8), np.ones(8))


def _tensors(**changes):
    clf = _good_classifier()
    return {"weights": clf.weights, "bias": clf.bias, "mean": clf.mean, "std": clf.std} | changes


def _write(path, tensors, attributes='["glasses", "beard"]'):
    from safetensors.numpy import save_file

    save_file(tensors, str(path), metadata=None if attributes is None else {"attributes": attributes})


def _random_bytes(path):
    path.write_bytes(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes())


def _empty(path):
    path.write_bytes(b"")


def _truncated(path):
    _good_classifier().save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _other_tensors(path):
    _write(path, {"unet.out.weight": np.zeros((3, 3), np.float32)})


def _bfloat16(path):
    import torch
    from safetensors.torch import save_file

    tensors = {name: torch.from_numpy(value).to(torch.bfloat16) for name, value in _tensors().items()}
    save_file(tensors, str(path), metadata={"attributes": '["glasses", "beard"]'})


def _wrong_shape(path):
    _write(path, _tensors(bias=np.zeros(3, np.float32)))


def _nan(path):
    weights = _good_classifier().weights.copy()
    weights[1, 3] = np.nan
    _write(path, _tensors(weights=weights))


def _no_names(path):
    _write(path, _tensors(), attributes=None)


def _names_not_a_list(path):
    _write(path, _tensors(), attributes="glasses, beard")


def _zero_std(path):
    _write(path, _tensors(std=np.zeros(8, np.float32)))


@pytest.mark.parametrize(
    ("make", "problem"),
    [
        (_random_bytes, "not a readable safetensors file"),
        (_empty, "not a readable safetensors file"),
        (_truncated, "not a readable safetensors file"),
        (_other_tensors, r"missing tensors \['weights', 'bias', 'mean', 'std'\] \(found \['unet.out.weight'\]\)"),
        (_bfloat16, "not a readable safetensors file .*bfloat16"),
        (_wrong_shape, r"bias must have shape \(2,\); got \(3,\)"),
        (_nan, r"tensors \['weights'\] hold NaN"),
        (_no_names, "no 'attributes' list"),
        (_names_not_a_list, "no 'attributes' list"),
        (_zero_std, "std must be positive"),
    ],
    ids=["random bytes", "empty", "truncated", "other tensors", "bfloat16", "wrong shape", "nan", "no names",
         "names not a list", "zero std"],
)
def test_unusable_classifier_file_is_an_input_error_naming_it(tmp_path, make, problem):
    from pipeline.core.errors import InputError
    from pipeline.editing.editing import AttributeClassifier

    path = tmp_path / "classifier.safetensors"
    make(path)
    with pytest.raises(InputError, match=problem) as info:
        AttributeClassifier.load(path)
    message = str(info.value)
    assert info.value.path == path and message.startswith(f"{path}: ") and "\n" not in message


def test_missing_classifier_file_is_an_input_error(tmp_path):
    from pipeline.core.errors import InputError
    from pipeline.editing.editing import AttributeClassifier

    with pytest.raises(InputError, match="not found") as info:
        AttributeClassifier.load(tmp_path / "absent.safetensors")
    assert info.value.path == tmp_path / "absent.safetensors"
