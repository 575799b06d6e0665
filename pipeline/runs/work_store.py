"""The work store of `dva edit` and `dva batch`: every stage output in `<root>/<stage>/<key>/`, built once.

Keys come from `pipeline.runs.store`: they hash the video, the parameters, the files the parameters name
and the code, so one root holds any number of videos, edits and code versions side by side. A folder
is complete when it holds its lineage record: the stage functions write into a temporary folder and
rename it into place (`pipeline.core.atomic`), so a partial output never looks complete. Each output
is built under a file lock (`<root>/.locks/<stage>-<key>.lock`): two runs (processes or threads) that
need the same output build it once; the other waits for the lock and then finds the folder complete.
"""

from __future__ import annotations

import fcntl
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from pathlib import Path

from pipeline.runs.lineage import LINEAGE_FILE

LOCKS = ".locks"


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on `path` (created, with its folder, when missing) for the block.

    `flock` locks belong to an open file, so threads of one process exclude each other as processes
    do, and the kernel releases the lock of a killed process: a crash never leaves an output locked.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def is_complete(folder: Path) -> bool:
    """Whether a stage output folder is complete: it holds its lineage record."""
    return (Path(folder) / LINEAGE_FILE).is_file()


class WorkStore:
    """Stage outputs under `root`, one folder per stage and content key, each built once under a lock."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def folder(self, stage: str, key: str) -> Path:
        """Where the output of `stage` with content key `key` lives (complete or not)."""
        return self.root / stage / key

    def lock(self, stage: str, key: str):
        """A context manager holding the lock of one output (any name: `dva batch` locks what it publishes)."""
        return file_lock(self.root / LOCKS / f"{stage}-{key}.lock")

    def build_once(self, stage: str, key: str, build: Callable[[Path], object]) -> Path:
        """The folder of `stage`'s output `key`, after `build(folder)` made it unless it was complete."""
        return self.build_all(stage, {key: key}, lambda missing: build(missing[key]))[key]

    def build_all(self, stage: str, keys: Mapping[str, str],
                  build: Callable[[dict[str, Path]], object]) -> dict[str, Path]:
        """Folders of several outputs of one stage (`keys`: name -> key), by name.

        `build(missing)` makes the incomplete ones in one call (`missing`: name -> folder), so they can
        share work (the edits of one video are decoded in one pass). Keys are locked in one order for
        every caller, so two callers with overlapping keys cannot deadlock.
        """
        folders = {name: self.folder(stage, key) for name, key in keys.items()}
        with ExitStack() as locks:
            for key in sorted(set(keys.values())):
                locks.enter_context(self.lock(stage, key))
            missing = {name: folder for name, folder in folders.items() if not is_complete(folder)}
            if missing:
                build(missing)
        return folders
