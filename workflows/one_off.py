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

import numpy as np
import typer
import yaml

from pipeline.core.atomic import atomic_output_file
from pipeline.core.config import ONE_OFF
from pipeline.core.conventions import Conventions
from pipeline.core.errors import DvaError, InputError, ParamsError
from pipeline.core.hashing import content_key, sha256_file
from pipeline.editing.driving import MotionInputs, driver_video
from pipeline.editing.kinds import EditKind, parse_edit
from pipeline.faces.face_detection import make_landmark_detector
from pipeline.faces.identity import identity_encoder_from_params, l2_normalise
from pipeline.faces.still_faces import encode_still
from pipeline.faces.tracking import NO_FACE, OK
from pipeline.params import Params, for_checkpoint, load_params, packaged_defaults_file, parse_faces, with_faces
from pipeline.runs.artifacts import (
    VIDEO_FILE,
    Features,
    open_crops,
    read_edit,
    read_features,
    read_frame_times,
    read_reconstruction,
)
from pipeline.runs.store import StageKeys, stage_keys
from pipeline.runs.work_store import WorkStore, is_complete
from stages.edit import edit_video
from stages.evaluate import evaluate_edit
from stages.invert import invert_video
from stages.render import render_video, sheet_columns, write_contact_sheet
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
    return name, parse_edit(raw, "--edit", ONE_OFF)


def face_by_photo(photo: Path, video: Path, params: Params, store: WorkStore, progress: bool) -> tuple[int, float]:
    """The track of `video` whose identity is nearest the face in `photo`, and their cosine similarity.

    Every face of the video is tracked and encoded (cached like any step); a best match below the identity
    encoder's same-person threshold is an InputError naming the photo.
    """
    _, _, encode_dir = prepare_video(video, with_faces(params, "all"), store, progress)
    features = read_features(encode_dir)
    encoder = identity_encoder_from_params(params.encode)
    detector = make_landmark_detector(params.align.backend, params.align.fan_weights, params.align.detector_upsample,
                                      params.align.detection_threshold)
    photo_code = encode_still(Path(photo), detector, encoder, params.model.crop_size).identity
    similarity = {track_id: float(l2_normalise(photo_code) @ code) for track_id, code in features.track_identities.items()}
    best = max(similarity, key=similarity.get)
    if similarity[best] < encoder.same_person_similarity:
        raise InputError(photo, f"no face of {video} is this person: the nearest is track {best}, similarity "
                         f"{similarity[best]:.3f} < {encoder.same_person_similarity} ({encoder.name}'s same-person "
                         "threshold)")
    return best, similarity[best]


def edit_one_video(
    video: Path, checkpoint: Path, edit: str, out: Path, params: Params, work: Path, progress: bool = True,
    conventions: Conventions | None = None, evaluate: bool = False, preview: tuple[float, float] | None = None,
    faces: str | list[int] | None = None, face_photo: Path | None = None,
) -> dict | None:
    """Edit `video` with the spec `edit`; writes `out` (mp4) plus side-by-side and sheet beside it.

    Intermediates go to the work store at `work` (`<work>/<stage>/<key>/`). `conventions` replaces the
    params'; `auto` follows the checkpoint (`pipeline/core/conventions.py`). `evaluate` also decodes the
    per-frame baseline, scores the edit and writes `OUT_metrics.json`; returns the metrics (else None).
    `preview` (start, end seconds) edits only a few frames in that time range and writes `OUT_preview.png`
    instead (:func:`preview_sheet`); returns where and which frames. `faces` replaces `align.faces`;
    `face_photo` edits the one face of the video nearest that photo's (:func:`face_by_photo`).
    """
    video, out = Path(video), Path(out)
    if not Path(checkpoint).is_file():
        raise InputError(checkpoint, "checkpoint not found")
    params = for_checkpoint(params, Path(checkpoint), conventions, context=ONE_OFF)
    name, spec = parse_edit_spec(edit, params)
    params = params.model_copy(update={"edits": {name: spec}})
    if faces is not None:
        params = with_faces(params, faces)
    video_sha256 = sha256_file(video)
    store = WorkStore(work)
    chosen = None
    if face_photo is not None:
        if not Path(face_photo).is_file():
            raise InputError(face_photo, "face photo not found")
        track_id, similarity = face_by_photo(Path(face_photo), video, params, store, progress)
        params, chosen = with_faces(params, [track_id]), {"track": track_id, "similarity": similarity}
    # A motion edit's driver goes through the same cached steps (first: a bad driver stops before the
    # video's own work); its features are part of the edit's key.
    drivers = {}
    if spec.driven_by() is not None:
        drivers[name] = prepare_driver(driver_video(spec.driven_by(), params.video_files()), params, store, progress)
    extract_dir, align_dir, encode_dir = prepare_video(video, params, store, progress)
    keys = stage_keys(video_sha256, sha256_file(Path(checkpoint)), params, {name: spec},
                      {edit: driver.encode.name for edit, driver in drivers.items()}, evaluate=evaluate)
    # A preview's inverted frames, by frame: the whole inversion reads them instead of inverting them again.
    frame_cache = store.folder("invert-frames", keys.invert)
    if preview is not None:
        return preview_sheet(name, params, checkpoint, store, keys, (extract_dir, align_dir, encode_dir),
                             MotionInputs(extract_dir, drivers), preview, Path(f"{out.with_suffix('')}_preview.png"),
                             progress) | ({"face_photo": chosen} if chosen else {})

    def invert_all(folder: Path) -> None:
        invert_video(checkpoint, align_dir, encode_dir, folder, params.invert, progress, frame_cache=frame_cache)
        shutil.rmtree(frame_cache, ignore_errors=True)  # superseded by the whole inversion (same lock held)

    invert_dir = store.build_once("invert", keys.invert, invert_all)
    edit_dir = store.build_once("edit", keys.edits[name], lambda d: edit_video(
        name, params, checkpoint, align_dir, encode_dir, invert_dir, d, baseline=evaluate, progress=progress,
        motion=MotionInputs(extract_dir, drivers)))
    render_dir = store.build_once("render", keys.renders[name], lambda d: render_video(
        extract_dir, align_dir, invert_dir, edit_dir, d, params.render, progress))
    stem = out.with_suffix("")
    published = ((render_dir / VIDEO_FILE, out), (render_dir / "side_by_side.mp4", Path(f"{stem}_side_by_side.mp4")),
                 (render_dir / "contact_sheet.png", Path(f"{stem}_contact_sheet.png")))
    for produced, destination in published:
        with atomic_output_file(destination) as temporary:
            shutil.copyfile(produced, temporary)
    if not evaluate:
        return {"face_photo": chosen} if chosen else None
    evaluate_dir = store.build_once("evaluate", keys.evaluations[name], lambda d: evaluate_edit(
        align_dir, encode_dir, invert_dir, edit_dir, render_dir, d, params.encode, progress, align=params.align,
        settings=params.evaluate))
    metrics = json.loads((evaluate_dir / "metrics.json").read_text()) | ({"face_photo": chosen} if chosen else {})
    with atomic_output_file(Path(f"{stem}_metrics.json")) as temporary:
        temporary.write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


