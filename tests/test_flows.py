"""The Prefect batch flow over short clips of the sample with two edits, on an ephemeral server:
outputs and summary, a fully cached rerun, a retried transient fault (and which faults are retried), a
corrupt video that fails alone, a local Dask cluster, the `gpu` concurrency limit serialising GPU work,
and Prefect's cache never handing back a deleted or moved work folder.
"""

from __future__ import annotations

import copy
import csv
import shutil
import threading
import time
from pathlib import Path

import av
import numpy as np
import pytest
import yaml

from .conftest import MICRO_PARAMS

CLIP_FRAMES = 6
EDITS = {
    "anonymise": {"kind": "reference", "away": True, "strength": 0.8},
    "nudge": {"kind": "reference", "away": True, "strength": 0.3, "seed": 1},
}


@pytest.fixture(scope="session", autouse=True)
def prefect_home(tmp_path_factory):
    """A private Prefect database and result store, so runs do not see the user's."""
    patch = pytest.MonkeyPatch()
    home = tmp_path_factory.mktemp("prefect-home")
    patch.setenv("PREFECT_HOME", str(home))
    patch.setenv("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    patch.setenv("PREFECT_LOGGING_LEVEL", "WARNING")
    patch.delenv("PREFECT_API_URL", raising=False)
    yield home
    patch.undo()


def _clip(source: Path, destination: Path, start: int, video_tools) -> Path:
    with av.open(str(source)) as container:
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    return video_tools.write_video(destination, frames[start : start + CLIP_FRAMES])


@pytest.fixture(scope="session")
def batch_setup(tmp_path_factory, sample_clip, micro_model, video_tools):
    root = tmp_path_factory.mktemp("batch")
    videos = root / "videos"
    videos.mkdir()
    for number, start in enumerate((0, 30, 60)):
        _clip(sample_clip, videos / f"clip {number}.mp4", start, video_tools)
    params = copy.deepcopy(MICRO_PARAMS) | {"extract": {"max_frames": CLIP_FRAMES}, "edits": EDITS}
    params_file = root / "params.yaml"
    params_file.write_text(yaml.safe_dump(params))
    return root, videos, params_file, micro_model.checkpoint


def _batch(setup, videos: Path, out: Path, **options):
    from workflows.batch import run_batch

    _, _, params_file, checkpoint = setup
    return run_batch(videos, checkpoint, list(EDITS), out, params_file, retries=options.pop("retries", 0),
                     retry_delay=0, quiet=True, evaluate=options.pop("evaluate", True), **options)


@pytest.fixture(scope="session")
def first_batch(batch_setup):
    root, videos, _, _ = batch_setup
    out = root / "out"
    return out, _batch(batch_setup, videos, out)


def test_batch_writes_every_edited_video_and_the_summary(first_batch):
    out, rows = first_batch
    assert [(row.video, row.edit, row.status) for row in rows] == [
        (video, edit, "completed") for video in ("clip_0", "clip_1", "clip_2") for edit in EDITS
    ]
    for row in rows:
        folder = out / "results" / row.video / row.edit
        assert Path(row.output) == folder / "edited.mp4"
        with av.open(str(folder / "edited.mp4")) as container:
            assert sum(1 for _ in container.decode(video=0)) == CLIP_FRAMES
        assert (folder / "side_by_side.mp4").is_file() and (folder / "metrics.json").is_file()
        assert row.tl_id is not None and row.tg_id is not None
    with open(out / "summary.csv") as handle:
        summary = list(csv.DictReader(handle))
    assert [(line["video"], line["edit"], line["status"]) for line in summary] == [
        (row.video, row.edit, row.status) for row in rows
    ]


def test_rerun_is_fully_cached(first_batch, batch_setup):
    out, _ = first_batch
    work = sorted(path.name for path in (out / "work").glob("*/*") if path.is_dir())
    rows = _batch(batch_setup, batch_setup[1], out)
    assert {row.status for row in rows} == {"cached"}
    assert sorted(path.name for path in (out / "work").glob("*/*") if path.is_dir()) == work


def test_inline_json_edit_runs_beside_a_named_edit(first_batch, batch_setup, tmp_path):
    import json

    from workflows.batch import run_batch

    out, _ = first_batch
    _, videos, params_file, checkpoint = batch_setup
    single = tmp_path / "one"
    single.mkdir()
    shutil.copyfile(videos / "clip 1.mp4", single / "clip 1.mp4")
    inline = [json.dumps({"kind": "reference", "away": True, "strength": strength}) for strength in (0.4, 0.6)]
    rows = run_batch(single, checkpoint, ["anonymise", *inline], out, params_file, retries=0, quiet=True,
                     evaluate=True)
    assert [(row.edit, row.status) for row in rows] == [
        ("anonymise", "cached"), ("custom", "completed"), ("custom-2", "completed")]
    for name in ("custom", "custom-2"):
        assert (out / "results" / "clip_1" / name).is_dir()


def test_changed_edit_reruns_only_its_edit_render_and_evaluate(first_batch, batch_setup, tmp_path):
    out, _ = first_batch
    root, videos, params_file, checkpoint = batch_setup
    params = yaml.safe_load(params_file.read_text())
    params["edits"]["nudge"]["strength"] = 0.5
    changed = tmp_path / "params.yaml"
    changed.write_text(yaml.safe_dump(params))
    def folders(stage: str) -> set[Path]:
        return {path for path in (out / "work" / stage).iterdir() if path.is_dir()}

    before = {stage: folders(stage) for stage in ("extract", "invert", "edit", "render")}
    single = tmp_path / "one"
    single.mkdir()
    shutil.copyfile(videos / "clip 0.mp4", single / "clip 0.mp4")

    from workflows.batch import run_batch

    rows = run_batch(single, checkpoint, list(EDITS), out, changed, retries=0, quiet=True, evaluate=True)
    assert [(row.edit, row.status) for row in rows] == [("anonymise", "cached"), ("nudge", "completed")]
    after = {stage: folders(stage) for stage in before}
    assert after["extract"] == before["extract"] and after["invert"] == before["invert"]
    assert len(after["edit"] - before["edit"]) == 1 and len(after["render"] - before["render"]) == 1


def test_without_evaluation_each_edit_is_decoded_once(first_batch, batch_setup, tmp_path, monkeypatch):
    """No baseline, no evaluate step and no metrics without `evaluate`; asked with it afterwards, the edit is
    decoded again with its baseline (never handed to evaluate without one)."""
    import stages.edit
    from pipeline.runs.artifacts import BASELINE_FILE
    from workflows.batch import run_batch

    out, _ = first_batch
    _, videos, params_file, checkpoint = batch_setup
    real, decoded = stages.edit.decode_frames, []

    def counting(model, sampler, latents, *args, **kwargs):
        decoded.append(len(latents))
        return real(model, sampler, latents, *args, **kwargs)

    monkeypatch.setattr(stages.edit, "decode_frames", counting)
    single = tmp_path / "one"
    single.mkdir()
    shutil.copyfile(videos / "clip 2.mp4", single / "clip 2.mp4")
    spec = '{"kind": "reference", "away": true, "strength": 0.45}'
    evaluated = set((out / "work" / "evaluate").iterdir())

    rows = run_batch(single, checkpoint, [spec], out, params_file, retries=0, quiet=True)
    assert [(row.status, row.tl_id, row.tg_id) for row in rows] == [("completed", None, None)]
    assert sum(decoded) == CLIP_FRAMES  # every frame of the one edit once (the clip has a face in every frame)
    edit = Path(rows[0].output).parent
    assert (edit / "edited.mp4").is_file() and not (edit / "metrics.json").exists()
    assert set((out / "work" / "evaluate").iterdir()) == evaluated
    assert not any((folder / BASELINE_FILE).exists() for folder in (out / "work" / "edit").iterdir()
                   if (folder / "edit.json").is_file() and "0.45" in (folder / "edit.json").read_text())

    decoded.clear()
    rows = run_batch(single, checkpoint, [spec], out, params_file, retries=0, quiet=True, evaluate=True)
    assert rows[0].status == "completed" and rows[0].tl_id is not None
    assert sum(decoded) == 2 * CLIP_FRAMES  # the edit and its per-frame baseline
    assert (edit / "metrics.json").is_file()


def test_changed_sampler_reruns_invert_and_everything_after_it(first_batch, batch_setup, tmp_path):
    out, _ = first_batch
    _, videos, params_file, checkpoint = batch_setup
    params = yaml.safe_load(params_file.read_text())
    params["invert"]["sampler"] = "bdia"
    changed = tmp_path / "params.yaml"
    changed.write_text(yaml.safe_dump(params))
    single = tmp_path / "one"
    single.mkdir()
    shutil.copyfile(videos / "clip 1.mp4", single / "clip 1.mp4")

    def folders(stage: str) -> set[Path]:
        return {path for path in (out / "work" / stage).iterdir() if path.is_dir()}

    before = {stage: folders(stage) for stage in ("extract", "encode", "invert", "edit", "render")}
    from workflows.batch import run_batch

    rows = run_batch(single, checkpoint, list(EDITS), out, changed, retries=0, quiet=True)
    assert [(row.edit, row.status) for row in rows] == [(edit, "completed") for edit in EDITS]
    after = {stage: folders(stage) for stage in before}
    assert after["extract"] == before["extract"] and after["encode"] == before["encode"]
    (invert,) = after["invert"] - before["invert"]
    assert np.load(invert / "noise.npy", mmap_mode="r").shape[1] == 2  # BDIA's two latents per frame
    assert len(after["edit"] - before["edit"]) == len(EDITS) and len(after["render"] - before["render"]) == len(EDITS)


def test_corrupt_and_faceless_videos_fail_alone_naming_their_files(first_batch, batch_setup, tmp_path, video_tools):
    out, _ = first_batch
    videos = tmp_path / "mixed"
    videos.mkdir()
    for name in ("clip 0.mp4", "clip 1.mp4"):
        shutil.copyfile(batch_setup[1] / name, videos / name)
    (videos / "broken.mp4").write_bytes((batch_setup[1] / "clip 2.mp4").read_bytes()[:500])
    video_tools.write_video(videos / "empty.mp4", [np.full((64, 64, 3), 90, np.uint8)] * CLIP_FRAMES)
    rows = _batch(batch_setup, videos, out)
    status = {(row.video, row.edit): row.status for row in rows}
    assert status == {(video, edit): "failed" for video in ("broken", "empty") for edit in EDITS} | {
        (video, edit): "cached" for video in ("clip_0", "clip_1") for edit in EDITS}
    errors = {row.video: row.error for row in rows}
    assert errors["broken"].startswith("extract:") and "broken.mp4" in errors["broken"]
    assert errors["empty"] == f"align: {videos / 'empty.mp4'}: no face found in any frame"


def test_transient_fault_is_retried(batch_setup, tmp_path, monkeypatch):
    import stages.align

    real, calls = stages.align.align_video, []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise OSError("transient: disk briefly unavailable")
        return real(*args, **kwargs)

    monkeypatch.setattr(stages.align, "align_video", flaky)
    one = tmp_path / "one"
    one.mkdir()
    shutil.copyfile(batch_setup[1] / "clip 1.mp4", one / "clip 1.mp4")
    rows = _batch(batch_setup, one, tmp_path / "out", retries=2)
    assert len(calls) == 2
    assert {row.status for row in rows} == {"completed"}


def test_quiet_dask_run_prints_the_summary_alone(batch_setup, dva_executable, tmp_path, video_tools):
    """`dva batch --runner dask --quiet` on a local cluster: no Dask or Prefect log lines, here or from the
    workers; a faceless video is reported by its own path, never by the work folder its step ran in."""
    import os
    import subprocess

    _, videos, params_file, checkpoint = batch_setup
    two = tmp_path / "two"
    two.mkdir()
    for name in ("clip 0.mp4", "clip 2.mp4"):
        shutil.copyfile(videos / name, two / name)
    video_tools.write_video(two / "empty.mp4", [np.full((64, 64, 3), 90, np.uint8)] * CLIP_FRAMES)
    out = tmp_path / "out"
    env = {name: value for name, value in os.environ.items() if not name.startswith(("PREFECT_LOGGING", "DASK_"))}
    run = subprocess.run(
        [dva_executable, "batch", str(two), "--checkpoint", str(checkpoint), *(f"--edit={edit}" for edit in EDITS),
         "--out", str(out), "--params", str(params_file), "--runner", "dask", "--workers", "2", "--retries", "0",
         "--quiet"], env=env, capture_output=True, text=True, timeout=900, check=False)
    assert run.returncode == 1, run.stdout + run.stderr
    with open(out / "summary.csv") as handle:
        summary = list(csv.DictReader(handle))
    assert [(line["video"], line["status"]) for line in summary] == [
        ("clip_0", "completed"), ("clip_0", "completed"), ("clip_2", "completed"), ("clip_2", "completed"),
        ("empty", "failed"), ("empty", "failed")]
    assert all(Path(line["output"]).is_file() for line in summary[:4])
    assert {line["error"] for line in summary[4:]} == {f"align: {two / 'empty.mp4'}: no face found in any frame"}
    # stderr: the one error line; stdout: the summary table (rich wraps long cells over several lines).
    assert run.stderr.splitlines() == [f"error: 1 video(s) failed (empty); see {out / 'summary.csv'}"]
    lines = [line for line in run.stdout.splitlines() if line.strip()]
    assert lines[0].startswith("┏") and lines[-1].startswith("└"), run.stdout
    assert all(line[0] in "┏┃┡│└" for line in lines), run.stdout
    assert str(out / "work") not in run.stdout.replace("\n", "")


def test_gpu_limit_serialises_gpu_tasks():
    from prefect import flow, task

    from workflows.flows import ensure_gpu_limit, gpu_device

    spans, lock = [], threading.Lock()

    @task
    def hold_gpu(name: str) -> str:
        with gpu_device() as device:
            start = time.monotonic()
            time.sleep(0.5)
            with lock:
                spans.append((start, time.monotonic()))
        return device

    @flow
    def two_gpu_tasks() -> list[str]:
        assert ensure_gpu_limit(1) == 1
        futures = [hold_gpu.submit("a"), hold_gpu.submit("b")]
        return [future.result() for future in futures]

    assert two_gpu_tasks() == ["cpu", "cpu"]
    (first_start, first_end), (second_start, second_end) = sorted(spans)
    assert second_start >= first_end


def test_a_deleted_or_moved_work_folder_is_never_handed_back_from_the_cache(batch_setup, tmp_path):
    from pipeline.runs.work_store import is_complete
    from workflows.batch import run_batch

    _, videos, params_file, checkpoint = batch_setup
    one = tmp_path / "one"
    one.mkdir()
    shutil.copyfile(videos / "clip 2.mp4", one / "clip 2.mp4")

    def run(out: Path) -> list[tuple[str, str]]:
        rows = run_batch(one, checkpoint, ["anonymise"], out, params_file, retries=0, quiet=True)
        assert all(Path(row.output).is_file() for row in rows)
        return [(row.status, row.error) for row in rows]

    out = tmp_path / "out"
    assert run(out) == [("completed", "")]
    deleted = [next((out / "work" / stage).iterdir()) for stage in ("invert", "render")]
    for folder in deleted:
        shutil.rmtree(folder)
    assert run(out) == [("completed", "")]  # built again; Prefect's cached results named the deleted folders
    assert all(is_complete(folder) for folder in deleted)
    moved = out.rename(tmp_path / "moved")
    assert run(moved) == [("cached", "")]  # the work store moved with it; its cached results name `out`


def _retried(error: BaseException) -> bool:
    """Whether the flow retries a task that failed with `error`."""
    from workflows.flows import _transient

    class Failed:
        def result(self):
            raise error

    return _transient(None, None, Failed())


@pytest.mark.parametrize("error, retried", [
    (OSError("disk briefly unavailable"), True), (FileNotFoundError("gone"), True), (MemoryError(), True),
    (TypeError("bad call"), False), (ValueError("bad value"), False), (KeyError("missing"), False),
    (AttributeError("no attribute"), False), (AssertionError("broken invariant"), False),
    (ZeroDivisionError(), False),
])
def test_only_transient_failures_are_retried(error, retried):
    assert _retried(error) is retried


def test_out_of_memory_is_retried_and_the_projects_own_errors_are_not():
    import torch

    from pipeline.core.errors import DriverError, InputError, MissingWeightsError, ParamsError

    assert _retried(torch.OutOfMemoryError("CUDA out of memory"))
    assert not any(_retried(error) for error in (InputError("in.mp4", "no face"), DriverError("d.mp4", "no face"),
                                                 ParamsError("invert.steps: too many"), MissingWeightsError("x", None)))
