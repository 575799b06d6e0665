"""Video reading and writing through PyAV: probing, streaming decode, lossless frame files.

Frames are handled as RGB uint8 arrays of shape (H, W, 3) in display orientation (container
rotation applied). Decoding streams frame by frame, so memory does not grow with video length.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from pipeline.errors import InputError

# FFV1 with a packed RGB layout is lossless for 8-bit RGB (yuv444p would round colours).
LOSSLESS_CODEC = "ffv1"
LOSSLESS_PIX_FMT = "bgr0"
MAX_PIXELS = 8192 * 8192


@dataclass(frozen=True)
class VideoMeta:
    """What render needs to reproduce the source: geometry, timing and audio."""

    width: int
    height: int
    fps: float
    time_base: str
    duration: float
    frame_count: int
    rotation: int
    pix_fmt: str
    codec: str
    has_audio: bool
    audio_codec: str | None
    audio_sample_rate: int | None
    audio_channels: int | None

    def to_json(self, path: Path) -> None:
        """Write the meta as indented JSON."""
        Path(path).write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def from_json(cls, path: Path) -> "VideoMeta":
        """Read a meta file written by `to_json`."""
        return cls(**json.loads(Path(path).read_text()))


@dataclass(frozen=True)
class DecodedFrame:
    """One decoded frame with its source timing."""

    index: int
    pts: int
    time: float
    rgb: np.ndarray


def _open_input(path: Path) -> av.container.InputContainer:
    path = Path(path)
    if not path.exists():
        raise InputError(path, "file not found")
    if path.is_dir():
        raise InputError(path, "is a folder, not a video file")
    if path.stat().st_size == 0:
        raise InputError(path, "file is empty (0 bytes)")
    try:
        return av.open(str(path), mode="r")
    except (av.error.FFmpegError, UnicodeDecodeError) as exc:
        raise InputError(path, f"not a readable video ({_describe(exc)})") from None


def _describe(exc: Exception) -> str:
    text = getattr(exc, "strerror", None) or str(exc)
    return text.splitlines()[0] if text else type(exc).__name__


def _video_stream(container: av.container.InputContainer, path: Path) -> av.video.stream.VideoStream:
    if not container.streams.video:
        kinds = sorted({stream.type for stream in container.streams}) or ["no"]
        raise InputError(path, f"has no video stream (streams: {', '.join(kinds)})")
    stream = container.streams.video[0]
    width, height = stream.codec_context.width, stream.codec_context.height
    if width <= 0 or height <= 0:
        raise InputError(path, "video stream declares no frame size")
    if width * height > MAX_PIXELS:
        raise InputError(path, f"frame size {width}x{height} is larger than supported")
    return stream


def _rotation_of(frame: av.VideoFrame) -> int:
    # Display matrices store counter-clockwise degrees; normalise to 0/90/180/270.
    return int(round(getattr(frame, "rotation", 0) or 0)) % 360


def _apply_rotation(rgb: np.ndarray, rotation: int) -> np.ndarray:
    if rotation == 0:
        return rgb
    return np.ascontiguousarray(np.rot90(rgb, k=rotation // 90))


def probe(path: Path) -> VideoMeta:
    """Read a video's geometry, timing and audio info; decodes only the first frame."""
    path = Path(path)
    with _open_input(path) as container:
        stream = _video_stream(container, path)
        first = None
        try:
            for first in container.decode(stream):
                break
        except av.error.FFmpegError as exc:
            raise InputError(path, f"video stream cannot be decoded ({_describe(exc)})") from None
        if first is None:
            raise InputError(path, "video stream holds no decodable frame")
        rotation = _rotation_of(first)
        width, height = first.width, first.height
        if rotation in (90, 270):
            width, height = height, width
        audio = container.streams.audio[0] if container.streams.audio else None
        rate = stream.average_rate or stream.guessed_rate or Fraction(0)
        duration = float(container.duration / av.time_base) if container.duration else 0.0
        return VideoMeta(
            width=width,
            height=height,
            fps=float(rate),
            time_base=str(stream.time_base),
            duration=duration,
            frame_count=int(stream.frames or 0),
            rotation=rotation,
            pix_fmt=stream.codec_context.pix_fmt or "",
            codec=stream.codec_context.name,
            has_audio=audio is not None,
            audio_codec=audio.codec_context.name if audio is not None else None,
            audio_sample_rate=audio.codec_context.sample_rate if audio is not None else None,
            audio_channels=audio.codec_context.channels if audio is not None else None,
        )


