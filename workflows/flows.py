"""Prefect flow that edits every video of a folder or manifest, calling the same stage functions as DVC.

Every stage output goes to the work store `OUT/work/<stage>/<key>/` (`pipeline.runs.work_store`, the
same as `dva edit`'s), where the key hashes what the output depends on: the video's sha256, the
parameters that matter, the checkpoint's sha256, the code the stage runs and the keys of the upstream
outputs. A rerun over the same inputs therefore finds every task cached; a new video runs only its own
tasks; a changed edit spec reruns only edit, render and evaluate of that edit. Folders are written
under a temporary name and renamed when complete, under a per-key file lock, so two runs over the same
output folder never duplicate or corrupt an output. Prefect's cache answers only while the folders a
task returned are complete: a deleted one is built again. Finished edits are published
as `OUT/results/<video>/<edit>/` and summarised in `OUT/summary.csv` and a Prefect table artifact.
"""

from __future__ import annotations

import csv
import fcntl
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import CachePolicy
from prefect.concurrency.sync import concurrency
from prefect.runtime import flow_run
from prefect.states import State
from prefect.tasks import exponential_backoff

from pipeline.core.atomic import atomic_output_dir, atomic_output_file
from pipeline.core.errors import DriverError, DvaError, InputError
from pipeline.core.hashing import content_key, sha256_file
from pipeline.editing.kinds import EditKind
from pipeline.params import Params, for_checkpoint, load_params, parse_faces, with_faces
from pipeline.runs.lineage import read_lineage, write_lineage
from pipeline.runs.store import StageKeys, stage_keys
from pipeline.runs.work_store import WorkStore, is_complete
from pipeline.video.video_sources import VideoSource, discover_videos

GPU_LIMIT = "gpu"
SUMMARY_FILE = "summary.csv"
SUMMARY_ARTIFACT = "dva-batch-summary"
PUBLISHED_FILES = ("edited.mp4", "side_by_side.mp4", "contact_sheet.png")


@dataclass(frozen=True)
class Artifact:
    """One stage output folder and the content key it is stored under."""

    stage: str
    key: str
    path: str
    built_by: str  # run id in the folder's lineage record: which task run did the work


def work_store(out_root: Path | str) -> WorkStore:
    """The work store of a batch output folder: `OUT/work`."""
    return WorkStore(Path(out_root) / "work")


def task_outputs(task_name: str, inputs: dict) -> list[tuple[str, str]]:
    """(stage, key) of every work folder a task returns, from the task's inputs."""
    if task_name == "edit":
        return [("edit", key) for key in inputs["edit_keys"].values()]
    if task_name == "driver":
        return [("extract", inputs["keys"].extract), ("encode", inputs["keys"].encode)]
    return [(task_name, inputs["key"])]


class ContentKeyPolicy(CachePolicy):
    """Cache on the content key the flow passes to each task (`key`) while the task's folders are complete.

    A cached result names folders by absolute path. One deleted since (by hand, or by a cleanup) must not
    be handed to the next task: the task runs again and the work store builds what is missing. The
    store's location is part of the key, so a moved output folder never hands back paths of the old one.
    """

    def compute_key(self, task_ctx, inputs, flow_parameters, **kwargs) -> str | None:
        if not inputs.get("key"):
            return None
        store = work_store(inputs["out_root"])
        if not all(is_complete(store.folder(stage, key)) for stage, key in task_outputs(task_ctx.task.name, inputs)):
            return None
        return f"dva-{task_ctx.task.name}-{inputs['key']}-{content_key(str(store.root.resolve()))}"


def _artifact(stage: str, folder: Path) -> Artifact:
    return Artifact(stage, folder.name, str(folder), read_lineage(folder)["run_id"])


def build_once(out_root: Path | str, stage: str, key: str, build: Callable[[Path], object]) -> Artifact:
    """The artifact of `OUT/work/<stage>/<key>`, after `build(folder)` made it unless it was complete."""
    return _artifact(stage, work_store(out_root).build_once(stage, key, build))


def _run_id() -> str:
    from prefect.runtime import task_run

    return f"prefect:{flow_run.get_id()}/{task_run.get_name()}"


