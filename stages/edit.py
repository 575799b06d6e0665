"""Apply one edit to a video: edit each face track's identity once, decode every face from its cached noise map.

Rows are the align table's (a track's frames, track after track; one track unless `align.faces` chooses
several): each track's identity is edited on its own (anonymising draws per person), the kind's motion
codes are computed per track, and all rows decode together in batches. An edit whose spec lists `tracks`
leaves the other faces as the source (their blend masks zero); `edit.json` keeps a record per track under
`tracks`, its top level is the first edited track's.

The edited identity `z'` comes from the edit's kind (pipeline/editing/kinds/: classifier directions, a
text prompt through CLIP, a reference face / anonymisation; motion and expression edits keep it and
change the motion codes instead). Every face frame is decoded from the noise map of
`dva invert` with `z_face(z', z_lnd[n])`, then blended over the source crop with a feathered mask
that is the union of the original and the edited face regions, so the background stays the source.

Outputs in OUT_DIR: `edited.npy` (N, R, R, 3) uint8 blended crops, `alpha.npy` (N, R, R) uint8
blend masks, `baseline.npy` / `baseline_alpha.npy` (the same edit applied to each frame's own
identity instead of the video's: the per-frame baseline that evaluate compares against) and
`edit.json` (spec, edited identity, identity similarities; for motion edits the driver and the driver
frame matched to each frame) and `landmarks.npy` (N, 102), the motion codes every frame was decoded
with: the video's own, or for motion and expression edits the driven or shifted ones (each kind's
`motion_codes`, pipeline/editing/kinds/).
"""

from __future__ import annotations

import json
import os
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import torch
import typer

from pipeline.core.atomic import atomic_output_dir
from pipeline.core.device import resolve_device
from pipeline.core.errors import DvaError
from pipeline.core.hashing import sha256_file
from pipeline.core.progress import progress_bar
from pipeline.editing.compositing import composite_crop
from pipeline.editing.driving import MotionInputs, stage_output_drivers
from pipeline.editing.kinds import FirstFrame, IdentityContext, MotionContext
from pipeline.faces.identity import l2_normalise
from pipeline.faces.tracking import NO_FACE
from pipeline.model.checkpoint import load_model, require_explicit_conventions
from pipeline.model.diffusion import DDIMScheduler
from pipeline.model.inversion import decode_frames, face_codes, inference_batch_size, prepare_model, to_uint8_crops
from pipeline.model.samplers import sampler_from_config
from pipeline.params import Params, load_params
from pipeline.runs.artifacts import (
    ALPHA_FILE,
    BASELINE_ALPHA_FILE,
    BASELINE_FILE,
    EDIT_INFO_FILE,
    EDIT_LANDMARKS_FILE,
    EDITED_FILE,
    open_crops,
    read_features,
    read_inversion,
)
from pipeline.runs.lineage import cli_run_id, write_lineage


def edit_video(
    name: str,
    params: Params,
    checkpoint: Path,
    align_dir: Path,
    encode_dir: Path,
    invert_dir: Path,
    out_dir: Path,
    baseline: bool = True,
    progress: bool = True,
    run_id: str = "python",
    motion: MotionInputs | None = None,
    window: np.ndarray | None = None,
) -> dict:
    """Decode every face frame of a video with the edited identity and blend it over the source."""
    return edit_videos({name: Path(out_dir)}, params, checkpoint, align_dir, encode_dir, invert_dir, baseline,
                       progress, run_id, motion, window)[name]


