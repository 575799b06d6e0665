"""Video reading and writing through PyAV: probing, streaming decode, stored frames.

Frames are handled as RGB uint8 arrays of shape (H, W, 3) in display orientation (container
rotation applied). Decoding streams frame by frame, so memory does not grow with video length.

Stored frames (`store_frames`, read back by `read_lossless_frames`) are a byte-for-byte copy of
the source video next to its frame table, decoded again on every read instead of being re-encoded
(re-encoding cost 5.7x a decode). Every read gets the same RGB frames: the bytes are the same
(sha256 checked), the demuxer is the same (recorded), FFmpeg's decoders are bit-exact whatever the
thread count or CPU, the RGB conversion runs in swscale's bit-exact mode, and FFmpeg itself is the
same (its library versions are recorded; a read under other versions is an error, not a possible
silent change of pixels). Each decoded frame's pts is checked against the table too.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pyarrow as pa
from av.video.reformatter import Interpolation

from pipeline.core.errors import InputError
from pipeline.core.hashing import sha256_file
from pipeline.core.progress import progress_bar
from pipeline.core.tables import read_table, write_table

# No random segment ids, dates or version strings in written files: a rerun writes the same bytes.
BITEXACT = {"fflags": "+bitexact"}
MAX_PIXELS = 8192 * 8192
# swscale's bit-exact mode: the same RGB on every CPU (its SIMD paths may otherwise round differently).
RGB_FLAGS = Interpolation.BILINEAR | Interpolation.BITEXACT


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


def _open_input(path: Path, demuxer: str | None = None) -> av.container.InputContainer:
    path = Path(path)
    if not path.exists():
        raise InputError(path, "file not found")
    if path.is_dir():
        raise InputError(path, "is a folder, not a video file")
    if path.stat().st_size == 0:
        raise InputError(path, "file is empty (0 bytes)")
    try:
        return av.open(str(path), mode="r", format=demuxer)
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


def _to_rgb(frame: av.VideoFrame) -> np.ndarray:
    return _apply_rotation(frame.to_ndarray(format="rgb24", interpolation=RGB_FLAGS), _rotation_of(frame))


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


def _decode(
    path: Path, max_frames: int | None = None, demuxer: str | None = None
) -> Iterator[tuple[int, int, float, av.VideoFrame]]:
    """(index, pts, time in seconds, frame) of each decoded frame, errors as `InputError`s naming `path`."""
    path = Path(path)
    with _open_input(path, demuxer) as container:
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
                yield index, int(pts), float(pts * time_base), frame
                index += 1
                if max_frames is not None and index >= max_frames:
                    return
        except av.error.FFmpegError as exc:
            raise InputError(path, f"decoding failed after {index} frames ({_describe(exc)})") from None
        if index == 0:
            raise InputError(path, "video stream holds no decodable frame")
        if declared and index < declared:
            raise InputError(path, f"truncated or corrupt: decoded {index} of {declared} declared frames")


def iter_frames(path: Path, max_frames: int | None = None) -> Iterator[DecodedFrame]:
    """Decode a video frame by frame in display orientation, with each frame's pts and time.

    Raises `InputError` when decoding fails part-way or when fewer frames decode than the
    container declares (a truncated file).
    """
    for index, pts, time, frame in _decode(path, max_frames):
        yield DecodedFrame(index=index, pts=pts, time=time, rgb=_to_rgb(frame))


@dataclass(frozen=True)
class StoredFrame:
    """One row of a frame table: a stored frame's index and source timing."""

    index: int
    pts: int
    time: float


def frame_table_path(frames_file: Path) -> Path:
    """The frame table that belongs to a stored frames file: the same name with `.parquet`."""
    return Path(frames_file).with_suffix(".parquet")


