"""`dva edit`: the one-off path runs every step, caches intermediates, and reuses the inversion."""

from __future__ import annotations

import json

import av
import pytest

from pipeline.core.errors import ParamsError
from tests.conftest import SAMPLE_FRAMES


def _folders(work, stage):
    return sorted(path.name for path in (work / stage).iterdir()) if (work / stage).is_dir() else []


def test_second_edit_reuses_alignment_and_inversion(micro_model, sample_clip, tmp_path):
    from workflows.one_off import edit_one_video

    params = micro_model.settings(extract={"max_frames": SAMPLE_FRAMES},
                                  edits={"anon": {"kind": "reference", "away": True, "strength": 1.0}})
    work = tmp_path / "work"
    first = edit_one_video(sample_clip, micro_model.checkpoint, "anon", tmp_path / "a.mp4", params, work, progress=False,
                           evaluate=True)
    inversion = _folders(work, "invert")
    stamp = (work / "invert" / inversion[0] / "noise.npy").stat().st_mtime_ns
    inline = '{"kind": "reference", "away": true, "strength": 0.5}'
    edit_one_video(sample_clip, micro_model.checkpoint, inline, tmp_path / "b.mp4", params, work, progress=False)

    # One extract/align/encode/invert for both edits, two edit and render folders.
    assert len(inversion) == 1 and _folders(work, "invert") == inversion
    assert len(_folders(work, "align")) == 1 and len(_folders(work, "edit")) == 2
    assert (work / "invert" / inversion[0] / "noise.npy").stat().st_mtime_ns == stamp
    for name in ("a", "b"):
        with av.open(str(tmp_path / f"{name}.mp4")) as container:
            assert sum(1 for _ in container.decode(video=0)) == SAMPLE_FRAMES
        assert (tmp_path / f"{name}_side_by_side.mp4").is_file()
        assert (tmp_path / f"{name}_contact_sheet.png").is_file()
    saved = json.loads((tmp_path / "a_metrics.json").read_text())
    assert saved == first and {"tl_id", "tg_id"} <= set(first["edit"])


@pytest.mark.parametrize("spec", ["unknown_name", '{"kind": "reference"}', "{not json"])
def test_bad_edit_spec_is_a_params_error(micro_model, spec):
    from workflows.one_off import parse_edit_spec

    with pytest.raises(ParamsError, match="--edit"):
        parse_edit_spec(spec, micro_model.settings())
