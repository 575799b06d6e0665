"""The work store (`pipeline.runs.work_store`) shared by `dva edit`, `dva batch` and drivers: one folder per
stage and key, each built once under a lock; and the code fingerprints in its keys
(`pipeline.runs.code_deps`): a comment in the UNet module recomputes the inversion."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest
import yaml

from pipeline.core.atomic import atomic_output_dir
from pipeline.params import parse_params
from pipeline.runs import code_deps
from pipeline.runs.lineage import LINEAGE_FILE
from pipeline.runs.store import stage_keys
from pipeline.runs.work_store import WorkStore

from .conftest import MICRO_PARAMS, REPO_ROOT

STAGES = ("extract", "align", "encode", "invert", "edit", "render", "evaluate")
CLIP_FRAMES = 6
EDIT = '{"kind": "reference", "away": true, "strength": 0.8}'


def _slow_build(calls: list[Path], seconds: float = 0.3):
    """A stage that takes a while and writes its lineage record last, as the stages do."""
    def build(folder: Path) -> None:
        calls.append(folder)
        with atomic_output_dir(folder) as work:
            time.sleep(seconds)
            (work / "out.txt").write_text("done")
            (work / LINEAGE_FILE).write_text("{}")
    return build


def test_two_threads_asking_for_one_output_build_it_once(tmp_path):
    store, calls, results = WorkStore(tmp_path), [], []
    start = threading.Barrier(2)

    def ask() -> None:
        start.wait()
        results.append(store.build_once("invert", "k1", _slow_build(calls)))

    threads = [threading.Thread(target=ask) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1
    assert results == [tmp_path / "invert" / "k1"] * 2 and (results[0] / "out.txt").read_text() == "done"
    assert not list((tmp_path / "invert").glob(".*"))  # no temporary left beside it


def test_a_folder_without_its_lineage_record_is_built_again(tmp_path):
    store, calls = WorkStore(tmp_path), []
    (tmp_path / "align" / "k1").mkdir(parents=True)  # e.g. copied by hand, or left by older code
    store.build_once("align", "k1", _slow_build(calls, 0))
    store.build_once("align", "k1", _slow_build(calls, 0))
    assert calls == [tmp_path / "align" / "k1"] and (tmp_path / "align" / "k1" / LINEAGE_FILE).is_file()


def test_a_failed_build_leaves_nothing_and_releases_its_lock(tmp_path):
    store = WorkStore(tmp_path)

    def fail(folder: Path) -> None:
        with atomic_output_dir(folder):
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        store.build_once("render", "k1", fail)
    assert not list((tmp_path / "render").iterdir())
    calls: list[Path] = []
    store.build_once("render", "k1", _slow_build(calls, 0))
    assert len(calls) == 1


def test_build_all_builds_only_the_missing_outputs_in_one_call(tmp_path):
    store, batches = WorkStore(tmp_path), []

    def build(missing: dict[str, Path]) -> None:
        batches.append(sorted(missing))
        for folder in missing.values():
            _slow_build([], 0)(folder)

    store.build_once("edit", "k-anon", _slow_build([], 0))
    folders = store.build_all("edit", {"anon": "k-anon", "nudge": "k-nudge", "smile": "k-smile"}, build)
    assert batches == [["nudge", "smile"]]
    assert folders == {name: tmp_path / "edit" / f"k-{name}" for name in ("anon", "nudge", "smile")}


# ----------------------------------------------------------------------------------------------
# Code fingerprints


@pytest.fixture
def code_copy(tmp_path):
    """A copy of the project's code whose files a test may change; fingerprints are recomputed around it."""
    root = tmp_path / "code"
    for package in ("pipeline", "stages", "workflows"):
        shutil.copytree(REPO_ROOT / package, root / package, ignore=shutil.ignore_patterns("__pycache__"))
    code_deps.code_fingerprint.cache_clear()
    yield root
    code_deps.code_fingerprint.cache_clear()


def _comment_in_the_unet(root: Path) -> None:
    unet = root / "pipeline" / "model" / "unet.py"
    unet.write_text(unet.read_text() + "# a comment, nothing else\n")
    code_deps.code_fingerprint.cache_clear()


def test_a_comment_in_the_unet_changes_the_fingerprint_of_the_stages_that_run_it(code_copy):
    def fingerprints() -> dict[str, str]:
        return {stage: code_deps.code_fingerprint(f"stages.{stage}", code_copy) for stage in STAGES}

    before = fingerprints()
    # Paths are hashed relative to the root: the copy has the checkout's fingerprints.
    assert before == {stage: code_deps.code_fingerprint(f"stages.{stage}") for stage in STAGES}
    _comment_in_the_unet(code_copy)
    after = fingerprints()
    changed = {stage for stage in STAGES if after[stage] != before[stage]}
    runs_unet = {stage for stage in STAGES if Path("pipeline/model/unet.py") in code_deps.code_files(f"stages.{stage}")}
    assert {"invert", "edit"} <= changed and changed == runs_unet


def test_a_comment_in_the_unet_changes_the_invert_key_and_what_follows(code_copy, monkeypatch):
    params = parse_params(MICRO_PARAMS | {"edits": {"anon": {"kind": "reference", "away": True}}})

    def keys():
        return stage_keys("video-sha", "checkpoint-sha", params, dict(params.edits))

    monkeypatch.setattr(code_deps, "REPO_ROOT", code_copy)
    before = keys()
    _comment_in_the_unet(code_copy)
    after = keys()
    assert after.extract == before.extract and after.invert != before.invert
    assert after.edits["anon"] != before.edits["anon"] and after.renders["anon"] != before.renders["anon"]