def _transient(task, task_run, state: State) -> bool:
    """Retry what may pass (I/O errors, out of memory); bad input, bad params and bugs fail at once."""
    import torch

    try:
        state.result()
    except DvaError:  # the project's own errors: retrying gives the same answer
        return False
    except (OSError, MemoryError, torch.OutOfMemoryError):
        return True
    except Exception:  # noqa: BLE001 - a programming error (TypeError, KeyError, ...) fails the same way again
        return False
    return False


@contextmanager
def gpu_device(lock_dir: Path | None = None) -> Iterator[str]:
    """Hold a slot of the `gpu` concurrency limit and the device that goes with it ("cpu" without GPUs)."""
    import torch

    with concurrency(GPU_LIMIT, occupy=1, strict=True):
        count = torch.cuda.device_count()
        if count == 0:
            yield "cpu"
            return
        # The global limit bounds how many hold a slot; a local lock per device says which one is free.
        lock_dir = Path(lock_dir or Path(tempfile.gettempdir()) / "dva-gpu-locks")
        lock_dir.mkdir(parents=True, exist_ok=True)
        while True:
            for index in range(count):
                with open(lock_dir / f"cuda-{index}.lock", "a") as handle:
                    try:
                        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except BlockingIOError:
                        continue
                    try:
                        yield f"cuda:{index}"
                    finally:
                        fcntl.flock(handle, fcntl.LOCK_UN)
                    return
            time.sleep(0.2)


def ensure_gpu_limit(slots: int | None = None) -> int:
    """Create the `gpu` global concurrency limit, sized to the visible GPUs (at least 1), if missing."""
    import torch
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectNotFound

    wanted = slots if slots is not None else max(1, torch.cuda.device_count())
    with get_client(sync_client=True) as client:
        try:
            return client.read_global_concurrency_limit_by_name(GPU_LIMIT).limit
        except ObjectNotFound:
            client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=GPU_LIMIT, limit=wanted))
            return wanted


TASK_OPTIONS = dict(cache_policy=ContentKeyPolicy(), persist_result=True, retry_condition_fn=_transient)


@task(name="extract", **TASK_OPTIONS)
def extract_task(video: str, key: str, out_root: str, params: Params) -> Artifact:
    from stages.extract import extract_video

    return build_once(Path(out_root), "extract", key, lambda folder: extract_video(
        Path(video), folder, params.extract.max_frames, progress=False, run_id=_run_id()))


@task(name="align", **TASK_OPTIONS)
def align_task(extract: Artifact, key: str, out_root: str, params: Params) -> Artifact:
    from stages.align import align_video

    return build_once(Path(out_root), "align", key, lambda folder: align_video(
        Path(extract.path), folder, params.align, params.model.crop_size, progress=False, run_id=_run_id()))


@task(name="encode", **TASK_OPTIONS)
def encode_task(align: Artifact, key: str, out_root: str, params: Params) -> Artifact:
    from stages.encode import encode_video

    return build_once(Path(out_root), "encode", key, lambda folder: encode_video(
        Path(align.path), folder, params.encode, progress=False, run_id=_run_id()))


@task(name="invert", **TASK_OPTIONS)
def invert_task(
    checkpoint: str, align: Artifact, encode: Artifact, key: str, out_root: str, params: Params
) -> Artifact:
    from stages.invert import invert_video

    def build(folder: Path) -> None:
        with gpu_device() as device:
            settings = params.invert.model_copy(update={"device": device})
            invert_video(Path(checkpoint), Path(align.path), Path(encode.path), folder, settings, progress=False,
                         run_id=_run_id())

    return build_once(Path(out_root), "invert", key, build)


@task(name="driver", **TASK_OPTIONS)
def driver_task(video: str, keys: StageKeys, key: str, out_root: str, params: Params) -> tuple[Artifact, Artifact]:
    """A motion edit's driving video through extract, align and encode (the same work folders as any video,
    and as `dva edit`'s drivers; `keys` are its stage keys).

    Returns its extract and encode outputs; failures name the driving video.
    """
    from workflows.drivers import prepare_driver

    driver = prepare_driver(Path(video), params, work_store(out_root), progress=False, run_id=_run_id())
    return _artifact("extract", driver.extract), _artifact("encode", driver.encode)


