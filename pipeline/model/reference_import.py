"""The authors' released checkpoint (a PyTorch Lightning file) as a project model file.

The reference code (gmkim-ai/Diffusion-Video-Autoencoders) saves ``model.*`` and ``ema_model.*``; editing
uses the EMA weights. Their names map onto this project's model as follows:

- the UNet (``input_blocks``, ``middle_block``, ``output_blocks``, ``out``) keeps its names, since
  `pipeline.model.unet` follows the reference's layout; ``time_embed.time_embed.*`` becomes ``time_embed.*``;
- ``encoder.linear.*`` (the face-code head, 614 -> 512) becomes ``face_encoder.*``;
- the frozen face networks ``encoder.idnet.*`` (IR-SE50), ``encoder.lndnet.*`` (MobileNetV2-GDConv
  landmarks) and ``encoder.bgnet.*`` (BiSeNet) are stored under ``encoders.identity.*``,
  ``encoders.landmarks.*`` and ``encoders.parsing.*``;
- the landmark net lists its MobileNet features twice (``backbone.pretrain_net.features.*`` aliases
  ``backbone.base_net.0.*``); the alias is dropped after checking it holds the same values, and so is
  the ImageNet classifier head under ``backbone.pretrain_net.classifier.*``, which the reference never runs.

Anything else under ``ema_model.`` is an error, as is any tensor the project's model lacks or has in
another shape. The file is read with PyTorch's weights-only unpickler: a pickle that needs any class
beyond tensors and plain containers is refused before anything in it runs.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from pipeline.core.errors import InputError
from pipeline.faces.networks.face_parsing import FaceParser
from pipeline.faces.networks.irse50 import IRSE50
from pipeline.faces.networks.landmark_net import LandmarkNet
from pipeline.model.diffusion import REFERENCE_SAMPLER
from pipeline.model.unet import DiffusionVideoAutoencoder, UNetConfig

EMA_PREFIX = "ema_model."
_LANDMARK_ALIAS = ("encoder.lndnet.backbone.pretrain_net.features.", "encoder.lndnet.backbone.base_net.0.")
_UNUSED_HEAD = "encoder.lndnet.backbone.pretrain_net.classifier."
# Reference prefix -> where the project stores the network (under checkpoint.ENCODERS_PREFIX).
ENCODER_NAMES = {"encoder.idnet.": "identity.", "encoder.lndnet.": "landmarks.", "encoder.bgnet.": "parsing."}
# What the imported model expects of its inputs: the reference's own encoders.
IDENTITY_ENCODER = "irse50"
LANDMARK_ENCODER = "mobilenet"
_SHOWN_PROBLEMS = 8


def read_lightning_state(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint's ``state_dict`` (or of a plain state dict), read without running code.

    Raises InputError naming the file when it is missing, truncated, not a PyTorch checkpoint, or
    needs Python objects beyond tensors and plain containers to load.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "checkpoint not found")
    try:
        with warnings.catch_warnings():
            # Lightning pickles with protocol 4; the weights-only unpickler reads it but warns.
            warnings.simplefilter("ignore", UserWarning)
            content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a bad file raises any of a dozen types; all mean "unusable"
        raise InputError(path, _load_failure(exc)) from None
    state = content.get("state_dict", content) if isinstance(content, dict) else None
    if not isinstance(state, dict):
        raise InputError(path, "not a checkpoint: no state_dict mapping of tensors")
    tensors = {name: value for name, value in state.items() if isinstance(value, torch.Tensor)}
    if not tensors:
        raise InputError(path, "not a checkpoint: its state_dict holds no tensors")
    return tensors


def _load_failure(exc: Exception) -> str:
    """Why the weights-only loader rejected a file, in one line."""
    text = str(exc)
    needed = re.search(r"GLOBAL (\S+)", text)
    if needed:
        return (f"refused: loading it needs {needed.group(1)}, not only tensors and plain containers "
                "(nothing in it was run)")
    if "Weights only load failed" in text:
        reason = re.search(r"WeightsUnpickler error:\s*(.+)", text)
        stopped = reason.group(1).strip() if reason else "an unsupported object"
        return f"refused: not a plain tensor checkpoint (the safe loader stopped at: {stopped}); nothing in it was run"
    return f"not a readable PyTorch checkpoint, truncated or another format ({_first_line(exc)})"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:120]}" if text else type(exc).__name__


@dataclass
class ImportedModel:
    """The reference EMA weights, renamed: the autoencoder and its frozen face networks."""

    model: DiffusionVideoAutoencoder
    encoders: dict[str, torch.Tensor]  # names under "identity.", "landmarks.", "parsing."


def _project_name(name: str) -> tuple[str, str] | None:
    """("model" | "encoders", project name) of a reference name (without ``ema_model.``), or None."""
    if name.startswith("encoder.linear."):
        return "model", "face_encoder." + name.removeprefix("encoder.linear.")
    for prefix, target in ENCODER_NAMES.items():
        if name.startswith(prefix):
            return "encoders", target + name.removeprefix(prefix)
    if name.startswith("encoder."):
        return None
    return "model", name.replace("time_embed.time_embed.", "time_embed.", 1)


def _reference_name(project_name: str) -> str:
    """Inverse of `_project_name` for the autoencoder's own parameters."""
    if project_name.startswith("face_encoder."):
        return "encoder.linear." + project_name.removeprefix("face_encoder.")
    if project_name.startswith("time_embed."):
        return "time_embed." + project_name
    return project_name


