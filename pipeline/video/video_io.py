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

from pipeline.core.errors import InputError

# FFV1 with a packed RGB layout is lossless for 8-bit RGB (yuv444p would round colours).
LOSSLESS_CODEC = "ffv1"
LOSSLESS_PIX_FMT = "bgr0"
# No random segment ids, dates or version strings in written files: a rerun writes the same bytes.
BITEXACT = {"fflags": "+bitexact"}
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
        rate = stream.average_rate or stream.guessed_rate
        # One frame period in time-base ticks (not one tick: raw H.264 uses a 1/1200000 time base).
        period = max(1, round(1 / (rate * time_base))) if rate else 1
        index = 0
        previous_pts = None
        try:
            for frame in container.decode(stream):
                # Frames without pts (raw streams) follow the last one by one frame duration.
                if frame.pts is not None:
                    pts = frame.pts
                elif previous_pts is None:
                    pts = 0
                else:
                    pts = previous_pts + (getattr(frame, "duration", None) or period)
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
        self._container = av.open(str(path), mode="w", format="matroska", options=BITEXACT)
        # Four slices let the encoder use every core; Golomb-Rice coding is ~10% faster than the
        # range coder at the same size on camera footage (benchmarks/extract_bench.py).
        # Tiny frames (a few rows) cannot be cut into slices.
        options = {"coder": "0", "context": "0"} | ({"slices": "4"} if min(width, height) >= 64 else {})
        self._stream = self._container.add_stream(LOSSLESS_CODEC, rate=Fraction(25, 1), options=options)
        self._stream.width = width
        self._stream.height = height
        self._stream.pix_fmt = LOSSLESS_PIX_FMT
        self._stream.thread_type = "SLICE"
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


def copy_audio(source: Path, destination: Path) -> bool:
    """Remux the first audio stream of `source` into a Matroska file without re-encoding.

    Returns False (and writes nothing) when the source has no audio.
    """
    with _open_input(Path(source)) as container:
        if not container.streams.audio:
            return False
        audio = container.streams.audio[0]
        try:
            # Keep negative timestamps (AAC encoder priming): shifting them to 0 delays the audio.
            options = {"avoid_negative_ts": "disabled"} | BITEXACT
            with av.open(str(destination), mode="w", format="matroska", options=options) as output:
                stream = output.add_stream_from_template(audio)
                for packet in container.demux(audio):
                    if packet.dts is None or not packet.size:
                        continue
                    packet.stream = stream
                    output.mux(packet)
        except av.error.FFmpegError as exc:
            raise InputError(source, f"audio stream cannot be copied ({_describe(exc)})") from None
    return True


def _even(value: int) -> bool:
    return value % 2 == 0


class VideoEncoder:
    """Encode RGB frames to H.264/MP4 at given source timestamps, copying the source's audio.

    Frames keep the source's pts and time base, so variable frame rate timing survives. Audio
    packets are copied without re-encoding when the MP4 container accepts the codec (else
    transcoded to AAC) and interleaved by time as video is written, so memory stays bounded.
    """

    def __init__(
        self,
        path: Path,
        width: int,
        height: int,
        time_base: Fraction,
        fps: float,
        crf: int = 18,
        preset: str = "medium",
        audio_source: Path | None = None,
    ):
        self._container = av.open(str(path), mode="w", format="mp4", options=BITEXACT)
        rate = Fraction(fps).limit_denominator(1001) if fps > 0 else Fraction(25, 1)
        self._video = self._container.add_stream("libx264", rate=rate, options={"crf": str(crf), "preset": preset})
        self._video.width, self._video.height = width, height
        # 4:2:0 needs even sizes; odd-sized videos keep full chroma instead of being cropped.
        self._video.pix_fmt = "yuv420p" if _even(width) and _even(height) else "yuv444p"
        self._video.codec_context.time_base = time_base
        self._video.time_base = time_base
        self._time_base = time_base
        self._audio_in = None
        self._audio_packets = None
        self._pending_audio = None
        if audio_source is not None:
            self._open_audio(Path(audio_source))

    def _open_audio(self, source: Path) -> None:
        container = av.open(str(source))
        if not container.streams.audio:
            container.close()
            return
        audio = container.streams.audio[0]
        self._audio_in = container
        try:
            self._audio_out = self._container.add_stream_from_template(audio)
            self._transcode = False
        except (ValueError, av.error.FFmpegError):
            self._audio_out = self._container.add_stream("aac", rate=audio.codec_context.sample_rate or 48000)
            self._transcode = True
        self._audio_packets = container.demux(audio)

    def _mux_audio_until(self, seconds: float | None) -> None:
        if self._audio_packets is None:
            return
        while True:
            packet = self._pending_audio or next(self._audio_packets, None)
            self._pending_audio = None
            if packet is None:
                self._audio_packets = None
                return
            if packet.dts is None and packet.pts is None:
                continue
            stamp = packet.pts if packet.pts is not None else packet.dts
            if seconds is not None and float(stamp * packet.time_base) > seconds:
                self._pending_audio = packet
                return
            if self._transcode:
                for frame in packet.decode():
                    frame.pts = None
                    for out in self._audio_out.encode(frame):
                        self._container.mux(out)
            elif packet.size:
                packet.stream = self._audio_out
                self._container.mux(packet)

    def write(self, rgb: np.ndarray, pts: int) -> None:
        """Encode one frame at source timestamp `pts` (in the source time base)."""
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        frame.pts = int(pts)
        frame.time_base = self._time_base
        self._mux_audio_until(float(pts * self._time_base))
        for packet in self._video.encode(frame):
            self._container.mux(packet)

    def close(self) -> None:
        """Flush video, copy the remaining audio and close the file."""
        for packet in self._video.encode():
            self._container.mux(packet)
        self._mux_audio_until(None)
        if self._audio_in is not None:
            if self._transcode:
                for out in self._audio_out.encode():
                    self._container.mux(out)
            self._audio_in.close()
        self._container.close()

    def __enter__(self) -> "VideoEncoder":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
