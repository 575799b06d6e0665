"""Edit one video outside DVC: extract, align, encode, invert, edit and render in one command.

Intermediates are kept in a work store (`pipeline.runs.work_store`, the same layout as `dva batch`'s
`OUT/work`) keyed by the video's content, the parameters and the code each step depends on, so a
second edit of the same video reuses its alignment and its inversion (the expensive part) and only
decodes and renders again. Each step is built under a lock: two runs on the same video compute it once.
"""

from __future__ import annotations

import json
import shutil
from enum import Enum
from pathlib import Path
from typing import get_args

import typer
import yaml

from pipeline.core.atomic import atomic_output_file
from pipeline.core.conventions import Conventions
from pipeline.core.errors import DvaError, InputError, ParamsError
from pipeline.core.hashing import sha256_file
from pipeline.editing.driving import MotionInputs, driver_video
from pipeline.editing.kinds import EditKind, parse_edit
from pipeline.params import Params, for_checkpoint, load_params
from pipeline.runs.artifacts import VIDEO_FILE
from pipeline.runs.store import stage_keys
from pipeline.runs.work_store import WorkStore
from stages.edit import edit_video
from stages.evaluate import evaluate_edit
from stages.invert import invert_video
from stages.render import render_video
from workflows.drivers import prepare_driver, prepare_video

ConventionsChoice = Enum("ConventionsChoice", {name: name for name in get_args(Conventions)}, type=str)


def parse_edit_spec(text: str, params: Params) -> tuple[str, EditKind]:
    """An edit named in the params, a YAML/JSON file holding one spec, or an inline JSON spec."""
    if text in params.edits:
        return text, params.edits[text]
    path = Path(text)
    if path.suffix in {".yaml", ".yml", ".json"}:
        if not path.is_file():
            raise InputError(path, "edit spec file not found")
        raw, name = yaml.safe_load(path.read_text()), path.stem
    elif text.lstrip().startswith("{"):
        try:
            raw, name = json.loads(text), "custom"
        except json.JSONDecodeError as exc:
            raise ParamsError(f"--edit: not valid JSON ({exc.msg})") from None
    else:
        raise ParamsError(f"--edit {text!r}: not an edit under `edits` in the params, a spec file or inline JSON")
    return name, parse_edit(raw, "--edit")


def edit_one_video(
    video: Path, checkpoint: Path, edit: str, out: Path, params: Params, work: Path, progress: bool = True,
    conventions: Conventions | None = None,
) -> dict:
    """Edit `video` with the spec `edit`; writes `out` (mp4) plus side-by-side, sheet and metrics beside it.

    Intermediates go to the work store at `work` (`<work>/<stage>/<key>/`). `conventions` replaces the
    params'; `auto` follows the checkpoint (`pipeline/core/conventions.py`).
    """
    video, out = Path(video), Path(out)
    if not Path(checkpoint).is_file():
        raise InputError(checkpoint, "checkpoint not found")
    params = for_checkpoint(params, Path(checkpoint), conventions)
    name, spec = parse_edit_spec(edit, params)
    params = params.model_copy(update={"edits": {name: spec}})
    video_sha256 = sha256_file(video)
    store = WorkStore(work)
    # A motion edit's driver goes through the same cached steps (first: a bad driver stops before the
    # video's own work); its features are part of the edit's key.
    drivers = {}
    if spec.driven_by() is not None:
        drivers[name] = prepare_driver(driver_video(spec.driven_by(), params.video_files()), params, store, progress)
    extract_dir, align_dir, encode_dir = prepare_video(video, params, store, progress)
    keys = stage_keys(video_sha256, sha256_file(Path(checkpoint)), params, {name: spec},
                      {edit: driver.encode.name for edit, driver in drivers.items()})
    invert_dir = store.build_once("invert", keys.invert, lambda d: invert_video(
        checkpoint, align_dir, encode_dir, d, params.invert, progress))
    edit_dir = store.build_once("edit", keys.edits[name], lambda d: edit_video(
        name, params, checkpoint, align_dir, encode_dir, invert_dir, d, baseline=True, progress=progress,
        motion=MotionInputs(extract_dir, drivers)))
    render_dir = store.build_once("render", keys.renders[name], lambda d: render_video(
        extract_dir, align_dir, invert_dir, edit_dir, d, params.render, progress))
    evaluate_dir = store.build_once("evaluate", keys.evaluations[name], lambda d: evaluate_edit(
        align_dir, encode_dir, invert_dir, edit_dir, render_dir, d, params.encode, progress, align=params.align))
    stem = out.with_suffix("")
    published = ((render_dir / VIDEO_FILE, out), (render_dir / "side_by_side.mp4", Path(f"{stem}_side_by_side.mp4")),
                 (render_dir / "contact_sheet.png", Path(f"{stem}_contact_sheet.png")))
    for produced, destination in published:
        with atomic_output_file(destination) as temporary:
            shutil.copyfile(produced, temporary)
    metrics = json.loads((evaluate_dir / "metrics.json").read_text())
    with atomic_output_file(Path(f"{stem}_metrics.json")) as temporary:
        temporary.write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


def cli(
    video: Path = typer.Argument(..., help="Input video."),
    checkpoint: Path = typer.Option(..., "--checkpoint", help="Model file from `dva train`."),
    edit: str = typer.Option(..., "--edit", help="Edit name from params, a spec .yaml/.json file, or inline JSON."),
    out: Path = typer.Option(..., "--out", help="Edited video (.mp4); side-by-side, sheet and metrics go beside it."),
    work: Path = typer.Option(Path(".dva-work"), help="Work store for intermediates (reused across edits and runs)."),
    params: Path = typer.Option(Path("params.yaml"), "--params", help="Parameters file (must exist)."),
    conventions: ConventionsChoice = typer.Option(
        None, "--conventions", case_sensitive=False, help="Whose pipeline every step follows (overrides `conventions:` in the params): `reference` does what "
             "the paper's editing scripts do (DDIM over the reference's timesteps, the raw mean identity, hard "
             "masks, whole-crop paste-back, its alignment), `project` this project's choices (exact BDIA "
             "inversion, union blend mask); `auto` (the params' default) follows the checkpoint: `reference` "
             "for a model from `dva import-reference`. Settings the params file sets explicitly still win."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    if out.suffix.lower() != ".mp4":
        raise DvaError(f"{out}: the output must be an .mp4 file")
    metrics = edit_one_video(video, checkpoint, edit, out, load_params(params), work, progress=not quiet,
                             conventions=conventions.value if conventions else None)
    if not quiet:
        typer.echo(f"{out}: TL-ID {metrics['edit']['tl_id']:.3f}, TG-ID {metrics['edit']['tg_id']:.3f}")
