"""Shared fixtures: the bundled sample clip, one trimmed extract/align/encode run of it shared by
the whole session, and helpers that write small synthetic videos with PyAV.

The dlib stages are the slow part of the suite, so the sample is trimmed to `SAMPLE_FRAMES` frames
and processed once per session; tests only read those artifacts.
"""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SAMPLE_FRAMES = 24
CROP_SIZE = 64


@pytest.fixture(scope="session")
def sample_clip() -> Path:
    """The bundled talking-head clip (176x144, 120 frames, one face)."""
    from stages.sample import sample_path

    return sample_path()


@dataclass(frozen=True)
class SampleRun:
    """Output folders of extract -> align -> encode on the trimmed sample."""

    extract: Path
    align: Path
    encode: Path


@pytest.fixture(scope="session")
def sample_extract(sample_clip, tmp_path_factory) -> Path:
    from stages.extract import extract_video

    out = tmp_path_factory.mktemp("sample") / "extract"
    extract_video(sample_clip, out, max_frames=SAMPLE_FRAMES, progress=False)
    return out


@pytest.fixture(scope="session")
def sample_align(sample_extract) -> Path:
    from pipeline.faces.settings import AlignParams
    from stages.align import align_video

    out = sample_extract.parent / "align"
    align_video(sample_extract, out, AlignParams(), CROP_SIZE, progress=False)
    return out


@pytest.fixture(scope="session")
def sample_run(sample_extract, sample_align) -> SampleRun:
    from pipeline.faces.settings import EncodeParams
    from stages.encode import encode_video

    out = sample_extract.parent / "encode"
    encode_video(sample_align, out, EncodeParams(), progress=False)
    return SampleRun(extract=sample_extract, align=sample_align, encode=out)


@pytest.fixture(scope="session")
def dva_executable() -> str:
    """The `dva` console script of the interpreter running the tests (the venv's), else PATH's."""
    candidate = Path(sys.executable).parent / "dva"
    if candidate.is_file():
        return str(candidate)
    found = shutil.which("dva")
    if found is None:
        pytest.fail("the dva console script is not installed (pip install -e .)")
    return found


# ----------------------------------------------------------------------------------------------
# Synthetic videos


def noise_frames(count: int, width: int, height: int, seed: int = 0) -> list[np.ndarray]:
    """Random RGB frames: nothing in them looks like a face, and every bit matters for lossless checks."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8) for _ in range(count)]


def _add_audio(container: av.container.OutputContainer, seconds: float, sample_rate: int = 44100):
    stream = container.add_stream("aac", rate=sample_rate, layout="stereo")
    chunk = 1024  # AAC frame size
    total = int(seconds * sample_rate)
    packets = []
    for start in range(0, total, chunk):
        samples = np.arange(start, min(start + chunk, total))
        tone = (0.2 * np.sin(2 * np.pi * 440 * samples / sample_rate)).astype(np.float32)
        frame = av.AudioFrame.from_ndarray(np.stack([tone, tone]), format="fltp", layout="stereo")
        frame.sample_rate = sample_rate
        frame.pts = start
        frame.time_base = Fraction(1, sample_rate)
        packets.extend(stream.encode(frame))
    packets.extend(stream.encode(None))
    return packets


def write_video(
    path: Path,
    frames: list[np.ndarray],
    *,
    rate: int = 25,
    codec: str = "libx264",
    pix_fmt: str = "yuv420p",
    pts: list[int] | None = None,
    time_base: Fraction | None = None,
    options: dict[str, str] | None = None,
    audio_seconds: float | None = None,
) -> Path:
    """Encode RGB frames to `path` (container from the suffix); optional explicit pts and AAC audio."""
    path = Path(path)
    time_base = time_base or Fraction(1, rate)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=rate, options=options or {})
        stream.width = frames[0].shape[1]
        stream.height = frames[0].shape[0]
        stream.pix_fmt = pix_fmt
        stream.codec_context.time_base = time_base
        audio_packets = _add_audio(container, audio_seconds) if audio_seconds else []
        for index, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            frame.pts = pts[index] if pts is not None else index
            frame.time_base = time_base
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
        for packet in audio_packets:
            container.mux(packet)
    return path


def write_audio_only(path: Path, seconds: float = 1.0) -> Path:
    """A file with one AAC audio stream and no video stream."""
    path = Path(path)
    with av.open(str(path), mode="w") as container:
        for packet in _add_audio(container, seconds):
            container.mux(packet)
    return path


def truncated_copy(source: Path, destination: Path, fraction: float) -> Path:
    """The first `fraction` of `source`'s bytes, as a download cut short would leave it."""
    data = Path(source).read_bytes()
    Path(destination).write_bytes(data[: int(len(data) * fraction)])
    return Path(destination)