def edit_videos(
    out_dirs: dict[str, Path],
    params: Params,
    checkpoint: Path,
    align_dir: Path,
    encode_dir: Path,
    invert_dir: Path,
    baseline: bool = True,
    progress: bool = True,
    run_id: str = "python",
    motion: MotionInputs | None = None,
    window: np.ndarray | None = None,
) -> dict[str, dict]:
    """Apply several edits (name -> output folder) to one video in one pass over its noise maps.

    Each batch of frames is decoded once for all edits (and their baselines) together: the noise
    maps and crops are read once and the UNet sees one larger batch, instead of one pass per edit.
    Motion and expression edits decode with their own landmark codes (`motion`: the video's frame
    times and the motion edits' drivers); the others with the video's. `window` (frame indices, a
    preview) decodes only those frames; the others stay zero, as no_face frames do.
    """
    unknown = sorted(set(out_dirs) - set(params.edits))
    if unknown:
        raise DvaError(f"edit {unknown[0]!r} is not defined under `edits` in the params (known: {sorted(params.edits)})")
    settings = params.edit
    device = resolve_device(settings.device)
    model, _ = load_model(checkpoint, device)
    model = prepare_model(model, settings)
    aligned, features, inversion = open_crops(align_dir), read_features(encode_dir), read_inversion(invert_dir)
    crops, masks, noise, recon = aligned.crops, aligned.masks, inversion.noise, inversion.reconstruction
    status, frame_identities, landmarks = features.status, features.identities, features.landmarks
    invert_meta = inversion.metadata
    # The identity code each track was inverted with (inversions that predate its record used encode's).
    track_identities = {int(track_id): np.asarray(code, dtype=np.float32) for track_id, code in invert_meta.get(
        "track_identities", {str(next(iter(features.tracks))): invert_meta.get(
            "video_identity", features.video_identity.tolist())}).items()}
    valid = np.array([state != NO_FACE for state in status])
    tracks = features.tracks
    for name in out_dirs:
        chosen = params.edits[name].tracks
        unknown_tracks = sorted(set(chosen or []) - set(tracks))
        if unknown_tracks:
            raise DvaError(f"edit {name!r}: `tracks` names track {unknown_tracks[0]}, but {align_dir} has tracks "
                           f"{sorted(tracks)} (align.faces)")
    landmark_backend = features.metadata.get("landmark_feature_backend")
    edits, codes = {}, {}
    for name in out_dirs:
        spec = params.edits[name]
        for track_id, rows in tracks.items():
            if spec.tracks is not None and track_id not in spec.tracks:
                continue
            first = int(rows[valid[rows]][0])
            first_frame = FirstFrame(np.asarray(crops[first]), landmarks[first], np.asarray(masks[first]),
                                     frame_identities[first])
            edits[name, track_id] = spec.identity_edit(IdentityContext(
                name, model, track_identities[track_id], first_frame, device, params.align, params.encode, settings,
                progress, track_id))
            codes[name, track_id] = spec.motion_codes(MotionContext(name, landmarks[rows], valid[rows],
                                                                    landmark_backend, motion))
    edited_identities = {key: edit_one(track_identities[key[1]]) for key, (edit_one, _) in edits.items()}
    # Each edit's motion codes over all rows: edited tracks' from the kind, the others' their own.
    row_codes = {name: landmarks.copy() for name in out_dirs}
    for (name, track_id), (track_codes, _) in codes.items():
        row_codes[name][tracks[track_id]] = track_codes
    # Decode with the inversion's own sampler: BDIA's state only decodes exactly with BDIA and its gamma.
    try:
        sampler = sampler_from_config(DDIMScheduler.from_settings(model.sampler), invert_meta)
    except (KeyError, ValueError) as exc:
        raise DvaError(f"{invert_dir}: the inversion's sampler record is unusable ({exc})") from None
    count, size = len(status), crops.shape[1]
    frames = np.flatnonzero(valid)
    if window is not None:  # after each track's first frame: a preview edits as the whole run does
        frames = frames[np.isin(features.frame[frames], window)]
    # Faces an edit leaves alone are not decoded: their crops are the source's, their blend masks zero.
    edited_rows = {name: frames[np.array([(name, int(track_id)) in edits for track_id in features.track[frames]],
                                         dtype=bool)] for name in out_dirs}
    # Each batch decodes len(rows) x len(streams) images; keep that within batch_size.
    streams = [(name, kind) for name in out_dirs for kind in (("edited", "baseline") if baseline else ("edited",))]
    per_batch = max(1, inference_batch_size(settings, model) // len(streams))
    todo = np.unique(np.concatenate(list(edited_rows.values())))
    batches = [todo[start : start + per_batch] for start in range(0, len(todo), per_batch)]
    with ExitStack() as stack:
        works = {name: stack.enter_context(atomic_output_dir(out_dir)) for name, out_dir in out_dirs.items()}
        outputs = {}
        for name, kind in streams:
            image_file, alpha_file = (EDITED_FILE, ALPHA_FILE) if kind == "edited" else (BASELINE_FILE,
                                                                                            BASELINE_ALPHA_FILE)
            outputs[name, kind] = (_open(works[name] / image_file, count, size),
                                   _open(works[name] / alpha_file, count, size, 1))
            untouched = np.setdiff1d(frames, edited_rows[name])
            outputs[name, kind][0][untouched] = crops[untouched]
        # no_face rows keep the zero crops and zero alphas they were created with: render skips them.
        label = ", ".join(out_dirs)
        for rows in progress_bar(batches, enabled=progress, total=len(batches), desc=f"edit {label}"):
            latents = torch.from_numpy(np.ascontiguousarray(noise[rows])).to(device)
            source, reconstruction, face = np.asarray(crops[rows]), np.asarray(recon[rows]), np.asarray(masks[rows])
            row_tracks = features.track[rows]
            identities = []
            for name, kind in streams:
                # Rows of faces this edit leaves alone decode with their own code; their result is not kept.
                identities.append(np.stack([
                    track_identities[int(track_id)] if (name, int(track_id)) not in edits
                    else edited_identities[name, int(track_id)] if kind == "edited"
                    else edits[name, int(track_id)][0](frame_identities[row])
                    for row, track_id in zip(rows, row_tracks)]))
            with torch.inference_mode():
                z_face = face_codes(model, np.concatenate(identities),
                                    np.concatenate([row_codes[name][rows] for name, _ in streams]), device)
            decoded = to_uint8_crops(decode_frames(model, sampler, torch.cat([latents] * len(streams)), z_face,
                                                   settings))
            for stream, key in enumerate(streams):
                images, alphas = outputs[key]
                for offset, (row, track_id) in enumerate(zip(rows, row_tracks)):
                    if (key[0], int(track_id)) not in edits:
                        continue
                    image = decoded[stream * len(rows) + offset]
                    images[row], alpha = composite_crop(image, source[offset], face[offset], reconstruction[offset],
                                                        settings)
                    alphas[row] = np.round(alpha * 255).astype(np.uint8)
        for arrays in outputs.values():
            for array in arrays:
                array.flush()
        del outputs
        infos = {}
        checkpoint_sha256 = sha256_file(Path(checkpoint))
        for name, out_dir in out_dirs.items():
            spec = params.edits[name]
            per_track = {}
            for track_id in tracks:
                if (name, track_id) not in edits:
                    per_track[str(track_id)] = {"edited": False}
                    continue
                source_identity, edited_identity = track_identities[track_id], edited_identities[name, track_id]
                per_track[str(track_id)] = {
                    "edited": True,
                    "video_identity": source_identity.tolist(),
                    "edited_identity": np.asarray(edited_identity, dtype=np.float64).tolist(),
                    "identity_cosine_to_source": float(l2_normalise(edited_identity) @ l2_normalise(source_identity)),
                } | edits[name, track_id][1] | codes[name, track_id][1]
            # The top level describes the first edited track: a single face's record as before tracks.
            lead = next(str(track_id) for track_id in tracks if (name, track_id) in edits)
            infos[name] = {"name": name, "spec": spec.model_dump(), "sampler": sampler.config(),
                           "checkpoint_sha256": checkpoint_sha256} | {
                key: value for key, value in per_track[lead].items() if key != "edited"} | {"tracks": per_track}
            (works[name] / EDIT_INFO_FILE).write_text(json.dumps(infos[name], indent=2) + "\n")
            np.save(works[name] / EDIT_LANDMARKS_FILE, row_codes[name])
            write_lineage(works[name], out_dir, stage="edit",
                          inputs=[align_dir, encode_dir, invert_dir, *spec.input_files(),
                                  *spec.motion_lineage_inputs(name, motion)],
                          params={"edit": settings, "edits": {name: spec}, "baseline": baseline},
                          weights={"autoencoder": Path(checkpoint)} | spec.weight_files(), run_id=run_id)
    return infos


def _open(path: Path, count: int, size: int, channels: int = 3) -> np.ndarray:
    shape = (count, size, size, 3) if channels == 3 else (count, size, size)
    return np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=shape)