@task(name="edit", **TASK_OPTIONS)
def edit_task(edit_keys: dict[str, str], checkpoint: str, extract: Artifact, align: Artifact, encode: Artifact,
              invert: Artifact, drivers: dict[str, tuple[str, Artifact, Artifact]], key: str, out_root: str,
              params: Params, baseline: bool = False) -> dict[str, Artifact]:
    """All edits of one video: those not already stored are decoded together in one batched pass.

    `drivers` maps motion edits to (driving video, its extract output, its encode output). `baseline`: also
    decode the per-frame baseline evaluate needs (a second decode of every frame; `edit_keys` say which).
    """
    from pipeline.editing.driving import DriverArtifacts, MotionInputs
    from stages.edit import edit_videos

    def build(missing: dict[str, Path]) -> None:
        with gpu_device() as device:
            settings = params.model_copy(update={"edit": params.edit.model_copy(update={"device": device})})
            motion = MotionInputs(Path(extract.path), {
                name: DriverArtifacts(Path(video), Path(driver_extract.path), Path(driver_encode.path))
                for name, (video, driver_extract, driver_encode) in drivers.items()})
            edit_videos(missing, settings, Path(checkpoint), Path(align.path), Path(encode.path),
                        Path(invert.path), baseline=baseline, progress=False, run_id=_run_id(), motion=motion)

    folders = work_store(out_root).build_all("edit", edit_keys, build)
    return {name: _artifact("edit", folder) for name, folder in folders.items()}


@task(name="render", **TASK_OPTIONS)
def render_task(extract: Artifact, align: Artifact, invert: Artifact, edits: dict[str, Artifact], name: str,
                key: str, out_root: str, params: Params) -> Artifact:
    from stages.render import render_video

    edit = edits[name]
    return build_once(Path(out_root), "render", key, lambda folder: render_video(
        Path(extract.path), Path(align.path), Path(invert.path), Path(edit.path), folder, params.render,
        progress=False, run_id=_run_id()))


@task(name="evaluate", **TASK_OPTIONS)
def evaluate_task(align: Artifact, encode: Artifact, invert: Artifact, edits: dict[str, Artifact], name: str,
                  render: Artifact, key: str, out_root: str, params: Params) -> Artifact:
    from stages.evaluate import evaluate_edit

    edit = edits[name]
    return build_once(Path(out_root), "evaluate", key, lambda folder: evaluate_edit(
        Path(align.path), Path(encode.path), Path(invert.path), Path(edit.path), Path(render.path), folder,
        params.encode, progress=False, run_id=_run_id(), align=params.align, settings=params.evaluate))


def publish(out_root: Path, video_id: str, edit: str, render: Artifact, evaluate: Artifact | None,
            run_id: str) -> Path:
    """Hard-link the finished edit into `OUT/results/<video>/<edit>/` (copied across file systems).

    `metrics.json` is published when the edit was evaluated (`evaluate`).
    """
    final = Path(out_root) / "results" / video_id / edit
    sources = [Path(render.path) / name for name in PUBLISHED_FILES]
    if evaluate is not None:
        sources.append(Path(evaluate.path) / "metrics.json")
    # Runs sharing the output folder publish the same edit one at a time (the rename is two steps).
    with work_store(out_root).lock("publish", f"{video_id}-{edit}"), atomic_output_dir(final) as work:
        for source in sources:
            try:
                os.link(source, work / source.name)
            except OSError:
                shutil.copyfile(source, work / source.name)
        write_lineage(work, final, stage="publish", inputs=sources, params={"video": video_id, "edit": edit},
                      run_id=run_id)
    return final


@dataclass
class SummaryRow:
    """One line of the batch summary: one edit of one video."""

    video: str
    edit: str
    status: str
    output: str
    tl_id: float | None
    tg_id: float | None
    error: str


def _state_message(state: State | None) -> str:
    if state is None:
        return "not run"
    try:
        state.result()
    except Exception as exc:  # noqa: BLE001 - reported in the summary, not raised
        return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return state.message or state.name


def _naming_source(reason: str, out_root: Path, source: str) -> str:
    """A failure message that names the user's video instead of the cache folder the step ran in."""
    work = str(Path(out_root) / "work") + os.sep
    if reason.startswith(work) and ": " in reason:
        return f"{source}: {reason.split(': ', 1)[1]}"
    return reason


