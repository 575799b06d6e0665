"""`dvc.yaml` declares the params every stage reads: each stage command runs on real artifacts with a
params object that records which sections it touches, and every one must be a declared param (the
section, or fields of it) of that stage, so changing it makes `dvc status` report the stage."""

from __future__ import annotations

import copy
import importlib

import pytest
import yaml

from pipeline.core.config import read_params
from pipeline.params import Params, load_params
from stages.cli import STAGE_MODULES, main

from .conftest import MICRO_PARAMS, SAMPLE_FRAMES
from .test_dvc_dependencies import _commands, _stages
from .test_wrong_folders import EDITS, outputs  # noqa: F401 - shared fixture


class RecordingParams:
    """A `Params` that notes every top-level section read from it."""

    def __init__(self, params: Params, seen: set[str]):
        self._params, self._seen = params, seen

    def __getattr__(self, name: str):
        if name in Params.model_fields:
            self._seen.add(name)
        return getattr(self._params, name)


def _declared_sections(stage: dict) -> set[str]:
    return {entry.split(".")[0] for entry in stage.get("do", stage).get("params", [])}


def _run_recording(monkeypatch, arguments: list[str]) -> set[str]:
    seen: set[str] = set()
    module = importlib.import_module(STAGE_MODULES[arguments[0]])
    # Stages that read a few sections validate a view of them (read_params); the others the whole file.
    if hasattr(module, "read_params"):
        monkeypatch.setattr(module, "read_params",
                            lambda path, schema: RecordingParams(read_params(path, schema), seen))
    if hasattr(module, "load_params"):
        monkeypatch.setattr(module, "load_params", lambda path: RecordingParams(load_params(path), seen))
    with pytest.raises(SystemExit) as done:
        main(arguments)
    assert done.value.code == 0
    return seen


def test_every_params_section_a_stage_reads_is_declared(outputs, sample_clip, micro_model, tmp_path,  # noqa: F811
                                                       monkeypatch):
    _, checkpoint, folders = outputs
    params_file = tmp_path / "params.yaml"
    params = copy.deepcopy(MICRO_PARAMS) | {"edits": EDITS, "extract": {"max_frames": SAMPLE_FRAMES}}
    # One process: the recording wrapper around the params cannot travel to spawned training workers.
    params["train"] = params["train"] | {"steps": 1, "processes": 1}
    params_file.write_text(yaml.safe_dump(params))
    out = tmp_path / "out"
    f = {name: str(path) for name, path in folders.items()}
    runs = {
        "extract": ["extract", str(sample_clip), f"{out}/extract"],
        "align": ["align", f["extract"], f"{out}/align"],
        "encode": ["encode", f["align"], f"{out}/encode"],
        "train": ["train", f"{out}/train", "--data-root", str(micro_model.data_root),
                  "--state-file", f"{out}/state.safetensors"],
        "invert": ["invert", checkpoint, f["align"], f["encode"], f"{out}/invert"],
        "edit-frames": ["edit-frames", "anon", checkpoint, f["align"], f["encode"], f["invert"], f"{out}/edit"],
        "render": ["render", f["extract"], f["align"], f["invert"], f["edit"], f"{out}/render"],
        "evaluate": ["evaluate", f["align"], f["encode"], f["invert"], f["edit"], f["render"], f"{out}/evaluate"],
        "fit-classifiers": ["fit-classifiers", f"{out}/classifiers", "--data-root", str(micro_model.data_root)],
    }
    read = {command: _run_recording(monkeypatch, [*arguments, "--params", str(params_file), "--quiet"])
            for command, arguments in runs.items()}
    # The recording sees through the stage functions: an edit reads its spec, the edit settings and the
    # align/encode sections its reference and motion edits use.
    assert {"edits", "edit"} <= read["edit-frames"] and read["invert"] == {"conventions", "invert"}
    for name, stage in _stages().items():
        needed = set().union(*(read[command] for command in _commands(stage) if command in read))
        missing = needed - _declared_sections(stage)
        assert not missing, f"dvc.yaml stage {name!r} reads params {sorted(missing)} without declaring them"
