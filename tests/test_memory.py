"""Flat memory: the whole pipeline's peak resident memory on a 60 s clip stays within 1.5x of that
on a 5 s clip of the same resolution (every stage streams frames in bounded batches)."""

from __future__ import annotations

import pytest

from benchmarks.pipeline_bench import run_benchmark


@pytest.mark.slow  # about 3 minutes: every stage twice, as separate processes (`make test-slow`)
def test_pipeline_peak_memory_does_not_grow_with_clip_length(micro_model, tmp_path):
    # 1 frame/s keeps the test short; the frame count still grows 12x, which is what memory sees.
    results = run_benchmark([5, 60], fps=1, steps=2, checkpoint=micro_model.checkpoint, root=tmp_path,
                            variants=False)
    short, long = results["clips"]
    assert (short["frames"], long["frames"]) == (5, 60)
    assert [row["stage"] for row in long["stages"]] == ["extract", "align", "encode", "invert", "edit", "render",
                                                         "evaluate"]
    assert results["memory"]["ratio"] <= 1.5, results["memory"]
    for before, after in zip(short["stages"], long["stages"]):
        assert after["peak_rss_mib"] <= 1.5 * before["peak_rss_mib"], (before, after)
