"""Edit kinds as objects: one module per kind, every kind listed once, and nothing else tests which kind it has."""

from __future__ import annotations

import ast
import importlib
import pkgutil
import re
from pathlib import Path

import numpy as np
import pytest

from pipeline.core.errors import ParamsError
from pipeline.editing import kinds
from pipeline.editing.kinds import EDIT_KINDS, EditKind, parse_edit

from .conftest import REPO_ROOT

# A minimal valid spec of every kind. A new kind must add one here, or the tests below fail.
EXAMPLES = {
    "classifier": {"kind": "classifier", "attributes": {"Smiling": 1.0}},
    "text": {"kind": "text", "target_text": "face with a beard", "clip_weights": "models/clip.pt"},
    "reference": {"kind": "reference", "reference": "data/raw/face.jpg"},
    "motion": {"kind": "motion", "driver": "data/raw/driver.mp4"},
    "expression": {"kind": "expression", "expressions": {"smile": 0.5}},
    "compose": {"kind": "compose", "edits": [{"kind": "classifier", "attributes": {"Smiling": 1.0}},
                                             {"kind": "expression", "expressions": {"smile": 0.5}}]},
}


def _kind_tag(kind: type[EditKind]) -> str:
    return kind.model_fields["kind"].annotation.__args__[0]


def test_every_kind_module_holds_one_listed_kind():
    modules = {info.name for info in pkgutil.iter_modules(kinds.__path__)} - {"base"}
    defined = {}
    for module_name in modules:
        module = importlib.import_module(f"pipeline.editing.kinds.{module_name}")
        own = [value for value in vars(module).values() if isinstance(value, type) and issubclass(value, EditKind)
               and value is not EditKind and value.__module__ == module.__name__]
        assert len(own) == 1, f"pipeline/editing/kinds/{module_name}.py defines {own}, not one edit kind"
        defined[module_name] = own[0]
    assert set(defined.values()) == set(EDIT_KINDS)
    assert len({_kind_tag(kind) for kind in EDIT_KINDS}) == len(EDIT_KINDS)


def test_every_kind_has_an_example_and_builds_from_it():
    assert set(EXAMPLES) == {_kind_tag(kind) for kind in EDIT_KINDS}
    for tag, raw in EXAMPLES.items():
        spec = parse_edit(raw)
        assert _kind_tag(type(spec)) == tag
        # Every kind answers every question the stages and the work store ask.
        assert all(isinstance(path, Path) for path in spec.input_files())
        assert all(isinstance(path, Path) for path in spec.weight_files().values())
        assert spec.driven_by() is None or isinstance(spec.driven_by(), str)
        assert spec.identity_targets({}) == {}


def test_what_each_kind_reads_is_reported_for_keys_and_lineage():
    assert parse_edit(EXAMPLES["classifier"]).weight_files() == {
        "classifier": Path("data/classifiers/classifier.safetensors")}
    assert parse_edit(EXAMPLES["text"]).weight_files() == {"clip": Path("models/clip.pt")}
    assert parse_edit(EXAMPLES["reference"]).input_files() == [Path("data/raw/face.jpg")]
    assert parse_edit({"kind": "reference", "away": True}).input_files() == []
    assert parse_edit(EXAMPLES["motion"]).driven_by() == "data/raw/driver.mp4"
    assert parse_edit(EXAMPLES["expression"]).driven_by() is None
    reference = parse_edit(EXAMPLES["reference"]).identity_targets({"reference_identity": [0.6, 0.8]})
    np.testing.assert_allclose(reference["reference"], [0.6, 0.8])


def test_a_kind_that_does_not_say_how_it_edits_cannot_be_built():
    class Unfinished(EditKind):
        kind: str = "unfinished"

    with pytest.raises(TypeError, match="identity_edit"):
        Unfinished()


def test_an_unknown_kind_is_one_params_error():
    with pytest.raises(ParamsError, match=r"^--edit: .*'classifier', 'text', 'reference', 'motion', 'expression'"):
        parse_edit({"kind": "hairstyle"}, "--edit")


def test_nothing_outside_the_kind_modules_tests_which_kind_it_has():
    names = {kind.__name__ for kind in EDIT_KINDS}
    offenders = []
    for folder in ("pipeline", "stages", "workflows", "benchmarks"):
        for path in (REPO_ROOT / folder).rglob("*.py"):
            if path.parent == REPO_ROOT / "pipeline" / "editing" / "kinds":
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "isinstance" and len(node.args) == 2:
                    tested = set(re.findall(r"\w+", ast.unparse(node.args[1])))
                    if tested & names:
                        offenders.append(f"{path.relative_to(REPO_ROOT)}:{node.lineno}")
    assert offenders == []


def _context(edit: dict, align: dict | None = None):
    import torch

    from pipeline.editing.kinds import FirstFrame, IdentityContext
    from pipeline.editing.settings import EditParams
    from pipeline.faces.settings import AlignParams, EncodeParams

    mask = np.zeros((8, 8), np.uint8)
    mask[2:6, 2:6] = 255
    frame = FirstFrame(np.zeros((8, 8, 3), np.uint8), np.zeros(102, np.float32), mask, np.ones(4, np.float32))
    return IdentityContext("beard", None, np.ones(4, np.float32), frame, torch.device("cpu"),
                           AlignParams(**(align or {})), EncodeParams(), EditParams(**edit), False)


def test_the_text_edits_l1_mask_follows_the_edit_settings():
    from pipeline.core.errors import MissingWeightsError
    from pipeline.editing.kinds import TextEdit

    np.testing.assert_array_equal(TextEdit._l1_mask(_context({})), _context({}).first_frame.mask / 255)
    # The reference's parsed image foreground needs the parser: a missing one names its parameter.
    with pytest.raises(MissingWeightsError, match="align.parsing_weights"):
        TextEdit._l1_mask(_context({"text_l1_mask": "parsed_image"}))
