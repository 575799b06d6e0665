"""Edit, render and evaluate with the micro model: the edit reaches the face and nothing else, and the
rendered video keeps the source's frames, timing and audio.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import av
import cv2
import numpy as np
import pandas as pd
import pytest

from pipeline.editing.compositing import blend
from pipeline.faces.alignment import warp_to_frame
from pipeline.faces.settings import EncodeParams
from pipeline.faces.tracking import NO_FACE
from pipeline.runs.artifacts import (
    ALPHA_FILE,
    BASELINE_FILE,
    CONTACT_SHEET_FILE,
    EDIT_INFO_FILE,
    EDITED_FILE,
    FRAMES_FILE,
    RECON_FILE,
    SIDE_BY_SIDE_FILE,
    VIDEO_FILE,
    open_crops,
    read_alignment,
)
from pipeline.video.video_io import iter_frames, read_lossless_frames
from stages.align import align_video
from stages.edit import edit_video, edit_videos
from stages.encode import encode_video
from stages.evaluate import METRICS_FILE as EVALUATE_METRICS
from stages.evaluate import PLOT_FILE, evaluate_edit
from stages.extract import extract_video
from stages.invert import invert_video
from stages.render import composite_frames, render_video

EDITS = {
    "zero": {"kind": "reference", "away": True, "strength": 0.0},
    "anon": {"kind": "reference", "away": True, "strength": 1.0},
}
# Mean absolute change (grey levels) of the face region that a full-strength anonymisation must make.
# Observed with the micro model: about 5; the same codes re-decoded change it by about 0.0002.
MIN_EDIT_EFFECT = 0.5
FACE_FRAMES = 24  # sample frames in the audio clip
NOISE_AT, NOISE_FRAMES = 12, 7  # a faceless stretch longer than align.max_gap (5): no_face, not interpolated


def _edit(micro_model, sample_run, invert_dir: Path, out: Path, name: str, baseline: bool = False) -> Path:
    params = micro_model.settings(edits=EDITS)
    edit_video(name, params, micro_model.checkpoint, sample_run.align, sample_run.encode, invert_dir, out,
               baseline=baseline, progress=False)
    return out


@pytest.fixture(scope="module")
def sample_edits(micro_model, micro_inversion, sample_run, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("edits")
    return {name: _edit(micro_model, sample_run, micro_inversion, root / name, name) for name in EDITS}


def test_edits_decoded_together_match_edits_decoded_one_by_one(micro_model, micro_inversion, sample_run, tmp_path):
    params = micro_model.settings(edits=EDITS)
    together = {name: tmp_path / f"together-{name}" for name in EDITS}
    infos = edit_videos(together, params, micro_model.checkpoint, sample_run.align, sample_run.encode,
                        micro_inversion, baseline=True, progress=False)
    assert set(infos) == set(EDITS)
    for name in EDITS:
        alone = _edit(micro_model, sample_run, micro_inversion, tmp_path / f"alone-{name}", name, baseline=True)
        for file in (EDITED_FILE, BASELINE_FILE, ALPHA_FILE):
            joint, single = np.load(together[name] / file), np.load(alone / file)
            # One UNet batch or several: the same maths; the kernels may round the last bit differently.
            difference = np.abs(joint.astype(int) - single.astype(int))
            assert difference.max() <= 1, (name, file)
            assert (difference == 0).mean() > 0.99, (name, file)
        assert json.loads((together[name] / EDIT_INFO_FILE).read_text()) == json.loads((alone / EDIT_INFO_FILE).read_text())


def _face_frames(align: Path) -> np.ndarray:
    return np.array([index for index, state in enumerate(read_alignment(align).status) if state != NO_FACE])


def test_zero_strength_edit_reproduces_the_reconstruction(sample_edits, micro_inversion, sample_run):
    edit = sample_edits["zero"]
    aligned = open_crops(sample_run.align)
    crops, masks = aligned.crops, aligned.masks
    recon = np.load(micro_inversion / RECON_FILE)
    edited, alpha = np.load(edit / EDITED_FILE), np.load(edit / ALPHA_FILE)
    for frame in _face_frames(sample_run.align):
        inside = alpha[frame] > 0
        # The whole face is replaced, feathered at its edge.
        assert inside[masks[frame] > 127].all()
        assert (alpha[frame] == 255).sum() > 0.1 * alpha[frame].size
        # Decoding with the unchanged identity gives back the reconstruction, blended over the source.
        expected = blend(recon[frame], np.asarray(crops[frame]), alpha[frame] / 255).astype(int)
        assert np.abs(edited[frame].astype(int) - expected)[inside].max() <= 1, frame
        assert np.array_equal(edited[frame][~inside], crops[frame][~inside])
    info = json.loads((edit / EDIT_INFO_FILE).read_text())
    assert info["identity_cosine_to_source"] == pytest.approx(1.0, abs=1e-6)


def test_anonymising_edit_changes_the_face_and_keeps_the_background(sample_edits, micro_inversion, sample_run):
    edit = sample_edits["anon"]
    aligned = open_crops(sample_run.align)
    crops, masks = aligned.crops, aligned.masks
    recon = np.load(micro_inversion / RECON_FILE).astype(np.float32)
    edited, alpha = np.load(edit / EDITED_FILE), np.load(edit / ALPHA_FILE)
    changes = []
    for frame in _face_frames(sample_run.align):
        face = masks[frame] > 127
        changes.append(np.abs(edited[frame].astype(np.float32) - recon[frame])[face].mean())
        # Outside the blend mask every pixel is the source's, exactly.
        outside = alpha[frame] == 0
        assert outside.mean() > 0.2, frame  # there is background to keep
        assert np.array_equal(edited[frame][outside], crops[frame][outside]), frame
    assert min(changes) > MIN_EDIT_EFFECT, changes
    info = json.loads((edit / EDIT_INFO_FILE).read_text())
    # Strength 1 rotates the identity code by 45 degrees (pipeline.editing.editing.reference_edit).
    assert info["identity_cosine_to_source"] == pytest.approx(2**-0.5, abs=1e-5)
    assert not (edit / BASELINE_FILE).exists()  # baseline=False skips the per-frame baseline


# ----------------------------------------------------------------------------------------------
# Render and evaluate on a clip with audio and a faceless stretch


@dataclass(frozen=True)
class AudioRun:
    source: Path
    extract: Path
    align: Path
    encode: Path
    invert: Path
    edit: Path
    render: Path


@pytest.fixture(scope="module")
def audio_run(micro_model, sample_clip, video_tools, tmp_path_factory) -> AudioRun:
    root = tmp_path_factory.mktemp("audio_run")
    faces = [frame.rgb for frame in iter_frames(sample_clip, max_frames=FACE_FRAMES)]
    height, width = faces[0].shape[:2]
    frames = faces[:NOISE_AT] + video_tools.noise_frames(NOISE_FRAMES, width, height, seed=3) + faces[NOISE_AT:]
    # Near-lossless video, so face detection sees what it saw in the sample; AAC audio as phones record.
    source = video_tools.write_video(root / "clip.mp4", frames, rate=25, pix_fmt="yuv444p",
                                     options={"crf": "0"}, audio_seconds=len(frames) / 25)
    run = AudioRun(source, *(root / name for name in ("extract", "align", "encode", "invert", "edit", "render")))
    params = micro_model.settings(edits=EDITS)
    extract_video(source, run.extract, progress=False)
    align_video(run.extract, run.align, params.align, params.model.crop_size, progress=False)
    encode_video(run.align, run.encode, params.encode, progress=False)
    invert_video(micro_model.checkpoint, run.align, run.encode, run.invert, params.invert, progress=False)
    edit_video("anon", params, micro_model.checkpoint, run.align, run.encode, run.invert, run.edit, progress=False)
    render_video(run.extract, run.align, run.invert, run.edit, run.render, params.render, progress=False)
    return run


def _video_facts(path: Path) -> dict:
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        times = [float(frame.pts * frame.time_base) for frame in container.decode(video)]
        audio = [(stream.codec_context.name, stream.codec_context.sample_rate) for stream in container.streams.audio]
        facts = {"times": times, "width": video.width, "height": video.height,
                 "duration": container.duration / av.time_base, "audio": audio}
    if audio:
        with av.open(str(path)) as container:
            facts["samples"] = np.concatenate([frame.to_ndarray() for frame in container.decode(audio=0)], axis=1)
    return facts


def test_rendered_video_keeps_frame_count_timing_and_audio(audio_run):
    statuses = read_alignment(audio_run.align).status
    noise = range(NOISE_AT, NOISE_AT + NOISE_FRAMES)
    assert [statuses[index] for index in noise] == [NO_FACE] * NOISE_FRAMES  # the setup this test relies on

    source, edited = _video_facts(audio_run.source), _video_facts(audio_run.render / VIDEO_FILE)
    frame_time = 1 / 25
    assert len(edited["times"]) == len(source["times"]) == FACE_FRAMES + NOISE_FRAMES
    np.testing.assert_allclose(edited["times"], source["times"], atol=1e-3)  # every frame at its source time
    assert abs(edited["duration"] - source["duration"]) <= frame_time
    assert (edited["width"], edited["height"]) == (source["width"], source["height"])
    assert edited["audio"] == source["audio"] == [("aac", 44100)]
    # The audio is copied, not re-encoded, and stays in sync: it plays back as the very same samples
    # from the same start (the encoder's priming samples are still skipped, not played as a delay).
    assert np.array_equal(edited["samples"], source["samples"])

    side = _video_facts(audio_run.render / SIDE_BY_SIDE_FILE)
    assert (side["width"], side["height"]) == (3 * source["width"], source["height"])  # source, reconstruction, edit
    assert len(side["times"]) == len(source["times"]) and len(side["audio"]) == 1


def test_composite_leaves_faceless_frames_and_background_untouched(audio_run):
    alignment = read_alignment(audio_run.align)
    statuses, transforms = alignment.status, alignment.transforms
    alpha = np.load(audio_run.edit / ALPHA_FILE)
    originals = list(read_lossless_frames(audio_run.extract / FRAMES_FILE))
    changed_faces = 0
    for index, source, result, _, score in composite_frames(audio_run.extract, audio_run.align, audio_run.edit,
                                                         progress=False):
        assert np.array_equal(source, originals[index])
        if statuses[index] == NO_FACE:
            assert np.array_equal(result, originals[index]), index
            assert score is None
            continue
        height, width = source.shape[:2]
        reach = warp_to_frame(alpha[index].astype(np.float32) / 255, transforms[index], width, height) > 0
        assert np.array_equal(result[~reach], source[~reach]), index  # pixels the edit cannot reach
        changed_faces += not np.array_equal(result, source)
        assert score >= 40
    assert changed_faces == FACE_FRAMES  # and the edit is in every face frame


def test_contact_sheet_rows_are_source_reconstruction_and_edit(audio_run):
    crops = open_crops(audio_run.align).crops
    stacks = [np.asarray(crops), np.load(audio_run.invert / RECON_FILE), np.load(audio_run.edit / EDITED_FILE)]
    sheet = cv2.cvtColor(cv2.imread(str(audio_run.render / CONTACT_SHEET_FILE)), cv2.COLOR_BGR2RGB)
    size = crops.shape[1]
    assert sheet.shape[0] == 3 * size and sheet.shape[1] % size == 0
    faces = _face_frames(audio_run.align)
    shown = []
    for column in range(sheet.shape[1] // size):
        tiles = [sheet[row * size:(row + 1) * size, column * size:(column + 1) * size] for row in range(3)]
        matches = [frame for frame in faces if np.array_equal(stacks[0][frame], tiles[0])]
        assert matches, f"column {column} is not a source crop"
        frame = matches[0]
        assert np.array_equal(tiles[1], stacks[1][frame]) and np.array_equal(tiles[2], stacks[2][frame])
        shown.append(frame)
    assert len(shown) == 8 and shown == sorted(set(shown))  # contact_sheet_columns, in time order


def test_evaluate_reports_identity_consistency_and_background(audio_run, tmp_path):
    out = tmp_path / "evaluate"
    evaluate_edit(audio_run.align, audio_run.encode, audio_run.invert, audio_run.edit, audio_run.render, out,
                  EncodeParams(), progress=False)
    metrics = json.loads((out / EVALUATE_METRICS).read_text())
    faces = _face_frames(audio_run.align)
    assert metrics["frames"] == len(faces)
    for name in ("reconstruction", "edit", "baseline"):
        for key in ("tl_id", "tg_id"):
            assert np.isfinite(metrics[name][key]), (name, key)
    assert metrics["edit"]["background_psnr"] >= 40
    assert metrics["edit"]["code_cosine_to_source"] == pytest.approx(2**-0.5, abs=1e-5)
    plot = pd.read_csv(out / PLOT_FILE)
    assert list(plot.columns) == ["frame", "track", "reconstruction", "edit", "baseline"]
    assert plot["frame"].tolist() == faces.tolist()
    assert plot[["reconstruction", "edit", "baseline"]].abs().le(1 + 1e-6).all().all()  # cosines