def write_summary(out_root: Path, rows: list[SummaryRow]) -> Path:
    """`OUT/summary.csv`, replaced atomically."""
    path = Path(out_root) / SUMMARY_FILE
    with atomic_output_file(path) as temporary, open(temporary, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(SummaryRow.__dataclass_fields__))
        writer.writeheader()
        writer.writerows(asdict(row) for row in rows)
    return path


def results_storage(out: Path) -> str:
    """A saved storage block for task results (the cache records) inside the output folder.

    Every worker that can reach the folder can read them. They name folders by absolute path, so a
    moved output folder does not use them (`ContentKeyPolicy`); its work store still has every output.
    """
    from prefect.filesystems import LocalFileSystem

    folder = Path(out).resolve() / ".prefect" / "results"
    name = f"dva-results-{content_key(str(folder))}"
    LocalFileSystem(basepath=str(folder)).save(name, overwrite=True)
    return f"local-file-system/{name}"


STAGES = ("extract", "align", "encode", "invert", "edit", "render", "evaluate")


def resolve_edits(names: list[str], params: Params) -> dict[str, EditKind]:
    """Edit specs by name: names under `edits` in the params, spec files or inline JSON."""
    from workflows.one_off import parse_edit_spec

    edits: dict[str, EditKind] = {}
    for text in names:
        name, spec = parse_edit_spec(text, params)
        # Several inline specs all parse as "custom": number them so each keeps its own outputs.
        unique, number = name, 1
        while unique in edits:
            number += 1
            unique = f"{name}-{number}"
        edits[unique] = spec
    if not edits:
        raise DvaError("no edits given: name at least one edit (--edit)")
    return edits


@flow(name="dva-batch", log_prints=True)
def batch_flow(
    videos: str,
    edits: list[str],
    checkpoint: str,
    out_root: str,
    params_file: str = "params.yaml",
    retries: int = 2,
    retry_delay_seconds: float = 10.0,
    gpu_slots: int | None = None,
    evaluate: bool = False,
    faces: str | None = None,
) -> list[SummaryRow]:
    """Extract, align, encode, invert, edit and render every video; one bad video fails alone.

    `videos` is a folder or a manifest, read again on every run, so a scheduled run picks up new
    videos. Stage outputs are cached by content under `out_root/work`. `evaluate` also decodes each
    edit's per-frame baseline and scores the edit (TL-ID / TG-ID in the summary); without it every
    frame is decoded once per edit. `faces` (`all`, `largest`, `0,2`) replaces `align.faces`.
    """
    out = Path(out_root)
    if not Path(checkpoint).is_file():
        raise InputError(checkpoint, "checkpoint not found")
    # Conventions and crop size follow the checkpoint from the first step (pipeline/params.py).
    params = for_checkpoint(load_params(Path(params_file)), Path(checkpoint), source=params_file)
    if faces is not None:
        params = with_faces(params, parse_faces(faces))
    specs = resolve_edits(edits, params)
    # Inline and file specs join the named ones, so every stage finds each edit under its name.
    params = params.model_copy(update={"edits": specs})
    sources = discover_videos(Path(videos))
    ensure_gpu_limit(gpu_slots)
    rows = _run_videos(sources, specs, checkpoint, out, params, retries, retry_delay_seconds, evaluate)
    write_summary(out, rows)
    done = sum(row.status != "failed" for row in rows)
    create_table_artifact(key=SUMMARY_ARTIFACT, table=[asdict(row) for row in rows],
                          description=f"dva batch: {done} of {len(rows)} edits done")
    return rows


def _prepare_drivers(sources: list[VideoSource], specs: dict[str, EditKind], checkpoint_sha256: str, out_root: str,
                     params: Params, options: dict) -> dict[str, tuple[str, Artifact, Artifact]]:
    """Prepare every motion edit's driving video before any video runs: a bad driver stops the batch.

    A driver is a video of the batch (by id), an id under `drivers:`/`videos:` in the params, or a file.
    Returns, per motion edit, the driver file and its extract and encode outputs.
    """
    from pipeline.editing.driving import driver_video

    videos = {source.video_id: Path(source.path) for source in sources}
    prepared = {}
    for name, spec in specs.items():
        if spec.driven_by() is None:
            continue
        video = driver_video(spec.driven_by(), {"batch": videos} | params.video_files())
        if not video.is_file():
            raise DriverError(video, "file not found")
        keys = stage_keys(sha256_file(video), checkpoint_sha256, params, {})
        extract, encode = driver_task.with_options(**options)(str(video), keys, keys.encode, out_root, params)
        prepared[name] = (str(video), extract, encode)
    return prepared


