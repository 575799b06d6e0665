"""Progress bars that show on a terminal and stay quiet under `--quiet` and in CI logs."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def progress_bar(iterable: Iterable[T], *, enabled: bool, total: int | None = None, desc: str = "") -> Iterator[T]:
    """Wrap `iterable` in a tqdm bar unless disabled, running under CI, or not on a terminal."""
    disable: bool | None = True if (not enabled or os.environ.get("CI")) else None
    return iter(tqdm(iterable, total=total, desc=desc, disable=disable, leave=False, dynamic_ncols=True))
