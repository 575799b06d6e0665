"""Score one edit of one video: temporal identity consistency, identity movement, background.

TL-ID / TG-ID (identity encoder from params) of the reconstruction, of the edit, and of the
per-frame baseline (the same edit applied to each frame's own identity); mean identity cosine
to the source identity (and to the reference face for reference edits) and the re-identification rate
(the fraction of face frames the encoder still calls the source person: cosine at least its
same-person threshold); with several faces (align.faces) all of these per track under `tracks`, the
top level over every face (TL-ID / TG-ID averaged over tracks by face frames); background PSNR
from render; and how well the decoded faces follow the motion codes they were decoded with
(pipeline/evaluation/landmark_metrics.py): `landmarks.edit_error` (edited crops vs the edit's codes: a
motion edit's driven codes, an expression edit's shifted ones, otherwise the video's own),
`landmarks.reconstruction_error` (the unedited reconstruction vs those same codes, the baseline)
and their `error_ratio`; the reconstruction's fidelity to the source crops, as the paper reports it:
`reconstruction.ms_ssim` (scales and window for the crop size in `ms_ssim_settings`) and
`reconstruction.lpips` when `evaluate.lpips_weights` names the network (absent otherwise). Outputs
in OUT_DIR: `metrics.json` (DVC metrics), `identity.csv` (DVC plot: per-frame identity cosine to the
source for reconstruction, edit and baseline) and `landmarks.csv` (DVC plot: per-frame landmark error
of edit and reconstruction).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import typer

from pipeline.core.atomic import atomic_output_dir
from pipeline.core.config import ParamsView, read_params
from pipeline.core.errors import InputError
from pipeline.core.progress import progress_bar
from pipeline.editing.kinds import parse_edit
from pipeline.editing.motion import feature_to_crop_fraction, landmark_errors
from pipeline.evaluation.identity_metrics import temporal_identity_consistency
from pipeline.evaluation.image_metrics import load_lpips, ms_ssim_settings, reconstruction_similarity
from pipeline.evaluation.landmark_metrics import detect_crop_landmarks, follow_summary
from pipeline.evaluation.settings import EvaluateParams
from pipeline.faces.face_detection import make_landmark_detector
from pipeline.faces.identity import IdentityEncoder, identity_encoder_from_params, l2_normalise
from pipeline.faces.settings import AlignParams, EncodeParams
from pipeline.faces.tracking import NO_FACE
from pipeline.runs.artifacts import (
    EDIT_INFO_FILE,
    EDIT_LANDMARKS_FILE,
    open_crops,
    read_alignment,
    read_edit,
    read_features,
    read_reconstruction,
    read_render_metrics,
    require_artifact,
)
from pipeline.runs.lineage import cli_run_id, write_lineage

METRICS_FILE = "metrics.json"
PLOT_FILE = "identity.csv"
LANDMARK_PLOT_FILE = "landmarks.csv"
BATCH = 32


class EvaluateView(ParamsView):
    """The sections of params.yaml the evaluate stage reads."""

    encode: EncodeParams = EncodeParams()
    align: AlignParams = AlignParams()
    evaluate: EvaluateParams = EvaluateParams()


def embed_crops(
    encoder: IdentityEncoder, crops: np.ndarray, crop_landmarks: np.ndarray, frames: np.ndarray, progress: bool, desc: str
) -> np.ndarray:
    """Identity codes (len(frames), D) of the listed frames of a crop stack, in batches."""
    batches = [frames[start : start + BATCH] for start in range(0, len(frames), BATCH)]
    codes = [
        encoder.embed(np.asarray(crops[rows]), crop_landmarks[rows])
        for rows in progress_bar(batches, enabled=progress, total=len(batches), desc=desc)
    ]
    return np.concatenate(codes)


def _consistency(source: np.ndarray, other: np.ndarray) -> dict[str, float | None]:
    if len(source) < 2:  # a face seen in one frame has no temporal consistency
        return {"tl_id": None, "tg_id": None}
    tl_id, tg_id = temporal_identity_consistency(source, other)
    return {"tl_id": tl_id, "tg_id": tg_id}


def _weighted_mean(values: list[float | None], weights: np.ndarray) -> float | None:
    kept = [(value, weight) for value, weight in zip(values, weights) if value is not None]
    return float(np.average([value for value, _ in kept], weights=[weight for _, weight in kept])) if kept else None


def _track_metrics(track_id: int, positions: np.ndarray, source: np.ndarray, codes: dict[str, np.ndarray],
                   similarity: dict[str, np.ndarray], edited: bool, same_person: float) -> dict:
    """One track's figures: its face frames, and per crop stack TL-ID, TG-ID, identity similarity to the
    track's source identity and the re-identification rate (frames still the same person to the encoder)."""
    entry: dict = {"track": track_id, "frames": int(len(positions)), "edited": bool(edited)}
    for name, embedded in codes.items():
        entry[name] = _consistency(source, embedded[positions]) | {
            "id_sim_source": float(similarity[name][positions].mean()),
            "reid_rate": float(np.mean(similarity[name][positions] >= same_person)),
        }
    return entry


