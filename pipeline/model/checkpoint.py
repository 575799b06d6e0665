"""Autoencoder checkpoints in safetensors: weights, config, sampler settings and training state, never pickles.

A training checkpoint holds the model, its EMA, the optimizer state and the RNG states, so an
interrupted run resumes bit-for-bit. The released model file holds the EMA weights, the UNet config
and the sampler settings the model runs with; a model imported from the reference code also holds its
frozen face networks under ``encoders.*``.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from pipeline.core.atomic import atomic_output_file
from pipeline.core.errors import InputError, ParamsError
from pipeline.model.diffusion import SamplerSettings
from pipeline.model.unet import DiffusionVideoAutoencoder, UNetConfig

FORMAT = "dva-autoencoder-v2"
TRAINING_FORMAT = FORMAT + "-training"
# v1 files hold the earlier DiffAE-style blocks, which this version no longer builds.
_OLDER_FORMATS = ("dva-autoencoder-v1", "dva-autoencoder-v1-training")
ENCODERS_PREFIX = "encoders."
_STANDARDISATION = ("landmark_center", "landmark_scale")


def config_to_json(config: UNetConfig) -> str:
    """UNet config as JSON (tuples become lists)."""
    return json.dumps(dataclasses.asdict(config), sort_keys=True)


def config_from_json(text: str) -> UNetConfig:
    """Inverse of `config_to_json`."""
    raw = json.loads(text)
    for key in ("channel_mults", "attention_resolutions"):
        raw[key] = tuple(raw[key])
    return UNetConfig(**raw)


def _flatten_optimizer(state: dict) -> tuple[dict[str, torch.Tensor], str]:
    tensors = {}
    for index, values in state["state"].items():
        for name, value in values.items():
            tensors[f"optim.{index}.{name}"] = torch.as_tensor(value).clone()
    return tensors, json.dumps(state["param_groups"])


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], groups: str) -> dict:
    state: dict[int, dict[str, torch.Tensor]] = {}
    # Keys arrive without their "optim." prefix (see `_subset`): "<param index>.<state name>".
    for key, value in tensors.items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    return {"state": state, "param_groups": json.loads(groups)}


def save_training_state(
    path: Path,
    model: torch.nn.Module,
    ema: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    step: int,
    fingerprint: str,
    history: list[dict[str, float]] | None = None,
) -> None:
    """Write everything needed to resume training at `step` (atomically), with the loss history so far."""
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tensors |= {f"ema.{k}": v.detach().cpu().contiguous() for k, v in ema.state_dict().items()}
    optim_tensors, groups = _flatten_optimizer(optimizer.state_dict())
    tensors |= {k: v.cpu().contiguous() for k, v in optim_tensors.items()}
    tensors["rng.generator"] = generator.get_state()
    tensors["rng.torch"] = torch.get_rng_state()
    metadata = {
        "format": TRAINING_FORMAT,
        "config": config_to_json(model.config),
        "step": str(step),
        "fingerprint": fingerprint,
        "param_groups": groups,
        "history": json.dumps(history or []),
    }
    with atomic_output_file(Path(path)) as temporary:
        save_file(tensors, str(temporary), metadata=metadata)


def _read(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "checkpoint not found")
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise InputError(path, f"not a safetensors checkpoint ({str(exc).splitlines()[0]})") from None
    if metadata.get("format") in _OLDER_FORMATS:
        raise InputError(path, f"checkpoint of an older model version ({metadata['format']}); retrain or re-import it")
    if metadata.get("format") not in (FORMAT, TRAINING_FORMAT):
        raise InputError(path, "not a checkpoint of this model (no dva-autoencoder format tag)")
    return tensors, metadata


def _subset(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def _load_weights(module: torch.nn.Module, weights: dict[str, torch.Tensor], path: Path) -> None:
    expected = module.state_dict()
    if set(weights) != set(expected) or any(weights[k].shape != expected[k].shape for k in expected):
        raise InputError(path, "weights do not match the model described by its config")
    module.load_state_dict(weights)


def load_training_state(
    path: Path,
    model: torch.nn.Module,
    ema: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
) -> tuple[int, str, list[dict[str, float]]]:
    """Restore a `save_training_state` file into the given objects; returns (step, fingerprint, history)."""
    tensors, metadata = _read(path)
    _load_weights(model, _subset(tensors, "model."), path)
    _load_weights(ema, _subset(tensors, "ema."), path)
    optimizer.load_state_dict(_unflatten_optimizer(_subset(tensors, "optim."), metadata["param_groups"]))
    generator.set_state(tensors["rng.generator"])
    torch.set_rng_state(tensors["rng.torch"])
    return int(metadata["step"]), metadata["fingerprint"], json.loads(metadata.get("history", "[]"))


def training_state_info(path: Path) -> tuple[int, str] | None:
    """(step, fingerprint) recorded in a training checkpoint, or None when it is unreadable."""
    try:
        metadata = _read(path)[1]
    except InputError:
        return None
    if metadata.get("format") != TRAINING_FORMAT:
        return None
    return int(metadata["step"]), metadata["fingerprint"]


def save_model(
    path: Path,
    model: torch.nn.Module,
    metadata: dict[str, str],
    encoders: dict[str, torch.Tensor] | None = None,
) -> None:
    """Write the released model (weights + config + its sampler settings + lineage metadata), atomically.

    ``encoders`` are extra frozen networks stored under ``encoders.*`` (names without that prefix).
    """
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tensors |= {ENCODERS_PREFIX + k: v.detach().cpu().contiguous() for k, v in (encoders or {}).items()}
    full = {"format": FORMAT, "config": config_to_json(model.config), "sampler": model.sampler.to_json()} | metadata
    with atomic_output_file(Path(path)) as temporary:
        save_file(tensors, str(temporary), metadata=full)


def sampler_settings(metadata: dict[str, str], path: Path) -> SamplerSettings:
    """The sampler settings recorded in a model file's metadata (an error naming the file if invalid)."""
    try:
        return SamplerSettings.from_json(metadata["sampler"])
    except (KeyError, TypeError, ValueError):
        raise InputError(path, "checkpoint has no valid sampler settings") from None


