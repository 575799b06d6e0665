"""The code a module runs: its project source files, found by following imports, and their fingerprint.

The same walk derives `dvc.yaml`'s code deps (tests/test_dvc_dependencies.py checks them) and puts a
fingerprint of each stage's code into the work store's keys, so after a code change `dva edit` and
`dva batch` recompute what the changed code produces, as `dvc repro` does. Modules are named, never
imported: the walk reads the files.
"""

from __future__ import annotations

import ast
import functools
import hashlib
from pathlib import Path

# The folder holding the `pipeline`, `stages` and `workflows` packages (the checkout, or site-packages).
REPO_ROOT = Path(__file__).resolve().parents[2]
PROJECT_PACKAGES = ("pipeline", "stages", "workflows")


def module_file(name: str, root: Path = REPO_ROOT) -> Path | None:
    """The source file of a project module (`pipeline.x` or a package's `__init__.py`), if there is one."""
    base = Path(root).joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _runtime_nodes(tree: ast.AST):
    """Every node of `tree` except those under `if TYPE_CHECKING:`."""
    pending = [tree]
    while pending:
        node = pending.pop()
        yield node
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            pending += node.orelse
            continue
        pending += ast.iter_child_nodes(node)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imported_modules(path: Path, root: Path = REPO_ROOT) -> set[str]:
    """Project modules named by the import statements of one file (`from pkg import mod` counts `pkg.mod`).

    Imports inside functions count: a stage may import a module only on the path that needs it. Imports
    under `if TYPE_CHECKING:` do not: they name types for annotations and never run.
    """
    names = set()
    for node in _runtime_nodes(ast.parse(Path(path).read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return {name for name in names if name.split(".")[0] in PROJECT_PACKAGES and module_file(name, root)}


def code_files(module: str, root: Path = REPO_ROOT) -> set[Path]:
    """Every project source file `module` runs, relative to `root`, following imports transitively
    (packages' `__init__.py` too)."""
    root = Path(root)
    seen: set[Path] = set()
    pending = [module]
    while pending:
        name = pending.pop()
        parts = name.split(".")
        for depth in range(1, len(parts) + 1):
            path = module_file(".".join(parts[:depth]), root)
            if path is not None and path not in seen:
                seen.add(path)
                pending += sorted(imported_modules(path, root))
    return {path.relative_to(root) for path in seen}


@functools.cache
def code_fingerprint(module: str, root: Path | None = None) -> str:
    """sha256 of the paths and bytes of every file `module` runs (`root`: the project, by default).

    Cached for the life of the process: the code a process runs does not change under it.
    """
    root = Path(root) if root is not None else REPO_ROOT
    if module_file(module, root) is None:
        # A misspelt name would otherwise fingerprint only its package, missing every change that matters.
        raise ValueError(f"{module}: no such project module under {root}")
    digest = hashlib.sha256()
    for path in sorted(code_files(module, root)):
        digest.update(path.as_posix().encode() + b"\0")
        digest.update(hashlib.sha256((root / path).read_bytes()).digest())
    return digest.hexdigest()
