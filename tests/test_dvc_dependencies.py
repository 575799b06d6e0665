"""The layering of the code (the library never imports the stages or workflows; stages never import each
other), and `dvc.yaml` declaring the code every stage runs: the project modules its `dva` command imports,
followed transitively (imports inside functions included), must each be a dependency of the stage, so a
change to any of them makes `dvc status` report the stage as changed."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pipeline.runs.code_deps import code_files
from pipeline.runs.code_deps import imported_modules as _imported_modules
from stages.cli import STAGE_MODULES

from .conftest import REPO_ROOT


def _stages() -> dict[str, dict]:
    return yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]


def _declared(stage: dict) -> set[str]:
    body = stage.get("do", stage)
    return {next(iter(dep)) if isinstance(dep, dict) else dep for dep in body.get("deps", [])}


def _commands(stage: dict) -> list[str]:
    """The `dva` subcommands a stage runs (its `cmd` may be a list of commands)."""
    cmd = stage.get("do", stage)["cmd"]
    return [line.split()[1] for line in ([cmd] if isinstance(cmd, str) else cmd)]


@pytest.mark.parametrize("name", sorted(_stages()))
def test_every_module_a_stage_runs_is_a_dependency(name):
    stage = _stages()[name]
    declared = _declared(stage)

    def covered(path: Path) -> bool:
        return any(str(path) == dep or str(path).startswith(dep.rstrip("/") + "/") for dep in declared)

    files = set().union(*(code_files(STAGE_MODULES[command]) for command in _commands(stage)))
    missing = sorted(str(path) for path in files if not covered(path))
    assert not missing, f"dvc.yaml stage {name!r} does not depend on {missing}"


def test_the_import_walk_follows_lazy_imports():
    # stages/edit.py imports the text-edit module only inside the function that runs a text edit.
    files = code_files("stages.edit")
    expected = {"pipeline/model/unet.py", "pipeline/model/diffusion.py", "pipeline/editing/text_edit.py"}
    assert {Path(name) for name in expected} <= files


def test_the_library_never_imports_the_application():
    offenders = {str(path.relative_to(REPO_ROOT)): sorted(name for name in _imported_modules(path)
                                                         if name.split(".")[0] in ("stages", "workflows"))
                 for path in (REPO_ROOT / "pipeline").rglob("*.py")}
    assert {path: names for path, names in offenders.items() if names} == {}


def test_stages_never_import_each_other():
    stages = {path.stem for path in (REPO_ROOT / "stages").glob("*.py")}
    offenders = {}
    for path in (REPO_ROOT / "stages").glob("*.py"):
        if path.stem == "cli":  # the entry point dispatches to every command
            continue
        imported = {name.split(".")[1] for name in _imported_modules(path)
                    if name.startswith("stages.") and name.split(".")[1] in stages}
        imported |= {name for name in _imported_modules(path) if name.startswith("workflows")}
        if imported:
            offenders[path.name] = sorted(imported)
    assert offenders == {}


# The layers inside pipeline/, lowest first: a module may import its own layer's modules and lower layers'.
# `pipeline/params.py` composes every concern's sections into the whole params file, so it sits on top.
PIPELINE_LAYERS = {"core": 0, "video": 1, "runs": 1, "faces": 2, "model": 3, "editing": 4, "evaluation": 4, "report": 4,
                   "params": 5}


def _layer(module: str) -> str:
    return module.split(".")[1]


def _pipeline_imports() -> dict[str, set[str]]:
    """Each pipeline module and the pipeline modules it imports (at run time)."""
    graph = {}
    for path in (REPO_ROOT / "pipeline").rglob("*.py"):
        relative = path.relative_to(REPO_ROOT).with_suffix("")
        name = ".".join(relative.parts[:-1] if relative.name == "__init__" else relative.parts)
        graph[name] = {imported for imported in _imported_modules(path)
                       if imported.startswith("pipeline.") and imported != name}
    return graph


def test_every_pipeline_module_has_a_layer():
    assert {_layer(name) for name in _pipeline_imports() if name != "pipeline"} <= set(PIPELINE_LAYERS)


def test_pipeline_layers_import_only_downwards():
    offenders = sorted(f"{name} -> {imported}" for name, imports in _pipeline_imports().items() if name != "pipeline"
                       for imported in imports if PIPELINE_LAYERS[_layer(imported)] > PIPELINE_LAYERS[_layer(name)])
    assert offenders == []


def test_same_layer_packages_do_not_import_each_other():
    # editing and evaluation share a layer: neither may depend on the other, or the order would be a lie.
    offenders = sorted(f"{name} -> {imported}" for name, imports in _pipeline_imports().items() if name != "pipeline"
                       for imported in imports if _layer(imported) != _layer(name)
                       and PIPELINE_LAYERS[_layer(imported)] == PIPELINE_LAYERS[_layer(name)])
    assert offenders == []


def test_pipeline_imports_have_no_cycles():
    graph = _pipeline_imports()
    state: dict[str, str] = {}

    def visit(name: str, trail: list[str]) -> list[str] | None:
        state[name] = "open"
        for imported in sorted(graph.get(name, ())):
            if state.get(imported) == "open":
                return trail + [name, imported]
            if imported not in state and (cycle := visit(imported, trail + [name])):
                return cycle
        state[name] = "done"
        return None

    cycles = [cycle for name in sorted(graph) if name not in state and (cycle := visit(name, []))]
    assert cycles == []


def test_training_runs_no_editing_code():
    # A change to an edit kind or an expression constant must not retrain the model (dvc.yaml follows imports).
    assert not [path for path in code_files("stages.train") if path.parts[:2] == ("pipeline", "editing")]