def decoder_versions() -> str:
    """PyAV's and FFmpeg's versions: what decodes a stored video and converts it to RGB."""
    libraries = ("libavcodec", "libavformat", "libavutil", "libswscale")
    versions = [f"{name} {'.'.join(map(str, av.library_versions[name]))}" for name in libraries]
    return ", ".join([f"PyAV {av.__version__}", *versions])


def store_frames(
    source: Path,
    frames_file: Path,
    max_frames: int | None = None,
    metadata: dict | None = None,
    progress: bool = False,
    total: int | None = None,
) -> list[StoredFrame]:
    """Store the first `max_frames` frames of `source` for `read_lossless_frames`, at decode speed.

    Writes `frames_file`, a byte-for-byte copy of `source` (nothing is re-encoded, so nothing can
    round), and its frame table (`frame_table_path`): index, pts (stream time base) and time
    (seconds) of each frame, with `metadata`, the time base and under `frame_store` the demuxer,
    the copy's sha256 and `decoder_versions()` in the footer. The copy is decoded (without RGB
    conversion) through the demuxer the source opened with, exactly as every later read does.
    """
    source, frames_file = Path(source), Path(frames_file)
    with _open_input(source) as container:
        stream = _video_stream(container, source)
        demuxer, time_base = container.format.name, str(stream.time_base)
    shutil.copyfile(source, frames_file)
    try:
        decoded = progress_bar(_decode(frames_file, max_frames, demuxer), enabled=progress, total=total,
                               desc=f"extract {source.name}")
        frames = [StoredFrame(index, pts, time) for index, pts, time, _ in decoded]
    except InputError as exc:
        raise InputError(source, exc.problem) from None
    store = {"demuxer": demuxer, "sha256": sha256_file(frames_file), "decoder": decoder_versions()}
    write_table(
        frame_table_path(frames_file),
        {
            "index": pa.array([frame.index for frame in frames], pa.int32()),
            "pts": pa.array([frame.pts for frame in frames], pa.int64()),
            "time": pa.array([frame.time for frame in frames], pa.float64()),
        },
        (metadata or {}) | {"time_base": time_base, "frame_store": store},
    )
    return frames


def read_lossless_frames(path: Path, start: int = 0, stop: int | None = None) -> Iterator[np.ndarray]:
    """Stream RGB frames [start, stop) of a frames file written by `store_frames`: the same on every read.

    A copy whose bytes changed, a different PyAV/FFmpeg than the one that stored it, a frame
    decoding at another pts than its table row or a copy that ends early is an `InputError`.
    """
    path = Path(path)
    table_path = frame_table_path(path)
    if not table_path.is_file():
        raise InputError(table_path, f"not found: the frame table of {path.name} is missing")
    table, metadata = read_table(table_path)
    store = metadata.get("frame_store")
    if store is None:
        raise InputError(table_path, "written by an older `dva extract`: extract the video again")
    if store["decoder"] != decoder_versions():
        raise InputError(path, f"stored under {store['decoder']} but this environment has {decoder_versions()}; "
                               "frames could decode differently: extract the video again")
    if sha256_file(path) != store["sha256"]:
        raise InputError(path, "changed since it was extracted (sha256 differs): extract the video again")
    table_pts = table.column("pts").to_numpy()
    end = len(table_pts) if stop is None else min(stop, len(table_pts))
    if end <= start:
        return
    decoded = 0
    for index, pts, _, frame in _decode(path, end, store["demuxer"]):
        decoded = index + 1
        if pts != table_pts[index]:
            raise InputError(path, f"frame {index} decodes at pts {pts}, its table says {table_pts[index]}: "
                                   "extract the video again")
        if index >= start:
            yield _to_rgb(frame)
    if decoded < end:
        raise InputError(path, f"truncated: decoded {decoded} of the {end} frames its table lists")


def read_frame_batches(path: Path, batch_size: int) -> Iterator[np.ndarray]:
    """Stream a stored frames file as (B, H, W, 3) batches of at most `batch_size` frames."""
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
