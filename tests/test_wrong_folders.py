"""Every stage command handed an empty folder, or another stage's output, where it expects an artifact
stops with one `error:` line naming the file it looked for, exits non-zero, and writes nothing."""

from __future__ import annotations

import copy

import pytest
import yaml

from stages.cli import main

from .conftest import MICRO_PARAMS

EDITS = {"anon": {"kind": "reference", "away": True, "strength": 1.0}}


@pytest.fixture(scope="module")
def outputs(micro_model, micro_inversion, sample_run, tmp_path_factory):
    """A real output of every stage, and the params they were made with."""
    from stages.edit import edit_video
    from stages.render import render_video

    root = tmp_path_factory.mktemp("wrong-folders")
    params_file = root / "params.yaml"
    params_file.write_text(yaml.safe_dump(copy.deepcopy(MICRO_PARAMS) | {"edits": EDITS}))
    edit, render = root / "edit", root / "render"
    edit_video("anon", micro_model.settings(edits=EDITS), micro_model.checkpoint, sample_run.align, sample_run.encode,
               micro_inversion, edit, progress=False)
    render_video(sample_run.extract, sample_run.align, micro_inversion, edit, render, micro_model.settings().render,
                 progress=False)
    folders = {"extract": sample_run.extract, "align": sample_run.align, "encode": sample_run.encode,
               "invert": micro_inversion, "edit": edit, "render": render}
    return params_file, str(micro_model.checkpoint), folders


# Each command with the artifact folders it reads, by the stage that makes them.
COMMANDS = {
    "align": ["align", "{extract}"],
    "encode": ["encode", "{align}"],
    "invert": ["invert", "{checkpoint}", "{align}", "{encode}"],
    "edit-frames": ["edit-frames", "anon", "{checkpoint}", "{align}", "{encode}", "{invert}"],
    "render": ["render", "{extract}", "{align}", "{invert}", "{edit}"],
    "evaluate": ["evaluate", "{align}", "{encode}", "{invert}", "{edit}", "{render}"],
}
CASES = [(command, argument.strip("{}")) for command, arguments in COMMANDS.items() for argument in arguments
         if argument.startswith("{") and argument != "{checkpoint}"]


@pytest.mark.parametrize(("command", "slot"), CASES)
@pytest.mark.parametrize("replacement", ["empty", "other stage"])
def test_wrong_folder_is_one_error_line(outputs, command, slot, replacement, tmp_path, capsys):
    params_file, checkpoint, folders = outputs
    empty = tmp_path / "empty"
    empty.mkdir()
    other = folders["align" if slot != "align" else "encode"]
    values = {"checkpoint": checkpoint, **{name: str(path) for name, path in folders.items()}}
    values[slot] = str(empty if replacement == "empty" else other)
    out = tmp_path / "out"
    arguments = [argument.format(**values) for argument in COMMANDS[command]]
    with pytest.raises(SystemExit) as done:
        main([*arguments, str(out), "--params", str(params_file), "--quiet"])
    assert done.value.code == 1
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: ") and "\n" not in error and "Traceback" not in error
    assert values[slot] in error and "not found" in error
    assert not out.exists()


def test_train_with_an_empty_data_root_is_one_error_line(outputs, tmp_path, capsys):
    params_file, _, _ = outputs
    with pytest.raises(SystemExit) as done:
        main(["train", str(tmp_path / "model"), "--data-root", str(tmp_path), "--params", str(params_file),
              "--state-file", str(tmp_path / "state.safetensors"), "--quiet"])
    assert done.value.code == 1
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: ") and "\n" not in error and "not found" in error
    assert not (tmp_path / "model").exists()