def _reference_encoder_name(encoder_name: str) -> str:
    """The reference name of a face-network tensor stored under ``encoders.``."""
    part, rest = encoder_name.split(".", 1)
    return next(prefix for prefix, target in ENCODER_NAMES.items() if target == part + ".") + rest


def _problem_list(problems: list[str]) -> str:
    shown = "; ".join(problems[:_SHOWN_PROBLEMS])
    more = len(problems) - _SHOWN_PROBLEMS
    return shown + (f"; and {more} more" if more > 0 else "")


@dataclass
class ImportPlan:
    """Where each reference tensor goes: model parameters, frozen encoders, dropped aliases; and what is wrong."""

    model: dict[str, str]  # reference name -> model parameter
    encoders: dict[str, str]  # reference name -> encoder tensor name
    aliases: dict[str, str]  # dropped alias -> the reference name it must equal
    unused: list[str]  # dropped: the landmark net's ImageNet head
    problems: list[str]


def _expected_shapes(config: UNetConfig) -> tuple[dict[str, tuple[int, ...]], dict[str, tuple[int, ...]]]:
    """Names and shapes of the model's parameters and of the face networks' tensors (built on meta)."""
    with torch.device("meta"):
        # Parameters only: the landmark standardisation buffers stay at identity (the reference has none).
        model = dict(DiffusionVideoAutoencoder(config).named_parameters())
        networks = {"identity.": IRSE50(), "landmarks.": LandmarkNet(), "parsing.": FaceParser()}
        encoders = {prefix + name: value for prefix, net in networks.items()
                    for name, value in net.state_dict().items()}
    return ({name: tuple(v.shape) for name, v in model.items()}, {name: tuple(v.shape) for name, v in encoders.items()})


def plan_import(shapes: dict[str, tuple[int, ...]], config: UNetConfig) -> ImportPlan:
    """Map reference tensor names and shapes (without ``ema_model.``) onto a model of ``config``.

    Works on names and shapes only (no values), so it also checks the 256 px model on the meta device.
    """
    expected_model, expected_encoders = _expected_shapes(config)
    plan = ImportPlan({}, {}, {}, [], [])
    for name, shape in shapes.items():
        shape = tuple(shape)
        if name.startswith(_UNUSED_HEAD):
            plan.unused.append(name)
            continue
        if name.startswith(_LANDMARK_ALIAS[0]):
            twin = name.replace(*_LANDMARK_ALIAS, 1)
            if shapes.get(twin) is None or tuple(shapes[twin]) != shape:
                plan.problems.append(f"{name} has no base_net.0 twin of its shape")
            else:
                plan.aliases[name] = twin
            continue
        target = _project_name(name)
        expected = expected_encoders if target and target[0] == "encoders" else expected_model
        if target is None or target[1] not in expected:
            plan.problems.append(f"{name} is not mapped")
        elif expected[target[1]] != shape:
            plan.problems.append(f"{name} has shape {list(shape)}, expected {list(expected[target[1]])}")
        else:
            (plan.encoders if target[0] == "encoders" else plan.model)[name] = target[1]
    filled = set(plan.model.values()) | set(plan.encoders.values())
    plan.problems += [f"{_reference_name(name)} is missing" for name in expected_model if name not in filled]
    plan.problems += [f"{_reference_encoder_name(name)} is missing" for name in expected_encoders if name not in filled]
    return plan


def map_reference_state(
    state: dict[str, torch.Tensor], config: UNetConfig, path: Path
) -> ImportedModel:
    """Map the ``ema_model.*`` tensors of a reference checkpoint onto a model of ``config``.

    Every tensor must land on a parameter of the same shape and every parameter must be filled;
    otherwise an InputError lists the offending names.
    """
    ema = {name.removeprefix(EMA_PREFIX): value for name, value in state.items() if name.startswith(EMA_PREFIX)}
    if not ema:
        raise InputError(path, "no ema_model.* tensors: not a Diffusion Video Autoencoders checkpoint")
    plan = plan_import({name: tuple(value.shape) for name, value in ema.items()}, config)
    problems = plan.problems + [
        f"{alias} differs from {twin}" for alias, twin in plan.aliases.items() if not torch.equal(ema[alias], ema[twin])
    ]
    if problems:
        raise InputError(path, f"{len(problems)} tensors do not fit the model: {_problem_list(problems)}")
    model = DiffusionVideoAutoencoder(config, REFERENCE_SAMPLER)
    model.load_state_dict(model.state_dict() | {target: ema[name] for name, target in plan.model.items()})
    encoders = {target: ema[name] for name, target in plan.encoders.items()}
    return ImportedModel(model=model.eval(), encoders=encoders)
