"""Every edit kind, one module each; this list is the only place that names them all.

Adding a kind: a module here with an :class:`EditKind` subclass (its schema with a ``kind`` literal and the
methods of :mod:`pipeline.editing.kinds.base`), added to :data:`EDIT_KINDS`, and its tests
(`tests/test_edit_kinds.py` checks that every module here is listed and every kind builds).
"""

from __future__ import annotations

from typing import Annotated, Union

from pydantic import Field, TypeAdapter, ValidationError

from pipeline.core.config import format_error
from pipeline.core.errors import ParamsError
from pipeline.editing.kinds.base import EditKind, FirstFrame, IdentityContext, MotionContext
from pipeline.editing.kinds.classifier import ClassifierEdit
from pipeline.editing.kinds.compose import ComposeEdit
from pipeline.editing.kinds.expression import ExpressionEdit
from pipeline.editing.kinds.motion import MotionEdit
from pipeline.editing.kinds.reference import ReferenceEdit
from pipeline.editing.kinds.text import TextEdit

EDIT_KINDS: tuple[type[EditKind], ...] = (ClassifierEdit, TextEdit, ReferenceEdit, MotionEdit, ExpressionEdit,
                                          ComposeEdit)

EditSpec = Annotated[Union[EDIT_KINDS], Field(discriminator="kind")]  # noqa: UP007 - a union built from a tuple

# A composed edit's parts are edits of any kind: its schema is complete once the union exists.
ComposeEdit.model_rebuild(_types_namespace={"EditSpec": EditSpec})

_EDIT_SPEC = TypeAdapter(EditSpec)


def parse_edit(raw: object, source: str = "edit", context: dict | None = None) -> EditKind:
    """An edit spec mapping validated into its kind; a ParamsError naming `source` and the key otherwise.

    `context`: :data:`pipeline.core.config.ONE_OFF` for a one-off run's spec (absolute weights paths allowed).
    """
    try:
        return _EDIT_SPEC.validate_python(raw, context=context)
    except ValidationError as exc:
        raise ParamsError(f"{source}: {format_error(exc.errors()[0])}") from None


__all__ = ["EDIT_KINDS", "EditKind", "EditSpec", "FirstFrame", "IdentityContext", "MotionContext", "parse_edit",
           "ClassifierEdit", "TextEdit", "ReferenceEdit", "MotionEdit", "ExpressionEdit", "ComposeEdit"]