def evaluate_edit(
    align_dir: Path,
    encode_dir: Path,
    invert_dir: Path,
    edit_dir: Path,
    render_dir: Path,
    out_dir: Path,
    params: EncodeParams,
    progress: bool = True,
    run_id: str = "python",
    align: AlignParams | None = None,
    settings: EvaluateParams | None = None,
) -> dict:
    """Compute and write the metrics of one edit; returns them.

    `align` sets the landmark detector; `settings` (the `evaluate` section) the optional LPIPS network.
    """
    import pandas as pd  # here: pandas takes a noticeable part of a second to import, and only scoring needs it

    align, settings = align or AlignParams(), settings or EvaluateParams()
    # Loaded first: a missing or wrong LPIPS file stops before any other work.
    lpips = load_lpips(settings.lpips_weights, settings.lpips_net, settings.device) if settings.lpips_weights else None
    alignment, features = read_alignment(align_dir), read_features(encode_dir)
    status, crop_landmarks = alignment.status, alignment.crop_landmarks
    source_codes, features_meta = features.identities, features.metadata
    reconstruction, edit, render = read_reconstruction(invert_dir), read_edit(edit_dir), read_render_metrics(render_dir)
    require_artifact(edit_dir, (EDIT_LANDMARKS_FILE,), "edit-frames")
    encoder = identity_encoder_from_params(params)
    if encoder.name != features_meta["encoder"]:
        raise InputError(encode_dir, f"encoded with {features_meta['encoder']}, evaluate uses {encoder.name}")
    frames = np.array([index for index, state in enumerate(status) if state != NO_FACE])
    stacks = {"reconstruction": reconstruction, "edit": edit.edited, "baseline": edit.baseline}
    codes = {
        name: embed_crops(encoder, crops, crop_landmarks, frames, progress, f"identity {name}")
        for name, crops in stacks.items()
        if crops is not None
    }
    info = edit.info
    # What the edit's kind compares its frames with besides the source (a reference edit: the reference face).
    targets = parse_edit(info["spec"], f"{edit_dir}/{EDIT_INFO_FILE}").identity_targets(info)
    row_tracks = features.track[frames]
    # Each face is compared with its own track's identity.
    own_identity = np.stack([features.track_identities[int(track_id)] for track_id in row_tracks])
    similarity = {name: np.sum(l2_normalise(embedded) * own_identity, axis=1) for name, embedded in codes.items()}
    per_track = {int(track_id): np.flatnonzero(row_tracks == track_id) for track_id in dict.fromkeys(row_tracks)}
    weights = np.array([len(positions) for positions in per_track.values()], dtype=np.float64)
    metrics: dict = {"frames": int(len(set(features.frame[frames].tolist()))), "faces": int(len(frames))}
    plot = pd.DataFrame({"frame": features.frame[frames], "track": row_tracks})
    for name, embedded in codes.items():
        # TL-ID / TG-ID follow one face over time: per track, then averaged over tracks by face frames.
        consistency = [_consistency(source_codes[frames[positions]], embedded[positions])
                       for positions in per_track.values()]
        metrics[name] = {key: _weighted_mean([values[key] for values in consistency], weights)
                         for key in ("tl_id", "tg_id")} | {"id_sim_source": float(similarity[name].mean())}
        plot[name] = similarity[name]
        for target, code in targets.items():
            metrics[name][f"id_sim_{target}"] = float((l2_normalise(embedded) @ code).mean())
        metrics[name]["reid_rate"] = float(np.mean(similarity[name] >= encoder.same_person_similarity))
    metrics["same_person_similarity"] = encoder.same_person_similarity
    metrics["tracks"] = [_track_metrics(track_id, positions, source_codes[frames[positions]], codes, similarity,
                                        info.get("tracks", {}).get(str(track_id), {}).get("edited", True),
                                        encoder.same_person_similarity)
                         for track_id, positions in per_track.items()]
    source_crops = open_crops(align_dir).crops
    fidelity = reconstruction_similarity(source_crops, reconstruction, frames, lpips, BATCH, progress,
                                         "reconstruction MS-SSIM" + (" / LPIPS" if lpips else ""))
    metrics["reconstruction"] |= {name: float(values.mean()) for name, values in fidelity.items()}
    metrics["ms_ssim_settings"] = ms_ssim_settings(source_crops.shape[1]).as_dict()
    metrics["edit"]["background_psnr"] = render["background_psnr_mean"]
    metrics["edit"]["background_psnr_min"] = render["background_psnr_min"]
    metrics["edit"]["code_cosine_to_source"] = info["identity_cosine_to_source"]
    detector = make_landmark_detector(align.backend, align.fan_weights, 0, align.detection_threshold)
    asked = feature_to_crop_fraction(np.load(Path(edit_dir) / EDIT_LANDMARKS_FILE)[frames],
                                     features_meta.get("landmark_feature_backend", "dlib"))
    errors, found = pd.DataFrame({"frame": features.frame[frames], "track": row_tracks}), {}
    for name in ("edit", "reconstruction"):
        points, found[name] = detect_crop_landmarks(detector, stacks[name], frames,
                                                    crop_landmarks, progress, f"landmarks {name}")
        errors[name] = landmark_errors(points, asked)
    metrics["landmarks"] = follow_summary(errors["edit"].to_numpy(), errors["reconstruction"].to_numpy(),
                                          found["edit"], found["reconstruction"])
    with atomic_output_dir(out_dir) as work:
        (work / METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n")
        plot.to_csv(work / PLOT_FILE, index=False)
        errors.to_csv(work / LANDMARK_PLOT_FILE, index=False)
        write_lineage(work, out_dir, stage="evaluate", inputs=[align_dir, encode_dir, invert_dir, edit_dir, render_dir],
                      params={"encode": params, "align": align, "evaluate": settings},
                      weights=encoder.weight_files | detector.weight_files | ({"lpips": lpips.path} if lpips else {}),
                      run_id=run_id)
    return metrics


def cli(
    align_dir: Path = typer.Argument(..., help="Output folder of `dva align`."),
    encode_dir: Path = typer.Argument(..., help="Output folder of `dva encode`."),
    invert_dir: Path = typer.Argument(..., help="Output folder of `dva invert`."),
    edit_dir: Path = typer.Argument(..., help="Output folder of `dva edit`."),
    render_dir: Path = typer.Argument(..., help="Output folder of `dva render`."),
    out_dir: Path = typer.Argument(..., help="Output folder (replaced when complete)."),
    params: Path = typer.Option(Path("params.yaml"), "--params", help="Parameters file (must exist)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    settings = read_params(params, EvaluateView)
    metrics = evaluate_edit(align_dir, encode_dir, invert_dir, edit_dir, render_dir, out_dir, settings.encode,
                            progress=not quiet, run_id=cli_run_id(os.environ), align=settings.align,
                            settings=settings.evaluate)
    if not quiet:
        typer.echo(json.dumps(metrics))
