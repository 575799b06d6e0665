"""What users see when inputs are bad, through the `dva` command line (its entry point in-process,
plus the installed console script for a few cases), and what extract keeps of inputs that are
fine but unusual (variable frame rate, raw streams without timestamps, exact pixels, audio).

For a bad input every stage must exit non-zero with ONE line on stderr that names the file, no
traceback, and no output folder (DVC would otherwise cache a half-written artifact).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.runs.artifacts import FRAMES_FILE, read_features
from pipeline.video.video_io import read_lossless_frames
from stages.extract import extract_video


@dataclass
class CliCase:
    """One `dva` run on a bad input: what to look for in its output, and where it must not write."""

    args: list[str]
    names: list[str]  # strings stderr must contain (the file name, or the offending key)
    out: Path


def _cases(root: Path, sample: Path, tools) -> dict[str, CliCase]:
    def out(name: str) -> Path:
        return root / f"out_{name}"

    def extract_case(name: str, bad: Path) -> CliCase:
        return CliCase(["extract", str(bad), str(out(name))], [bad.name], out(name))

    (root / "notes.mp4").write_text("this is a text file, not a video\n")
    (root / "empty.mp4").write_bytes(b"")
    (root / "a_folder.mp4").mkdir()
    fast = tools.faststart_copy(sample, root / "faststart.mp4")
    cases = {
        "missing": extract_case("missing", root / "does_not_exist.mp4"),
        "zero_bytes": extract_case("zero_bytes", root / "empty.mp4"),
        "text_file": extract_case("text_file", root / "notes.mp4"),
        "folder": extract_case("folder", root / "a_folder.mp4"),
        "audio_only": extract_case("audio_only", tools.write_audio_only(root / "audio_only.mp4")),
        # The sample keeps its index at the end: any cut loses it, and opening fails.
        "cut_50": extract_case("cut_50", tools.truncated_copy(sample, root / "cut_50.mp4", 0.5)),
    }
    # With the index first, a cut keeps the index and loses frames: failure comes at open (2%),
    # after some frames were already written (50%), or just before the end (97%).
    for percent in (2, 50, 97):
        name = f"faststart_cut_{percent}"
        cases[name] = extract_case(name, tools.truncated_copy(fast, root / f"{name}.mp4", percent / 100))

    # A video in which no face is ever found: extract succeeds, align must fail cleanly.
    noise = tools.write_video(root / "no_face.mp4", tools.noise_frames(10, 96, 80), codec="mpeg4")
    extract_video(noise, root / "no_face_extract", progress=False)
    cases["no_face_align"] = CliCase(
        ["align", str(root / "no_face_extract"), str(out("no_face_align"))], ["no_face_extract"], out("no_face_align")
    )
    # Stages pointed at a folder that is not the previous stage's output.
    (root / "not_an_artifact").mkdir()
    cases["align_wrong_folder"] = CliCase(
        ["align", str(root / "not_an_artifact"), str(out("align_wrong_folder"))],
        ["not_an_artifact"],
        out("align_wrong_folder"),
    )
    cases["encode_wrong_folder"] = CliCase(
        ["encode", str(root / "not_an_artifact"), str(out("encode_wrong_folder"))],
        ["not_an_artifact"],
        out("encode_wrong_folder"),
    )
    # A params file with a typo'd key in a section the stage reads fails before anything is decoded. (A stage
    # validates the sections it reads, and every top-level key; a typo in another section fails its stage.)
    bad_params = root / "bad_params.yaml"
    bad_params.write_text("extract:\n  max_frames: 3\n  bogus: 1\n")
    cases["unknown_param"] = CliCase(
        ["extract", str(sample), str(out("unknown_param")), "--params", str(bad_params)],
        ["extract.bogus", "bad_params.yaml"],
        out("unknown_param"),
    )
    bad_top = root / "bad_top.yaml"
    bad_top.write_text("extract:\n  max_frames: 3\nalgin:\n  backend: dlib\n")
    cases["unknown_section"] = CliCase(
        ["extract", str(sample), str(out("unknown_section")), "--params", str(bad_top)],
        ["algin: unknown key", "bad_top.yaml"],
        out("unknown_section"),
    )
    # Bad expression edits in a params file stop the edit stage before it reads anything else.
    for name, expressions, problem in (
        ("keyframes_not_increasing", {"smile": [[1.0, 0.0], [0.5, 1.0]]}, "strictly increasing"),
        ("unknown_expression", {"frown": 0.5}, "unknown expression 'frown'"),
    ):
        edit_params = root / f"{name}.yaml"
        edit_params.write_text(json.dumps({"edits": {"open": {"kind": "expression", "expressions": expressions}}}))
        missing = [str(root / "not_made" / stage) for stage in ("model.safetensors", "align", "encode", "invert")]
        cases[name] = CliCase(
            ["edit-frames", "open", *missing, str(out(name)), "--params", str(edit_params)],
            [edit_params.name, "edits.open", problem],
            out(name),
        )
    # Faces chosen that the video does not have: one line naming the video's extract and the track.
    extract_video(sample, root / "sample_extract", max_frames=4, progress=False)
    faces_params = root / "faces_params.yaml"
    faces_params.write_text("align:\n  faces: [7]\n")
    cases["faces_unknown_track"] = CliCase(
        ["align", str(root / "sample_extract"), str(out("faces_unknown_track")), "--params", str(faces_params)],
        ["sample_extract", "track 7"],
        out("faces_unknown_track"),
    )
    cases["faces_option_not_ids"] = CliCase(
        ["edit", str(sample), "--checkpoint", str(root / "none.safetensors"), "--edit", "anonymise", "--faces", "0,x",
         "--out", str(out("faces_option_not_ids") / "o.mp4")],
        ["--faces '0,x'"],
        out("faces_option_not_ids"),
    )
    return cases


@pytest.fixture(scope="module")
def bad_cases(tmp_path_factory, sample_clip, video_tools) -> dict[str, CliCase]:
    root = tmp_path_factory.mktemp("bad_inputs")
    # Every command reads the params file it is given (params.yaml by default); an empty one means defaults.
    (root / "params.yaml").write_text("{}\n")
    return _cases(root, sample_clip, video_tools)


CASE_NAMES = [
    "missing",
    "zero_bytes",
    "text_file",
    "folder",
    "audio_only",
    "cut_50",
    "faststart_cut_2",
    "faststart_cut_50",
    "faststart_cut_97",
    "no_face_align",
    "align_wrong_folder",
    "encode_wrong_folder",
    "unknown_param",
    "unknown_section",
    "keyframes_not_increasing",
    "unknown_expression",
    "faces_unknown_track",
    "faces_option_not_ids",
]
# Cases also run through the installed console script in a separate process. Each `dva` start
# costs several CPU-seconds of imports (torch, via the train stage), so every case runs through
# the same entry point in-process (stderr captured at the file-descriptor level, so FFmpeg's own
# C-level logging would be seen too), and these representatives prove the real command matches.
SUBPROCESS_CASES = ["faststart_cut_50", "unknown_param"]


def assert_clean_failure(case: CliCase, returncode: int, stdout: str, stderr: str) -> None:
    assert returncode not in (0, None), f"dva {' '.join(case.args)} succeeded: {stdout}"
    assert "Traceback" not in stderr and "Traceback" not in stdout
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    for expected in case.names:
        assert expected in lines[0], lines[0]
    assert not case.out.exists()
    # Nor a temporary sibling left behind by an interrupted write.
    leftovers = [path.name for path in case.out.parent.iterdir() if path.name.startswith(f".{case.out.name}")]
    assert leftovers == []


@pytest.mark.parametrize("name", CASE_NAMES)
def test_bad_input_fails_with_one_line_and_no_output(bad_cases, name, monkeypatch, capfd):
    from stages.cli import main

    case = bad_cases[name]
    monkeypatch.chdir(case.out.parent)
    monkeypatch.setattr(sys, "argv", ["dva", *case.args, "--quiet"])
    with pytest.raises(SystemExit) as exit_info:
        main()
    stdout, stderr = capfd.readouterr()
    assert_clean_failure(case, exit_info.value.code, stdout, stderr)


def test_case_list_is_complete(bad_cases):
    # Guards against a case being added to the fixture but never checked.
    assert sorted(bad_cases) == sorted(CASE_NAMES)


@pytest.fixture(scope="module")
def console_runs(bad_cases, dva_executable) -> dict[str, tuple[int, str, str]]:
    # Started together, waited for together: independent inputs and outputs.
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    processes = {
        name: subprocess.Popen(
            [dva_executable, *bad_cases[name].args, "--quiet"],
            cwd=bad_cases[name].out.parent,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in SUBPROCESS_CASES
    }
    results = {}
    for name, process in processes.items():
        stdout, stderr = process.communicate(timeout=300)
        results[name] = (process.returncode, stdout, stderr)
    return results


@pytest.mark.parametrize("name", SUBPROCESS_CASES)
def test_console_script_fails_with_one_line_and_no_output(bad_cases, console_runs, name):
    returncode, stdout, stderr = console_runs[name]
    assert_clean_failure(bad_cases[name], returncode, stdout, stderr)
    assert returncode == 1


# ----------------------------------------------------------------------------------------------
# Bad edit inputs that only show once a model and a prepared video are at hand.


def _run_in_process(case: CliCase, monkeypatch, capfd) -> None:
    from stages.cli import main

    monkeypatch.setattr(sys, "argv", ["dva", *case.args, "--quiet"])
    with pytest.raises(SystemExit) as exit_info:
        main()
    stdout, stderr = capfd.readouterr()
    assert_clean_failure(case, exit_info.value.code, stdout, stderr)


def test_corrupt_classifier_file_fails_the_edit_stage_with_one_line(micro_model, micro_inversion, sample_run,
                                                                     tmp_path, video_tools, monkeypatch, capfd):
    """`dva edit-frames` (the DVC edit stage) with a classifier edit whose file is a download cut short."""
    from pipeline.editing.editing import AttributeClassifier

    monkeypatch.chdir(tmp_path)
    classifier = Path("data/classifiers/glasses.safetensors")  # params name files under data/
    classifier.parent.mkdir(parents=True)
    dim = len(read_features(sample_run.encode).video_identity)
    AttributeClassifier(["glasses"], np.ones((1, dim)), np.zeros(1), np.zeros(dim), np.ones(dim)).save(
        tmp_path / "whole.safetensors")
    video_tools.truncated_copy(tmp_path / "whole.safetensors", classifier, 0.5)
    edit = {"kind": "classifier", "classifier": str(classifier), "attributes": {"glasses": 1.0}}
    (tmp_path / "params.yaml").write_text(json.dumps(micro_model.params | {"edits": {"glasses": edit}}))
    out = tmp_path / "out_glasses"
    _run_in_process(CliCase(
        ["edit-frames", "glasses", str(micro_model.checkpoint), str(sample_run.align), str(sample_run.encode),
         str(micro_inversion), str(out), "--params", "params.yaml"],
        [f"error: {classifier}: not a readable safetensors file"],
        out,
    ), monkeypatch, capfd)


def test_expression_keyframes_out_of_order_fail_dva_edit_with_one_line(micro_model, sample_clip, tmp_path,
                                                                         monkeypatch, capfd):
    (tmp_path / "params.yaml").write_text(json.dumps(micro_model.params))
    edit = {"kind": "expression", "expressions": {"smile": [[0.0, 0.0], [1.0, 1.0], [0.5, 0.0]]}}
    out = tmp_path / "out_smile"
    # The work store inside the output folder: neither may be created.
    _run_in_process(CliCase(
        ["edit", str(sample_clip), "--checkpoint", str(micro_model.checkpoint), "--edit", json.dumps(edit),
         "--out", str(out / "smile.mp4"), "--params", str(tmp_path / "params.yaml"), "--work", str(out / "work")],
        ["error: --edit:", "strictly increasing"],
        out,
    ), monkeypatch, capfd)


# ----------------------------------------------------------------------------------------------
# Unusual but valid inputs: extract must keep what render needs to rebuild the video.

VFR_PTS = [0, 40, 70, 150, 190, 200, 260, 330, 335, 400]


@pytest.mark.parametrize("suffix", ["mkv", "mp4"])
def test_extract_keeps_variable_frame_rate_timestamps(tmp_path, video_tools, suffix):
    source = video_tools.write_video(
        tmp_path / f"vfr.{suffix}", video_tools.noise_frames(len(VFR_PTS), 64, 48), pts=VFR_PTS, time_base=Fraction(1, 1000)
    )
    extract_video(source, tmp_path / "out", progress=False)
    table = pq.read_table(tmp_path / "out" / "frames.parquet")
    times = table.column("time").to_numpy()
    # Presentation times are exactly what was written (render re-encodes at these times).
    np.testing.assert_allclose(times, np.array(VFR_PTS) / 1000, rtol=0, atol=1e-9)
    # pts are in the container's time base as recorded in the table (mp4 rescales to its own).
    from pipeline.video.video_io import probe

    time_base = Fraction(probe(source).time_base)
    pts = table.column("pts").to_pylist()
    assert [Fraction(p) * time_base for p in pts] == [Fraction(p, 1000) for p in VFR_PTS]
    if suffix == "mkv":
        assert pts == VFR_PTS  # Matroska keeps the 1/1000 time base: the very same numbers


def test_extract_times_a_raw_h264_stream_at_its_frame_rate(tmp_path, video_tools):
    # A bare .h264 stream has no timestamps at all; its frames must still be 1/fps apart (they
    # were one 1/1200000-s tick apart, which render would turn into a microsecond-long video).
    source = video_tools.write_video(tmp_path / "bare.h264", video_tools.noise_frames(6, 64, 48), rate=25)
    meta = extract_video(source, tmp_path / "out", progress=False)
    times = pq.read_table(tmp_path / "out" / "frames.parquet").column("time").to_numpy()
    np.testing.assert_allclose(times, np.arange(6) / 25, atol=1e-9)
    assert meta.duration == pytest.approx(6 / 25)


def test_extract_frames_are_bit_exact_for_a_lossless_source(tmp_path, video_tools):
    # Odd frame size on purpose: chroma subsampling or padding would show up as changed pixels.
    source_frames = video_tools.noise_frames(6, 37, 21, seed=5)
    source = video_tools.write_video(
        tmp_path / "lossless.mkv", source_frames, codec="libx264rgb", pix_fmt="rgb24", options={"qp": "0"}
    )
    meta = extract_video(source, tmp_path / "out", progress=False)
    assert (meta.width, meta.height, meta.frame_count) == (37, 21, 6)
    extracted = list(read_lossless_frames(tmp_path / "out" / FRAMES_FILE))
    assert len(extracted) == len(source_frames)
    for original, copy in zip(source_frames, extracted):
        np.testing.assert_array_equal(copy, original)


def test_extracted_sample_matches_pyav_decode_bit_for_bit(sample_run, sample_clip):
    # The frames file must hold exactly what decoding the source gives, with no colour rounding.
    extracted = list(read_lossless_frames(sample_run.extract / FRAMES_FILE))
    with av.open(str(sample_clip)) as container:
        reference = []
        for frame in container.decode(video=0):
            reference.append(frame.to_ndarray(format="rgb24"))
            if len(reference) == len(extracted):
                break
    assert len(extracted) == len(reference) > 0
    for expected, actual in zip(reference, extracted):
        np.testing.assert_array_equal(actual, expected)


def test_extract_records_audio_stream(tmp_path, video_tools):
    source = video_tools.write_video(tmp_path / "talk.mp4", video_tools.noise_frames(10, 64, 48), audio_seconds=0.4)
    meta = extract_video(source, tmp_path / "out", progress=False)
    assert meta.has_audio
    assert (meta.audio_codec, meta.audio_sample_rate, meta.audio_channels) == ("aac", 44100, 2)
    assert meta.frame_count == 10
    # The audio itself is kept beside the frames for render to put back.
    with av.open(str(tmp_path / "out" / "audio.mka")) as container:
        samples = sum(frame.samples for frame in container.decode(audio=0))
    assert samples == pytest.approx(0.4 * 44100, abs=2048)


def test_extract_of_a_silent_video_writes_no_audio_file(sample_run):
    assert not (sample_run.extract / "audio.mka").exists()


def test_max_frames_stops_early(tmp_path, sample_clip):
    meta = extract_video(sample_clip, tmp_path / "out", max_frames=5, progress=False)
    assert meta.frame_count == 5
    assert pq.read_table(tmp_path / "out" / "frames.parquet").num_rows == 5
    assert len(list(read_lossless_frames(tmp_path / "out" / FRAMES_FILE))) == 5


def test_failed_rerun_keeps_the_previous_output(tmp_path, sample_clip, video_tools):
    # Re-running extract into an existing folder with a broken input must not destroy it.
    from pipeline.core.errors import InputError

    out = tmp_path / "out"
    extract_video(sample_clip, out, max_frames=3, progress=False)
    before = sorted(path.name for path in out.iterdir())
    fast = video_tools.faststart_copy(sample_clip, tmp_path / "fast.mp4")
    broken = video_tools.truncated_copy(fast, tmp_path / "broken.mp4", 0.5)
    with pytest.raises(InputError, match="broken.mp4"):
        extract_video(broken, out, progress=False)
    assert sorted(path.name for path in out.iterdir()) == before
    assert pq.read_table(out / "frames.parquet").num_rows == 3
    assert [path.name for path in tmp_path.iterdir() if path.name.startswith(".out")] == []
