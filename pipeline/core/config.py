"""Reading and validating `params.yaml`: the section base class, path rules and the loader.

Each concern declares its own sections next to its code (`pipeline/video/settings.py`,
`pipeline/faces/settings.py`, `pipeline/model/settings.py`, `pipeline/editing/settings.py`, the edit
kinds in `pipeline/editing/kinds/`); `pipeline/params.py` composes them into the whole file. A stage that
reads only some sections validates a view of just those (a :class:`ParamsView`), so its code, and so
its DVC dependencies, do not include the schemas of sections it never reads.
"""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath
from typing import Annotated, TypeVar

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationError, ValidationInfo

from pipeline.core.conventions import apply_conventions
from pipeline.core.errors import ParamsError

VIDEO_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")

# Every top-level key of params.yaml. A view validates only its own sections, but a key that no
# section has is a typo wherever it is read.
TOP_LEVEL_KEYS = ("conventions", "videos", "drivers", "extract", "align", "encode", "model", "train", "invert",
                  "fit_classifiers", "edit", "edits", "render", "evaluate")

WEIGHT_ROOTS = ("models", "data")

# Validation context of a one-off run (`dva edit`): weights files may then be named by absolute path (a
# model in a download folder). DVC stages validate without it: their weights stay relative, inside the
# project, so `dvc.yaml` can track them.
ONE_OFF = {"absolute_weights": True}


class Section(BaseModel):
    """One section of `params.yaml`: unknown keys are errors, values are frozen once validated."""

    # inf/nan are valid YAML (.inf, .nan) but meaningless for every parameter here, and slip
    # through range checks (nan compares false, inf passes ge=0) to crash or silently misbehave.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class ParamsView(BaseModel):
    """The sections of `params.yaml` one stage reads; the other sections are left to their stages."""

    model_config = ConfigDict(extra="ignore", frozen=True, allow_inf_nan=False)


def safe_relative_path(value: str, root: str | tuple[str, ...] = "data") -> str:
    """Reject paths that are absolute or escape the project's `root` folder(s); return the normalised path.

    Paths in params files and manifests are data, and data must not point the pipeline at files
    outside the project (a symlink under `data/` or `models/` is the way to use files kept elsewhere).
    """
    roots = (root,) if isinstance(root, str) else root
    where = " or ".join(f"{name}/" for name in roots)
    path = PurePosixPath(value)
    if path.is_absolute() or ".." in path.parts:
        raise ValueError(f"path {value!r} must be relative and stay inside {where}")
    if path.parts[:1] not in [(name,) for name in roots]:
        raise ValueError(f"path {value!r} must lie under {where}")
    return str(path)


def _data_path(value: str | None) -> str | None:
    return None if value is None else safe_relative_path(value)


def _weights_path(value: str | None, info: ValidationInfo) -> str | None:
    if value is None:
        return None
    if PurePosixPath(value).is_absolute() and (info.context or {}).get("absolute_weights"):
        return value
    return safe_relative_path(value, WEIGHT_ROOTS)


DataPath = Annotated[str, AfterValidator(_data_path)]
WeightsPath = Annotated[str, AfterValidator(_weights_path)]

Schema = TypeVar("Schema", bound=BaseModel)


def format_error(error: dict) -> str:
    """One pydantic error as `key.path: message`."""
    key = ".".join(str(part) for part in error["loc"]) or "(top level)"
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        message = "unknown key"
    return f"{key}: {message}"


def parse_params(raw: object, schema: type[Schema], source: str = "params.yaml",
                 context: dict | None = None) -> Schema:
    """Validate an already-loaded params mapping against `schema`, its convention's defaults filled in
    (`pipeline/core/conventions.py`); errors name the offending key. `context`: :data:`ONE_OFF` or None."""
    if not isinstance(raw, dict):
        raise ParamsError(f"{source}: expected a mapping at the top level")
    unknown = [key for key in raw if key not in TOP_LEVEL_KEYS]
    if unknown:
        raise ParamsError(f"{source}: {unknown[0]}: unknown key")
    try:
        return schema.model_validate(apply_conventions(raw), context=context)
    except ValidationError as exc:
        raise ParamsError(f"{source}: {format_error(exc.errors()[0])}") from None


def read_params(path: Path, schema: type[Schema], context: dict | None = None) -> Schema:
    """Read a params file and validate it against `schema` (the whole file or a stage's view)."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: params file not found")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    return parse_params(raw, schema, str(path), context)


def override_params(params: Schema, section: str, option: str, **values: object) -> Schema:
    """`params` with `values` set in `section`, validated as the file is (a CLI option's override).

    An invalid combination is a ParamsError naming the option, e.g. ``--steps 1`` with the bdia sampler.
    """
    updated = params.model_dump() | {section: getattr(params, section).model_dump() | values}
    try:
        return type(params).model_validate(updated)
    except ValidationError as exc:
        shown = " ".join(f"{option} {value}" for value in values.values())
        raise ParamsError(f"{shown}: {format_error(exc.errors()[0])}") from None