def _run_videos(sources: list[VideoSource], specs: dict[str, EditKind], checkpoint: str, out: Path, params: Params,
                retries: int, retry_delay_seconds: float, evaluate: bool) -> list[SummaryRow]:
    import json

    logger = get_run_logger()
    out_root = str(out)
    options = dict(retries=retries, retry_delay_seconds=exponential_backoff(retry_delay_seconds) if retries else 0,
                   result_storage=results_storage(out))
    extract_run, align_run, encode_run, invert_run, edit_run, render_run, evaluate_run = (
        stage_task.with_options(**options) for stage_task in
        (extract_task, align_task, encode_task, invert_task, edit_task, render_task, evaluate_task)
    )
    checkpoint_sha256 = sha256_file(Path(checkpoint))
    run_id = f"prefect:{flow_run.get_id()}"
    drivers = _prepare_drivers(sources, specs, checkpoint_sha256, out_root, params, options)
    driver_keys = {name: driver[2].key for name, driver in drivers.items()}
    planned = []
    for source in sources:
        try:
            video_sha256 = sha256_file(Path(source.path))
        except OSError as exc:
            planned.append((source, {}, f"extract: {source.path}: cannot read ({exc.strerror})"))
            continue
        keys = stage_keys(video_sha256, checkpoint_sha256, params, specs, driver_keys, evaluate=evaluate)
        extract = extract_run.submit(source.path, keys.extract, out_root, params)
        align = align_run.submit(extract, keys.align, out_root, params)
        encode = encode_run.submit(align, keys.encode, out_root, params)
        invert = invert_run.submit(checkpoint, align, encode, keys.invert, out_root, params)
        edits = edit_run.submit(keys.edits, checkpoint, extract, align, encode, invert, drivers,
                                content_key("edits", sorted(keys.edits.items())), out_root, params, evaluate)
        per_edit = {}
        for name in specs:
            render = render_run.submit(extract, align, invert, edits, name, keys.renders[name], out_root, params)
            per_edit[name] = [extract, align, encode, invert, edits, render]
            if evaluate:
                per_edit[name].append(evaluate_run.submit(align, encode, invert, edits, name, render,
                                                          keys.evaluations[name], out_root, params))
        planned.append((source, per_edit, None))

    rows = []
    for source, per_edit, error in planned:
        if error is not None:
            rows += [SummaryRow(source.video_id, name, "failed", "", None, None, error) for name in specs]
            logger.error("%s failed: %s", source.video_id, error)
            continue
        for name, futures in per_edit.items():
            for future in futures:
                future.wait()
            failed = next(((stage, future) for stage, future in zip(STAGES, futures)
                           if not future.state.is_completed()), None)
            if failed is not None:
                message = f"{failed[0]}: {_naming_source(_state_message(failed[1].state), out, source.path)}"
                rows.append(SummaryRow(source.video_id, name, "failed", "", None, None, message))
                logger.error("%s / %s failed at %s", source.video_id, name, message)
                continue
            artifacts = [future.result() for future in futures]
            artifacts[4] = artifacts[4][name]
            render, scored = artifacts[5], (artifacts[6] if evaluate else None)
            published = publish(out, source.video_id, name, render, scored, run_id)
            scores = (json.loads((Path(scored.path) / "metrics.json").read_text())["edit"] if scored
                      else {"tl_id": None, "tg_id": None})
            # Cached: every stage output of this edit was built by an earlier run (or another one).
            cached = not any(artifact.built_by.startswith(run_id + "/") for artifact in artifacts)
            rows.append(SummaryRow(source.video_id, name, "cached" if cached else "completed",
                                   str(published / "edited.mp4"), scores["tl_id"], scores["tg_id"], ""))
    return rows