def test_an_edit_to_be_evaluated_is_stored_apart_from_one_without_its_baseline():
    """Evaluate reads the per-frame baseline from the edit's folder: an edit stored without it must never be
    handed to evaluate, so the baseline is part of the edit's key (and of what follows it); invert is shared."""
    params = parse_params(MICRO_PARAMS | {"edits": {"anon": {"kind": "reference", "away": True}}})
    plain, evaluated = (stage_keys("video-sha", "checkpoint-sha", params, dict(params.edits), evaluate=evaluate)
                        for evaluate in (False, True))
    assert plain.invert == evaluated.invert
    assert all(getattr(plain, stage)["anon"] != getattr(evaluated, stage)["anon"]
               for stage in ("edits", "renders", "evaluations"))


def test_a_misspelt_module_has_no_fingerprint():
    with pytest.raises(ValueError, match="stages.invrt: no such project module"):
        code_deps.code_fingerprint("stages.invrt")


def test_the_invert_key_hashes_the_gamma_bdia_runs_with():
    def invert_key(**invert) -> str:
        params = parse_params(MICRO_PARAMS | {"invert": MICRO_PARAMS["invert"] | invert})
        return stage_keys("video-sha", "checkpoint-sha", params, {}).invert

    resolved = parse_params(MICRO_PARAMS | {"invert": MICRO_PARAMS["invert"] | {"sampler": "bdia"}}).invert
    # An unset gamma and the gamma it resolves to run the same inversion; another gamma does not.
    assert invert_key(sampler="bdia") == invert_key(sampler="bdia", bdia_gamma=resolved.sampler_config["bdia_gamma"])
    assert invert_key(sampler="bdia") != invert_key(sampler="bdia", bdia_gamma=0.9)
    # DDIM has no gamma: setting one changes nothing.
    assert invert_key(sampler="ddim") == invert_key(sampler="ddim", bdia_gamma=0.9)


# ----------------------------------------------------------------------------------------------
# `dva edit` on the work store

# Notes every stage output folder a process starts building (every stage writes through
# atomic_output_dir, which the stages import by name: patched before they are imported).
BUILD_LOG = """
import os
from contextlib import contextmanager

if os.environ.get("DVA_BUILD_LOG"):
    import pipeline.core.atomic as atomic

    _real = atomic.atomic_output_dir

    @contextmanager
    def _noted(final):
        with open(os.environ["DVA_BUILD_LOG"], "a") as log:
            log.write(f"{os.getpid()} {final}\\n")
        with _real(final) as work:
            yield work

    atomic.atomic_output_dir = _noted
"""


def test_two_dva_edit_runs_at_once_compute_each_step_once(micro_model, sample_clip, dva_executable, tmp_path):
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(micro_model.params | {"extract": {"max_frames": CLIP_FRAMES}}))
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(BUILD_LOG)
    log, work = tmp_path / "builds.log", tmp_path / "work"
    env = os.environ | {"PYTHONPATH": str(hook), "DVA_BUILD_LOG": str(log)}
    processes = [subprocess.Popen(
        [dva_executable, "edit", str(sample_clip), "--checkpoint", str(micro_model.checkpoint), "--edit", EDIT,
         "--out", str(tmp_path / f"out{run}.mp4"), "--work", str(work), "--params", str(params_file), "--evaluate",
         "--quiet"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for run in range(2)]
    outputs = [process.communicate(timeout=600)[0] for process in processes]
    assert [process.returncode for process in processes] == [0, 0], outputs

    built: dict[str, list[str]] = {}
    for line in log.read_text().splitlines():
        final = Path(line.split(" ", 1)[1])
        built.setdefault(final.parent.name, []).append(final.name)
    # Each step built once, by one of the runs, and nothing else (no temporary) left beside it.
    assert built == {stage: [folder.name for folder in (work / stage).iterdir()] for stage in STAGES}
    assert (tmp_path / "out0.mp4").read_bytes() == (tmp_path / "out1.mp4").read_bytes()
    metrics = [json.loads((tmp_path / f"out{run}_metrics.json").read_text()) for run in range(2)]
    assert metrics[0] == metrics[1]


@pytest.mark.slow  # a second full dva edit; the keys it relies on are tested above without one
def test_dva_edit_recomputes_the_inversion_after_a_comment_in_the_unet(micro_model, sample_clip, code_copy,
                                                                         monkeypatch, tmp_path):
    from workflows.one_off import edit_one_video

    params = micro_model.settings(extract={"max_frames": CLIP_FRAMES})
    work = tmp_path / "work"

    def edit() -> dict[str, set[str]]:
        edit_one_video(sample_clip, micro_model.checkpoint, EDIT, tmp_path / "out.mp4", params, work, progress=False,
                       evaluate=True)
        return {stage: {path.name for path in (work / stage).iterdir()} for stage in STAGES}

    monkeypatch.setattr(code_deps, "REPO_ROOT", code_copy)
    first = edit()
    assert edit() == first  # unchanged code: everything reused
    _comment_in_the_unet(code_copy)
    after = edit()
    assert all(after[stage] == first[stage] for stage in ("extract", "align", "encode"))
    assert all(len(after[stage] - first[stage]) == 1 for stage in ("invert", "edit", "render", "evaluate"))
