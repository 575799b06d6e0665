"""`dva edit --preview`: a few frames inverted and edited, a contact sheet, and a full run afterwards that
reuses the preview's inverted frames and produces the inversion it would have produced alone, bit for bit.
"""

from __future__ import annotations

import json

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.core.errors import ParamsError
from pipeline.runs.artifacts import INVERT_METRICS_FILE, INVERT_TABLE_FILE, NOISE_FILE, RECON_FILE

from .conftest import CROP_SIZE, SAMPLE_FRAMES

WINDOW = np.array([0, 5, 11, 23])


def _count_inverted(monkeypatch) -> list[int]:
    """Patch the invert stage to record how many frames it inverts."""
    import stages.invert as stage

    counted, original = [], stage.invert_frames

    def counting(model, sampler, images, *args, **kwargs):
        counted.append(len(images))
        return original(model, sampler, images, *args, **kwargs)

    monkeypatch.setattr(stage, "invert_frames", counting)
    return counted


def _same_inversion(first, second):
    for name in (NOISE_FILE, RECON_FILE):
        assert np.load(first / name).tobytes() == np.load(second / name).tobytes(), name
    assert pq.read_table(first / INVERT_TABLE_FILE).equals(pq.read_table(second / INVERT_TABLE_FILE))
    assert (first / INVERT_METRICS_FILE).read_text() == (second / INVERT_METRICS_FILE).read_text()


def test_preview_window_spreads_the_sheet_columns_over_the_face_frames_in_range():
    from workflows.one_off import preview_window

    with_face = np.array([True] * 10 + [False] * 2 + [True] * 8)
    times = np.arange(20) / 10
    np.testing.assert_array_equal(preview_window(with_face, times, (0, float("inf")), 4), [0, 6, 13, 19])
    np.testing.assert_array_equal(preview_window(with_face, times, (0.5, 1.3), 8), [5, 6, 7, 8, 9, 12])
    assert len(preview_window(with_face, times, (1.0, 1.2), 8)) == 0


def test_a_frame_has_a_face_when_any_track_has_one_there():
    from pipeline.runs.artifacts import Features
    from workflows.one_off import frames_with_faces

    # Two tracks of four frames: the first has a face in frames 0-1, the second in frame 3.
    status = ["ok", "interpolated", "no_face", "no_face", "no_face", "no_face", "no_face", "ok"]
    features = Features(status, np.zeros((8, 2)), np.zeros((8, 102)), np.zeros(2), {},
                        np.repeat([0, 1], 4), np.tile(np.arange(4), 2), {0: np.zeros(2), 1: np.zeros(2)})
    np.testing.assert_array_equal(frames_with_faces(features, 4), [True, True, False, True])


@pytest.mark.parametrize("text", ["3", "a:b", "2:1", "1:1"])
def test_bad_frames_option_names_it(text):
    from workflows.one_off import parse_frames

    with pytest.raises(ParamsError, match="--frames"):
        parse_frames(text)
    assert parse_frames("1.5:") == (1.5, float("inf"))


def test_window_then_full_inversion_equals_the_full_inversion_alone(micro_model, sample_run, tmp_path, monkeypatch):
    from stages.invert import invert_video

    params = micro_model.settings().invert
    invert_video(micro_model.checkpoint, sample_run.align, sample_run.encode, tmp_path / "alone", params,
                 progress=False)
    counted = _count_inverted(monkeypatch)
    cache = tmp_path / "frames"
    metrics = invert_video(micro_model.checkpoint, sample_run.align, sample_run.encode, tmp_path / "window", params,
                           progress=False, window=WINDOW, frame_cache=cache)
    assert metrics["frames"] == len(WINDOW) and sum(counted) == len(WINDOW)
    assert sorted(path.name for path in cache.iterdir()) == sorted(f"{row}.npz" for row in WINDOW)
    invert_video(micro_model.checkpoint, sample_run.align, sample_run.encode, tmp_path / "after", params,
                 progress=False, frame_cache=cache)
    assert sum(counted) == SAMPLE_FRAMES  # the full run inverted only what the window had not
    _same_inversion(tmp_path / "alone", tmp_path / "after")
    window_noise = np.load(tmp_path / "window" / NOISE_FILE)
    np.testing.assert_array_equal(window_noise[WINDOW], np.load(tmp_path / "alone" / NOISE_FILE)[WINDOW])


def test_dva_edit_preview_writes_a_sheet_and_the_full_run_reuses_its_inversion(
        micro_model, sample_clip, tmp_path, monkeypatch):
    from workflows.one_off import edit_one_video

    params = micro_model.settings(extract={"max_frames": SAMPLE_FRAMES})
    spec = json.dumps({"kind": "expression", "expressions": {"mouth_open": 1.0}})
    work, out = tmp_path / "work", tmp_path / "edit.mp4"
    counted = _count_inverted(monkeypatch)
    result = edit_one_video(sample_clip, micro_model.checkpoint, spec, out, params, work, progress=False,
                            preview=(0.0, float("inf")))
    columns = params.render.contact_sheet_columns
    assert len(result["frames"]) == columns and sum(counted) == columns
    sheet = cv2.imread(result["preview"])
    assert result["preview"] == str(tmp_path / "edit_preview.png")
    assert sheet.shape == (3 * CROP_SIZE, columns * CROP_SIZE, 3)
    assert not out.exists()  # a preview renders no video

    edit_one_video(sample_clip, micro_model.checkpoint, spec, out, params, work, progress=False)
    assert sum(counted) == SAMPLE_FRAMES  # the full run inverted the other frames only
    assert not (work / "invert-frames").exists() or not any((work / "invert-frames").iterdir())
    # The full run's sheet shows the same frames: equal up to one grey level (a frame decoded in another
    # place of a UNet batch, test_edit_render).
    full_sheet = cv2.imread(str(tmp_path / "edit_contact_sheet.png"))
    assert np.abs(full_sheet.astype(int) - sheet.astype(int)).max() <= 1
    # A preview after the full run reads the whole inversion: nothing inverted.
    edit_one_video(sample_clip, micro_model.checkpoint, spec, out, params, work, progress=False, preview=(0.5, 0.6))
    assert sum(counted) == SAMPLE_FRAMES
