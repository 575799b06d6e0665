"""Content keys (`pipeline.runs.store`), shared by `dva edit` and `dva batch`: they change exactly when a stage's
inputs, parameters or the bytes of the files its parameters name change."""

from __future__ import annotations

import json
import shutil

import cv2
import pytest

from pipeline.params import parse_params
from pipeline.runs.store import stage_keys

from .conftest import MICRO_PARAMS, SAMPLE_FRAMES


def _params(**sections):
    return parse_params(MICRO_PARAMS | sections)


def _keys(params, edits):
    return stage_keys("video-sha", "checkpoint-sha", params, {name: params.edits[name] for name in edits})


@pytest.fixture
def specs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "her.png").write_bytes(b"first face")
    (tmp_path / "data" / "clf.safetensors").write_bytes(b"first classifier")
    return {
        "her": {"kind": "reference", "reference": "data/her.png"},
        "glasses": {"kind": "classifier", "classifier": "data/clf.safetensors", "attributes": {"Eyeglasses": 1}},
        "anon": {"kind": "reference", "away": True},
    }


def test_an_unchanged_run_has_the_same_keys(specs):
    assert _keys(_params(edits=specs), specs) == _keys(_params(edits=specs), specs)


def test_inference_precision_reruns_the_inversion_and_what_follows(specs):
    before = _keys(_params(edits=specs), specs)
    after = _keys(_params(edits=specs, invert=MICRO_PARAMS["invert"] | {"precision": "bfloat16"}), specs)
    assert (after.extract, after.align, after.encode) == (before.extract, before.align, before.encode)
    assert after.invert != before.invert and all(after.edits[name] != before.edits[name] for name in specs)


def test_new_bytes_of_a_named_file_rerun_only_that_edit(specs, tmp_path):
    before = _keys(_params(edits=specs), specs)
    (tmp_path / "data" / "her.png").write_bytes(b"another face, same path")
    (tmp_path / "data" / "clf.safetensors").write_bytes(b"refitted classifier")
    after = _keys(_params(edits=specs), specs)
    assert after.invert == before.invert and after.edits["anon"] == before.edits["anon"]
    assert after.edits["her"] != before.edits["her"] and after.edits["glasses"] != before.edits["glasses"]


def test_the_device_does_not_change_any_key(specs):
    here = _keys(_params(edits=specs), specs)
    elsewhere = _keys(_params(edits=specs, invert=MICRO_PARAMS["invert"] | {"device": "cuda"},
                              edit=MICRO_PARAMS["edit"] | {"device": "cuda"}), specs)
    assert here == elsewhere


def test_dva_edit_reruns_an_edit_whose_reference_image_changed(micro_model, sample_clip, tmp_path, monkeypatch):
    """The one-off path: new bytes of the reference image (same path) decode that edit again and reuse the
    inversion; an unchanged rerun builds nothing."""
    from pipeline.video.video_io import iter_frames
    from workflows.one_off import edit_one_video

    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    frames = {f.index: f.rgb for f in iter_frames(sample_clip) if f.index in (10, 90)}
    image = tmp_path / "data" / "her.png"
    cv2.imwrite(str(image), cv2.cvtColor(frames[10], cv2.COLOR_RGB2BGR))
    spec = json.dumps({"kind": "reference", "reference": "data/her.png", "strength": 0.5})
    params = micro_model.settings(extract={"max_frames": SAMPLE_FRAMES})
    work = tmp_path / "work"

    def run() -> dict[str, set[str]]:
        edit_one_video(sample_clip, micro_model.checkpoint, spec, tmp_path / "out.mp4", params, work, progress=False)
        return {stage: {path.name for path in (work / stage).iterdir()} for stage in ("invert", "edit")}

    first = run()
    assert run() == first
    cv2.imwrite(str(image), cv2.cvtColor(frames[90], cv2.COLOR_RGB2BGR))
    changed = run()
    assert changed["invert"] == first["invert"] and len(changed["edit"] - first["edit"]) == 1
    shutil.rmtree(work)