def cli(
    name: str = typer.Argument(..., help="Edit name, as defined under `edits` in the params file."),
    checkpoint: Path = typer.Argument(..., help="Model file from `dva train`."),
    align_dir: Path = typer.Argument(..., help="Output folder of `dva align`."),
    encode_dir: Path = typer.Argument(..., help="Output folder of `dva encode`."),
    invert_dir: Path = typer.Argument(..., help="Output folder of `dva invert` (cached noise maps)."),
    out_dir: Path = typer.Argument(..., help="Output folder (replaced when complete)."),
    baseline: bool = typer.Option(True, help="Also decode the per-frame baseline for evaluate."),
    params: Path = typer.Option(Path("params.yaml"), "--params", help="Parameters file."),
    extract_dir: Path = typer.Option(None, "--extract", help="Output folder of `dva extract` of the video: its "
                                     "frame times, needed by motion and expression edits."),
    data_root: Path = typer.Option(Path("data"), help="Folder holding the drivers' stage outputs "
                                   "(drivers/<id>/, extract/<id>, encode/<id>)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    settings = load_params(params)
    require_explicit_conventions(settings.conventions, checkpoint, params)
    motion = None
    if extract_dir is not None:
        spec = settings.edits.get(name)
        driven = {name: spec.driven_by()} if spec is not None and spec.driven_by() else {}
        files = settings.video_files()
        motion = MotionInputs(extract_dir, stage_output_drivers(driven, files["drivers"], files["videos"], data_root))
    info = edit_video(name, settings, checkpoint, align_dir, encode_dir, invert_dir, out_dir,
                      baseline=baseline, progress=not quiet, run_id=cli_run_id(os.environ), motion=motion)
    if not quiet:
        typer.echo(f"{name}: identity cosine to source {info['identity_cosine_to_source']:.3f} -> {out_dir}")