def checkpoint_metadata(path: Path) -> dict[str, str]:
    """A model file's metadata (config, sampler settings, conventions, lineage) without reading its tensors."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "checkpoint not found")
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            return handle.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise InputError(path, f"not a safetensors checkpoint ({str(exc).splitlines()[0]})") from None


def model_conventions(path: Path) -> str:
    """The conventions a model file was made under: `reference` for an imported model, else `project`."""
    return checkpoint_metadata(path).get("conventions", "project")


def model_resolution(path: Path) -> int:
    """The resolution (px) of a model file's UNet."""
    try:
        return config_from_json(checkpoint_metadata(path)["config"]).resolution
    except (KeyError, TypeError, ValueError):
        raise InputError(path, "checkpoint config is missing or malformed") from None


def require_explicit_conventions(conventions: str, checkpoint: Path, params_file: Path) -> None:
    """Under DVC an imported model needs `conventions` set: alignment ran before the model was known.

    `auto` follows the checkpoint only where the checkpoint is known from the start (`dva edit`, `dva batch`).
    """
    if conventions == "auto" and model_conventions(checkpoint) == "reference":
        raise ParamsError(f"{params_file}: conventions: {checkpoint} is the reference's model; set "
                          "`conventions: reference` (its pipeline from align on) or `conventions: project`")


def load_model(path: Path, device: torch.device | str = "cpu") -> tuple[DiffusionVideoAutoencoder, dict[str, str]]:
    """Load a released model file; refuses anything that is not a checkpoint of this model."""
    tensors, metadata = _read(path)
    if metadata["format"] != FORMAT:
        tensors = _subset(tensors, "ema.")
    tensors = {k: v for k, v in tensors.items() if not k.startswith(ENCODERS_PREFIX)}
    try:
        config = config_from_json(metadata["config"])
    except (KeyError, TypeError, ValueError):
        raise InputError(path, "checkpoint config is missing or malformed") from None
    # A training state has no released sampler settings; it runs with the defaults.
    sampler = sampler_settings(metadata, Path(path)) if metadata["format"] == FORMAT else SamplerSettings()
    model = DiffusionVideoAutoencoder(config, sampler)
    # Files written before the landmark standardisation existed ran without it: identity, the default.
    tensors = {name: value for name, value in model.state_dict().items() if name in _STANDARDISATION} | tensors
    _load_weights(model, tensors, Path(path))
    return model.to(device).eval(), metadata