def frames_with_faces(features: Features, frame_count: int) -> np.ndarray:
    """(frame_count,) bool: the frames where at least one chosen face is (detected or interpolated)."""
    with_face = np.zeros(frame_count, dtype=bool)
    with_face[features.frame[[state != NO_FACE for state in features.status]]] = True
    return with_face


def preview_window(with_face: np.ndarray, times: np.ndarray, seconds: tuple[float, float], count: int) -> np.ndarray:
    """Up to `count` frames with a face (`with_face`, per frame), spread evenly over the frames shown from
    `seconds[0]` to before `seconds[1]`."""
    start, end = seconds
    shown = [OK if face and start <= time < end else NO_FACE for face, time in zip(with_face, times)]
    return np.array(sheet_columns(shown, count), dtype=np.int64)


def preview_sheet(name: str, params: Params, checkpoint: Path, store: WorkStore, keys: StageKeys,
                  prepared: tuple[Path, Path, Path], motion: MotionInputs, seconds: tuple[float, float],
                  sheet: Path, progress: bool = True) -> dict:
    """Invert and edit only a window of frames (`render.contact_sheet_columns` face frames spread over
    `seconds`) and write their contact sheet (source / reconstruction / edit rows) to `sheet`.

    The window's inverted frames go to the work store's per-frame cache of the video's inversion key (the
    whole inversion, when it already exists, is read instead): the full edit afterwards inverts only the
    frames the preview did not, and its inversion is the same as without a preview.
    """
    extract_dir, align_dir, encode_dir = prepared
    features, times = read_features(encode_dir), read_frame_times(extract_dir)[1]
    window = preview_window(frames_with_faces(features, len(times)), times, seconds,
                            params.render.contact_sheet_columns)
    if len(window) == 0:
        raise InputError(extract_dir.parent.parent, f"no face frames between {seconds[0]} s and {seconds[1]} s")
    with store.lock("invert", keys.invert):  # the lock the whole inversion is built under
        invert_dir = store.folder("invert", keys.invert)
        if not is_complete(invert_dir):
            invert_dir = store.build_once("invert-window", content_key(keys.invert, window.tolist()),
                                          lambda d: invert_video(checkpoint, align_dir, encode_dir, d, params.invert,
                                                                 progress, window=window, measure=False,
                                                                 frame_cache=store.folder("invert-frames", keys.invert)))
    edit_dir = store.build_once("edit-window", content_key(keys.edits[name], window.tolist()), lambda d: edit_video(
        name, params, checkpoint, align_dir, encode_dir, invert_dir, d, baseline=False, progress=progress,
        motion=motion, window=window))
    with atomic_output_file(sheet) as temporary:
        shown = [[int(row) for row in rows if features.status[row] != NO_FACE and features.frame[row] in window]
                 for rows in features.tracks.values()]
        write_contact_sheet(temporary, open_crops(align_dir).crops, read_reconstruction(invert_dir),
                            read_edit(edit_dir).edited, [rows for rows in shown if rows])
    return {"preview": str(sheet), "frames": window.tolist()}


