"""Content keys of stage outputs, shared by the one-off `dva edit` cache and the `dva batch` flow.

Merkle-style: each stage's key hashes its inputs' keys, every parameter the stage reads (not the
device, which changes only where the work runs) and the bytes of every file its parameters name
(reference images, classifiers, CLIP weights), and a fingerprint of the code the stage runs
(`pipeline.runs.code_deps`: the files `dvc.yaml`'s deps are derived from), so new code recomputes what
it produces. Values are hashed as resolved (the sampler's config as the inversion saves it). The
model's sampler settings live in the checkpoint, so its sha256 covers them. Two runs with equal keys
compute the same output.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.core.hashing import content_key, sha256_file
from pipeline.runs.code_deps import code_fingerprint

if TYPE_CHECKING:  # types only: the keys are computed above the layers these live in
    from pipeline.editing.kinds import EditKind
    from pipeline.params import Params


def _file_hashes(paths: list[Path]) -> list[str | None]:
    # A missing file hashes as None: the edit itself then stops with an error naming it.
    return [sha256_file(path) if path.is_file() else None for path in paths]


def _code(stage: str) -> str:
    # Named, not imported: the library never imports the stages (tests/test_dvc_dependencies.py).
    return code_fingerprint(f"stages.{stage}")


def extract_key(video_sha256: str, params: Params) -> str:
    """Key of a video's extract output."""
    return content_key("extract", _code("extract"), video_sha256, params.extract)


def align_key(extract: str, params: Params) -> str:
    """Key of the align output made from the extract output `extract`."""
    return content_key("align", _code("align"), extract, params.align, params.model.crop_size,
                       *_file_hashes([Path(params.align.parsing_weights)] if params.align.parsing_weights else []))


def encode_key(align: str, params: Params) -> str:
    """Key of the encode output made from the align output `align`."""
    weights = [params.encode.arcface_weights, params.encode.identity_weights, params.encode.landmark_weights]
    return content_key("encode", _code("encode"), align, params.encode.model_dump(exclude={"device"}),
                       *_file_hashes([Path(path) for path in weights if path]))


def invert_key(encode: str, checkpoint_sha256: str, params: Params) -> str:
    """Key of the inversion of `encode`'s video with the checkpoint (its sampler settings included)."""
    # Batch size and precision may change the last bits, so they count; the device does not.
    # The sampler as it runs (BDIA's gamma resolved: an unset one depends on the steps; DDIM has none).
    settings = params.invert.model_dump(exclude={"device", "bdia_gamma"}) | {"sampler": params.invert.sampler_config}
    return content_key("invert", _code("invert"), encode, checkpoint_sha256, settings)


def edit_key(invert: str, name: str, spec: EditKind, params: Params, driver: str | None = None,
             baseline: bool = False) -> str:
    """Key of one edit decoded from the inversion `invert`; `driver` is a motion edit's driver encode key.

    `baseline`: the folder also holds the per-frame baseline that evaluate needs. It is part of the key, so
    an edit stored without it is never handed to evaluate: asked with evaluation, the edit is built with it.
    """
    files = spec.input_files() + list(spec.weight_files().values())
    return content_key("edit", _code("edit"), invert, name, spec, params.edit.model_dump(exclude={"device"}),
                       *_file_hashes(files), *([driver] if driver else []), {"baseline": baseline})


def render_key(extract: str, edit: str, params: Params) -> str:
    """Key of the rendered videos of the edit `edit`."""
    return content_key("render", _code("render"), extract, edit, params.render)


def evaluate_key(render: str, params: Params) -> str:
    """Key of the metrics of the rendered edit `render`."""
    return content_key("evaluate", _code("evaluate"), render, params.encode.model_dump(exclude={"device"}),
                       params.align)


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


def stage_keys(video_sha256: str, checkpoint_sha256: str, params: Params, edits: dict[str, EditKind],
               drivers: dict[str, str] | None = None, evaluate: bool = False) -> StageKeys:
    """Keys of every output for one video; `drivers` maps motion edits to their driver's encode key.

    `evaluate`: the edits are to be evaluated, so their folders hold the per-frame baseline too.
    """
    drivers = drivers or {}
    extract = extract_key(video_sha256, params)
    align = align_key(extract, params)
    encode = encode_key(align, params)
    invert = invert_key(encode, checkpoint_sha256, params)
    edits_keys = {name: edit_key(invert, name, spec, params, drivers.get(name), baseline=evaluate)
                  for name, spec in edits.items()}
    renders = {name: render_key(extract, key, params) for name, key in edits_keys.items()}
    evaluations = {name: evaluate_key(renders[name], params) for name in edits}
    return StageKeys(extract, align, encode, invert, edits_keys, renders, evaluations)