def iter_frames(path: Path, max_frames: int | None = None) -> Iterator[DecodedFrame]:
    """Decode a video frame by frame in display orientation, with each frame's pts and time.

    Raises `InputError` when decoding fails part-way or when fewer frames decode than the
    container declares (a truncated file).
    """
    path = Path(path)
    with _open_input(path) as container:
        stream = _video_stream(container, path)
        stream.thread_type = "AUTO"
        declared = int(stream.frames or 0)
        time_base = stream.time_base or Fraction(1, 1)
        index = 0
        previous_pts = None
        try:
            for frame in container.decode(stream):
                # Frames without pts (raw streams) get one tick per frame after the last.
                pts = frame.pts if frame.pts is not None else (previous_pts + 1 if previous_pts is not None else 0)
                previous_pts = pts
                rgb = _apply_rotation(frame.to_ndarray(format="rgb24"), _rotation_of(frame))
                yield DecodedFrame(index=index, pts=int(pts), time=float(pts * time_base), rgb=rgb)
                index += 1
                if max_frames is not None and index >= max_frames:
                    return
        except av.error.FFmpegError as exc:
            raise InputError(path, f"decoding failed after {index} frames ({_describe(exc)})") from None
        if index == 0:
            raise InputError(path, "video stream holds no decodable frame")
        if declared and index < declared:
            raise InputError(path, f"truncated or corrupt: decoded {index} of {declared} declared frames")


class LosslessFrameWriter:
    """Append RGB frames to a lossless FFV1/Matroska file (one file per video, streamed)."""

    def __init__(self, path: Path, width: int, height: int):
        self._container = av.open(str(path), mode="w", format="matroska")
        self._stream = self._container.add_stream(LOSSLESS_CODEC, rate=Fraction(25, 1))
        self._stream.width = width
        self._stream.height = height
        self._stream.pix_fmt = LOSSLESS_PIX_FMT
        self._stream.thread_type = "AUTO"
        self.count = 0

    def write(self, rgb: np.ndarray) -> None:
        """Append one (H, W, 3) uint8 frame."""
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        frame.pts = self.count
        frame.time_base = Fraction(1, 25)
        for packet in self._stream.encode(frame):
            self._container.mux(packet)
        self.count += 1

    def close(self) -> None:
        """Flush the encoder and close the file."""
        for packet in self._stream.encode():
            self._container.mux(packet)
        self._container.close()

    def __enter__(self) -> "LosslessFrameWriter":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def read_lossless_frames(path: Path, start: int = 0, stop: int | None = None) -> Iterator[np.ndarray]:
    """Stream RGB frames [start, stop) of a file written by `LosslessFrameWriter`."""
    path = Path(path)
    with _open_input(path) as container:
        stream = _video_stream(container, path)
        stream.thread_type = "AUTO"
        for index, frame in enumerate(container.decode(stream)):
            if stop is not None and index >= stop:
                return
            if index >= start:
                yield frame.to_ndarray(format="rgb24")


def read_frame_batches(path: Path, batch_size: int) -> Iterator[np.ndarray]:
    """Stream a lossless frames file as (B, H, W, 3) batches of at most `batch_size` frames."""
    batch: list[np.ndarray] = []
    for rgb in read_lossless_frames(path):
        batch.append(rgb)
        if len(batch) == batch_size:
            yield np.stack(batch)
            batch = []
    if batch:
        yield np.stack(batch)