def parse_frames(text: str) -> tuple[float, float]:
    """`START:END` in seconds (either may be empty: the clip's start or end)."""
    start, colon, end = text.partition(":")
    try:
        if not colon:
            raise ValueError
        window = (float(start) if start else 0.0, float(end) if end else float("inf"))
    except ValueError:
        raise ParamsError(f"--frames {text!r}: expected START:END in seconds, e.g. 1.5:3") from None
    if not window[0] < window[1]:
        raise ParamsError(f"--frames {text!r}: START must be before END")
    return window


def one_off_params(path: Path | None) -> Params:
    """The params of a one-off run: `path` (which must exist), else ./params.yaml, else the packaged defaults.

    Outside a project folder there is no params.yaml: the run goes on with the defaults and says so in
    one line (on stderr: stdout stays the result's). Weights files may be named by absolute path.
    """
    if path is None:
        path = Path("params.yaml")
        if not path.is_file():
            typer.echo("no params.yaml here: using the packaged defaults", err=True)
            path = packaged_defaults_file()
    return load_params(path, ONE_OFF)


def cli(
    video: Path = typer.Argument(..., help="Input video."),
    checkpoint: Path = typer.Option(..., "--checkpoint", help="Model file from `dva train`."),
    edit: str = typer.Option(..., "--edit", help="Edit name from params, a spec .yaml/.json file, or inline JSON."),
    out: Path = typer.Option(..., "--out", help="Edited video (.mp4); side-by-side, sheet and metrics go beside it."),
    work: Path = typer.Option(Path(".dva-work"), help="Work store for intermediates (reused across edits and runs)."),
    params: Path = typer.Option(None, "--params", help="Parameters file (must exist); default: ./params.yaml, or "
                                "the packaged defaults where there is none. Weights paths may be absolute here."),
    conventions: ConventionsChoice = typer.Option(
        None, "--conventions", case_sensitive=False, help="Whose pipeline every step follows (overrides `conventions:` in the params): `reference` does what "
             "the paper's editing scripts do (DDIM over the reference's timesteps, the raw mean identity, hard "
             "masks, whole-crop paste-back, its alignment), `project` this project's choices (exact BDIA "
             "inversion, union blend mask); `auto` (the params' default) follows the checkpoint: `reference` "
             "for a model from `dva import-reference`. Settings the params file sets explicitly still win."),
    preview: bool = typer.Option(False, "--preview", help="Edit only a few frames spread over the clip "
                                 "(render.contact_sheet_columns) and write OUT_preview.png (source / reconstruction / "
                                 "edit rows); the full edit afterwards reuses their inversion."),
    frames: str = typer.Option(None, "--frames", help="A preview of frames from START to END seconds (START:END)."),
    evaluate: bool = typer.Option(False, "--evaluate", help="Also score the edit (TL-ID, TG-ID, identity, landmarks; "
                                  "OUT_metrics.json): decodes the per-frame baseline, a second decode of every frame."),
    faces: str = typer.Option(None, "--faces", help="Which faces to edit: largest (the params' default: one face, "
                              "followed), all (every face, one track each), or track ids of `all` such as 0,2."),
    face_photo: Path = typer.Option(None, "--face-photo", help="Edit the one face of the video that is the person "
                                    "in this photo (nearest identity; an error when none is the same person)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    if out.suffix.lower() != ".mp4":
        raise DvaError(f"{out}: the output must be an .mp4 file")
    if faces is not None and face_photo is not None:
        raise DvaError("--faces and --face-photo both choose faces: give one of them")
    window = parse_frames(frames) if frames is not None else (0.0, float("inf")) if preview else None
    metrics = edit_one_video(video, checkpoint, edit, out, one_off_params(params), work, progress=not quiet,
                             conventions=conventions.value if conventions else None, evaluate=evaluate,
                             preview=window, faces=parse_faces(faces) if faces is not None else None,
                             face_photo=face_photo)
    if quiet:
        return
    chosen = (metrics or {}).get("face_photo")
    if chosen:
        typer.echo(f"{face_photo}: track {chosen['track']} (identity similarity {chosen['similarity']:.3f})")
    if window is not None:
        typer.echo(f"{metrics['preview']}: frames {', '.join(map(str, metrics['frames']))}")
    elif metrics and "edit" in metrics:
        tracks = f", {len(metrics['tracks'])} tracks" if len(metrics.get("tracks", [])) > 1 else ""
        typer.echo(f"{out}: TL-ID {metrics['edit']['tl_id']:.3f}, TG-ID {metrics['edit']['tg_id']:.3f}{tracks}")
    else:
        typer.echo(f"{out}: done")