def faststart_copy(source: Path, destination: Path) -> Path:
    """Remux an mp4 with its index (moov) before the data, so a cut keeps the index and loses frames.

    The bundled sample stores its index at the end, so any cut of it loses the index instead; both
    layouts occur in the wild and fail in different places (open vs. decode).
    """
    with av.open(str(source)) as src, av.open(str(destination), "w", options={"movflags": "faststart"}) as dst:
        video = src.streams.video[0]
        out = dst.add_stream_from_template(video)
        for packet in src.demux(video):
            if packet.dts is None:  # the demuxer's final flush packet
                continue
            packet.stream = out
            dst.mux(packet)
    return Path(destination)


@pytest.fixture(scope="session")
def video_tools():
    """The synthetic-video helpers, for tests that write their own inputs."""

    class Tools:
        noise_frames = staticmethod(noise_frames)
        write_video = staticmethod(write_video)
        write_audio_only = staticmethod(write_audio_only)
        truncated_copy = staticmethod(truncated_copy)
        faststart_copy = staticmethod(faststart_copy)

    return Tools


# ----------------------------------------------------------------------------------------------
# A micro autoencoder trained on the trimmed sample, and its inversion


# Small enough to train in about a minute on a shared CPU, big enough that its codes steer the decode.
MICRO_PARAMS = {
    "videos": {"sample": {"path": "data/raw/sample.mp4"}},
    "model": {
        "preset": "tiny", "resolution": CROP_SIZE, "base_channels": 16, "channel_mults": [1, 2],
        "attention_resolutions": [], "embed_dim": 64,
    },
    "train": {
        "steps": 40, "videos_per_batch": 1, "frames_per_video": 4, "lr": 1e-3, "ema_decay": 0.9,
        "checkpoint_every": 1000, "device": "cpu",
    },
    "invert": {"steps": 5, "device": "cpu"},
    "edit": {"device": "cpu"},
}


@dataclass(frozen=True)
class MicroModel:
    """`dva train` output on the sample: the model file and the raw params it was trained with."""

    checkpoint: Path
    params: dict  # the raw params mapping it was trained with (shared: use `settings` to change it)
    data_root: Path  # holds align/sample and encode/sample (links to the sample run)

    def settings(self, **sections):
        """Validated `Params` of the micro model with whole top-level sections replaced or added."""
        import copy

        from pipeline.params import parse_params

        return parse_params(copy.deepcopy(self.params) | copy.deepcopy(sections))


@pytest.fixture(scope="session")
def micro_model(sample_run, tmp_path_factory) -> MicroModel:
    from stages.train import train_autoencoder

    root = tmp_path_factory.mktemp("micro")
    data = root / "data"
    # train_autoencoder reads data_root/{align,encode}/<video id>.
    for stage, folder in (("align", sample_run.align), ("encode", sample_run.encode)):
        (data / stage).mkdir(parents=True)
        (data / stage / "sample").symlink_to(folder, target_is_directory=True)
    model = MicroModel(checkpoint=root / "train" / "model.safetensors", params=MICRO_PARAMS, data_root=data)
    train_autoencoder(model.settings(), data, root / "train", root / "state.safetensors", progress=False, quiet=True)
    return model


@pytest.fixture(scope="session")
def micro_inversion(micro_model, sample_run) -> Path:
    """`dva invert` output (noise.npy, recon.npy, frames.parquet, metrics.json) of the sample, S=5."""
    from stages.invert import invert_video

    out = micro_model.checkpoint.parent.parent / "invert"
    invert_video(micro_model.checkpoint, sample_run.align, sample_run.encode, out,
                 micro_model.settings().invert, progress=False)
    return out
