"""The layering of the code (the library never imports the stages or workflows; stages never import each
other), and `dvc.yaml` declaring the code every stage runs: the project modules its `dva` command imports,
followed transitively (imports inside functions included), must each be a dependency of the stage, so a
change to any of them makes `dvc status` report the stage as changed."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from stages.cli import STAGE_MODULES

from .conftest import REPO_ROOT

PROJECT_PACKAGES = ("pipeline", "stages", "workflows")


def _module_file(name: str) -> Path | None:
    """The source file of a project module (`pipeline.x` or a package's `__init__.py`)."""
    base = REPO_ROOT.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imported_modules(path: Path) -> set[str]:
    """Project modules named by the import statements of one file (`from pkg import mod` counts `pkg.mod`)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return {name for name in names if name.split(".")[0] in PROJECT_PACKAGES and _module_file(name)}


def code_files(module: str) -> set[Path]:
    """Every project source file `module` runs, following imports transitively (packages' __init__ too)."""
    seen: set[Path] = set()
    pending = [module]
    while pending:
        name = pending.pop()
        parts = name.split(".")
        for depth in range(1, len(parts) + 1):
            path = _module_file(".".join(parts[:depth]))
            if path is not None and path not in seen:
                seen.add(path)
                pending += sorted(_imported_modules(path))
    return {path.relative_to(REPO_ROOT) for path in seen}


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
