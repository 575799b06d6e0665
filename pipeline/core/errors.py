"""User-facing errors: expected failures that the CLI prints as one line, without a traceback."""

from __future__ import annotations

from pathlib import Path


class DvaError(Exception):
    """An expected failure (bad input, missing weights, bad params) with a one-line message."""


class InputError(DvaError):
    """A user-supplied file is missing, empty, corrupt or unusable."""

    def __init__(self, path: Path | str, problem: str):
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")


class DriverError(InputError):
    """The driving video of a motion edit is missing, unreadable or has no face."""

    def __init__(self, path: Path | str, problem: str):
        super().__init__(path, f"driving video: {problem}")


class ParamsError(DvaError):
    """A `params.yaml` key is unknown, mistyped or out of range."""


class MissingWeightsError(DvaError):
    """Pretrained weights named by a parameter are not on disk (nothing is ever downloaded)."""

    def __init__(self, param: str, path: Path | str | None):
        expected = str(path) if path else "(not set)"
        super().__init__(
            f"parameter {param} must point to a local weights file; expected {expected} "
            "(weights are never downloaded at run time)"
        )
