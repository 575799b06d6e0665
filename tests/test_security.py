"""Security properties checked on the source itself: weights are never unpickled, subprocesses take
argument lists, YAML is parsed safely; and paths from params cannot leave the project's folders."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from pipeline.core.errors import ParamsError
from pipeline.params import parse_params

from .conftest import REPO_ROOT

SOURCES = sorted(path for folder in ("pipeline", "stages", "workflows", "benchmarks") for path in (REPO_ROOT / folder).rglob("*.py"))
SUBPROCESS_CALLS = {"run", "Popen", "call", "check_call", "check_output"}


# Modules allowed to open a TorchScript archive (OpenAI's CLIP weights are distributed as one).
JIT_ARCHIVE_READERS = {"pipeline/editing/text_edit.py"}


def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            function = node.func
            name = function.attr if isinstance(function, ast.Attribute) else getattr(function, "id", "")
            owner = function.value.id if isinstance(function, ast.Attribute) and isinstance(function.value,
                                                                                              ast.Name) else ""
            yield owner, name, node


def _keyword(node: ast.Call, name: str):
    return next((keyword.value for keyword in node.keywords if keyword.arg == name), None)


@pytest.mark.parametrize("source", SOURCES, ids=lambda path: str(path.relative_to(REPO_ROOT)))
def test_source_loads_and_runs_nothing_unsafely(source):
    tree = ast.parse(source.read_text(), filename=str(source))
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))
                for alias in node.names} | {node.module.split(".")[0] for node in ast.walk(tree)
                                            if isinstance(node, ast.ImportFrom) and node.module}
    assert not imported & {"pickle", "dill", "cloudpickle", "marshal", "shelve"}
    for owner, name, node in _calls(tree):
        where = f"{source.name}:{node.lineno}"
        if owner == "torch" and name == "load":
            flag = _keyword(node, "weights_only")
            assert isinstance(flag, ast.Constant) and flag.value is True, f"{where}: torch.load without weights_only"
        if owner in ("np", "numpy") and name == "load":
            flag = _keyword(node, "allow_pickle")
            assert flag is None or (isinstance(flag, ast.Constant) and flag.value is False), where
        if owner == "yaml":
            assert name not in ("load", "unsafe_load", "full_load"), f"{where}: yaml.{name}"
        if owner == "subprocess" and name in SUBPROCESS_CALLS:
            shell = _keyword(node, "shell")
            assert shell is None or (isinstance(shell, ast.Constant) and shell.value is False), f"{where}: shell"
            command = node.args[0] if node.args else _keyword(node, "args")
            assert not isinstance(command, (ast.Constant, ast.JoinedStr, ast.BinOp)), f"{where}: command string"
        if owner == "os" and name in ("system", "popen"):
            pytest.fail(f"{where}: os.{name} runs a shell")
        if ast.unparse(node.func) == "torch.jit.load":
            # TorchScript archives hold code: only OpenAI's CLIP file is read this way, and only its tensors kept.
            assert source.relative_to(REPO_ROOT).as_posix() in JIT_ARCHIVE_READERS, f"{where}: torch.jit.load"


@pytest.mark.parametrize("params, key", [
    ({"videos": {"v": {"path": "/etc/passwd"}}}, "videos.v.path"),
    ({"videos": {"v": {"path": "data/../../secret.mp4"}}}, "videos.v.path"),
    ({"edits": {"e": {"kind": "reference", "reference": "../face.png"}}}, "edits.e"),
    ({"edits": {"e": {"kind": "classifier", "classifier": "/tmp/c.safetensors", "attributes": {"Smiling": 1}}}},
     "edits.e"),
    ({"edits": {"e": {"kind": "text", "target_text": "x", "clip_weights": "/opt/clip.pt"}}}, "edits.e"),
    ({"align": {"fan_weights": "/home/me/fan.pth"}}, "align.fan_weights"),
    ({"encode": {"arcface_weights": "models/../../w600k.onnx"}}, "encode.arcface_weights"),
    ({"fit_classifiers": {"labels": "/data/celeba/list_attr_celeba.txt"}}, "fit_classifiers"),
])
def test_paths_in_params_cannot_leave_the_project(params, key):
    with pytest.raises(ParamsError, match=key) as info:
        parse_params(params)
    assert "must" in str(info.value) and "\n" not in str(info.value)


def test_paths_inside_the_project_are_accepted():
    params = parse_params({"align": {"fan_weights": "models/2DFAN4.pth"},
                           "edits": {"e": {"kind": "reference", "reference": "data/refs/face.png"}}})
    assert params.align.fan_weights == "models/2DFAN4.pth"
    assert Path(params.edits["e"].reference) == Path("data/refs/face.png")
