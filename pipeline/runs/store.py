"""Content keys of stage outputs, shared by the one-off `dva edit` cache and the `dva batch` flow.

Merkle-style: each stage's key hashes its inputs' keys, every parameter the stage reads (not the
device, which changes only where the work runs) and the bytes of every file its parameters name
(reference images, classifiers, CLIP weights). The model's sampler settings live in the checkpoint,
so its sha256 covers them. Two runs with equal keys compute the same output.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipeline.core.hashing import content_key, sha256_file
from pipeline.core.params import ClassifierEdit, EditSpec, Params, ReferenceEdit, TextEdit


def edit_input_files(spec: EditSpec) -> list[Path]:
    """Files an edit reads besides the video's own artifacts: a reference image or video."""
    if isinstance(spec, ReferenceEdit) and spec.reference:
        return [Path(spec.reference)]
    return []


def edit_weight_files(spec: EditSpec) -> dict[str, Path]:
    """Weight files an edit loads: fitted classifiers or CLIP."""
    if isinstance(spec, ClassifierEdit):
        return {"classifier": Path(spec.classifier)}
    if isinstance(spec, TextEdit) and spec.clip_weights:
        return {"clip": Path(spec.clip_weights)}
    return {}


def _file_hashes(paths: list[Path]) -> list[str | None]:
    # A missing file hashes as None: the edit itself then stops with an error naming it.
    return [sha256_file(path) if path.is_file() else None for path in paths]


def extract_key(video_sha256: str, params: Params) -> str:
    """Key of a video's extract output."""
    return content_key("extract", video_sha256, params.extract)


def align_key(extract: str, params: Params) -> str:
    """Key of the align output made from the extract output `extract`."""
    return content_key("align", extract, params.align, params.model.crop_size,
                       *_file_hashes([Path(params.align.parsing_weights)] if params.align.parsing_weights else []))


def encode_key(align: str, params: Params) -> str:
    """Key of the encode output made from the align output `align`."""
    weights = [params.encode.arcface_weights, params.encode.identity_weights, params.encode.landmark_weights]
    return content_key("encode", align, params.encode.model_dump(exclude={"device"}),
                       *_file_hashes([Path(path) for path in weights if path]))


def invert_key(encode: str, checkpoint_sha256: str, params: Params) -> str:
    """Key of the inversion of `encode`'s video with the checkpoint (its sampler settings included)."""
    # Batch size and precision may change the last bits, so they count; the device does not.
    return content_key("invert", encode, checkpoint_sha256, params.invert.model_dump(exclude={"device"}))


def edit_key(invert: str, name: str, spec: EditSpec, params: Params, driver: str | None = None) -> str:
    """Key of one edit decoded from the inversion `invert`; `driver` is a motion edit's driver encode key."""
    files = edit_input_files(spec) + list(edit_weight_files(spec).values())
    return content_key("edit", invert, name, spec, params.edit.model_dump(exclude={"device"}),
                       *_file_hashes(files), *([driver] if driver else []))


def render_key(extract: str, edit: str, params: Params) -> str:
    """Key of the rendered videos of the edit `edit`."""
    return content_key("render", extract, edit, params.render)


def evaluate_key(render: str, params: Params) -> str:
    """Key of the metrics of the rendered edit `render`."""
    return content_key("evaluate", render, params.encode.model_dump(exclude={"device"}), params.align)


@dataclass(frozen=True)
class StageKeys:
    """Content keys of every stage output of one video and its edits."""

    extract: str
    align: str
    encode: str
    invert: str
    edits: dict[str, str]
    renders: dict[str, str]
    evaluations: dict[str, str]


def stage_keys(video_sha256: str, checkpoint_sha256: str, params: Params, edits: dict[str, EditSpec],
               drivers: dict[str, str] | None = None) -> StageKeys:
    """Keys of every output for one video; `drivers` maps motion edits to their driver's encode key."""
    drivers = drivers or {}
    extract = extract_key(video_sha256, params)
    align = align_key(extract, params)
    encode = encode_key(align, params)
    invert = invert_key(encode, checkpoint_sha256, params)
    edits_keys = {name: edit_key(invert, name, spec, params, drivers.get(name)) for name, spec in edits.items()}
    renders = {name: render_key(extract, key, params) for name, key in edits_keys.items()}
    evaluations = {name: evaluate_key(renders[name], params) for name in edits}
    return StageKeys(extract, align, encode, invert, edits_keys, renders, evaluations)
