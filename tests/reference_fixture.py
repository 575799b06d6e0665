"""Checkpoints in the reference code's layout, with weights rebuilt from their names.

`fixtures/dva_reference/` is a copy of `shared/golden/dva_reference/`: the reference code's outputs for
given inputs, computed with weights that the formula below (its README, "The weight formula") rebuilds
from each tensor's full checkpoint name. No weights and no reference code are shipped.
"""

from __future__ import annotations

import json
import math
import zlib
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

FIXTURE = Path(__file__).parent / "fixtures" / "dva_reference"
EMA_PREFIX = "ema_model."
# The landmark net lists its MobileNet features twice; both hold the values of the base_net.0 name.
_LANDMARK_ALIAS = ("backbone.pretrain_net.features.", "backbone.base_net.0.")


def formula_tensor(name: str, shape: list[int], integer: bool = False) -> torch.Tensor:
    """The fixture's value for the checkpoint tensor `name` (full name, with its `ema_model.` prefix)."""
    if integer:
        return torch.zeros(shape, dtype=torch.long)
    n = int(np.prod(shape)) if shape else 1
    i = np.arange(n, dtype=np.float64)
    phase = (zlib.crc32(name.encode()) % 10007) / 10007 * 2 * math.pi
    leaf = name.rsplit(".", 1)[-1]
    if leaf == "running_var":
        values = 1 + 0.25 * (1 + np.sin(0.7 * i + phase))
    elif leaf == "running_mean":
        values = 0.05 * np.sin(0.3 * i + phase)
    elif len(shape) <= 1:
        values = 1 + 0.1 * np.sin(0.9 * i + phase) if leaf == "weight" else 0.001 * np.sin(1.1 * i + phase)
    else:
        values = math.sqrt(2 / (n / shape[0])) * np.sin(1.3 * i + phase)
    return torch.from_numpy(values.astype(np.float32).reshape(shape))


def reference_keys(which: str = "small64") -> dict[str, list[int]]:
    """Name -> shape of every tensor of the reference model (without the `ema_model.` prefix)."""
    return json.loads((FIXTURE / f"keys_{which}.json").read_text())


def formula_state(which: str = "small64", prefix: str = EMA_PREFIX) -> dict[str, torch.Tensor]:
    """The reference model's state dict with formula weights, keys under `prefix`."""
    state = {}
    for key, shape in reference_keys(which).items():
        source = key.replace(*_LANDMARK_ALIAS) if _LANDMARK_ALIAS[0] in key else key
        state[prefix + key] = formula_tensor(
            EMA_PREFIX + source, shape, integer=key.endswith("num_batches_tracked")
        )
    return state


def write_lightning_checkpoint(path: Path, state: dict[str, torch.Tensor], **extra: object) -> Path:
    """Save `state` as a PyTorch Lightning checkpoint does (a pickled dict with a `state_dict`)."""
    torch.save({"epoch": 51, "global_step": 1000000, "state_dict": state, **extra}, path)
    return path


def golden() -> dict[str, torch.Tensor]:
    """Inputs and reference outputs (see the fixture README)."""
    return load_file(str(FIXTURE / "golden.safetensors"))


def meta() -> dict:
    """The fixture's `meta.json`: parameter counts, the small config, the respaced timesteps, edit settings."""
    return json.loads((FIXTURE / "meta.json").read_text())


def paper_unet_parameters() -> int:
    """Parameters of the reference's 256 px UNet alone: the whole model's count less its face encoder's."""
    counts = meta()
    return counts["paper256_parameters"] - counts["paper256_parameters_encoder"]


def ddim_step_counts() -> list[int]:
    """The step counts S of the fixture's DDIM goldens (`ddimS.xT`, `ddimS.x0`), from its `ddimS_timesteps`."""
    return sorted(int(key[len("ddim") : -len("_timesteps")]) for key in meta()
                  if key.startswith("ddim") and key.endswith("_timesteps"))


def max_abs_difference(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """Largest absolute difference between two tensors of the same shape."""
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    return float((actual.double() - expected.double()).abs().max())


# The README expects float32 results to agree to about 1e-5 relative: one network pass is thousands of
# float32 multiply-adds per output (rounding 6e-8 each, growing with their square root), in a different
# summation order than the reference's kernels. 1e-4 leaves a factor 10 for that order; the `1 +` makes it
# absolute for outputs near zero. It scales with the golden's own largest value only (the fixture, not
# our run).
RELATIVE_TOLERANCE = 1e-4


def tolerance(expected: torch.Tensor) -> float:
    """The acceptance bound of one network pass: RELATIVE_TOLERANCE x (1 + max |golden|)."""
    return RELATIVE_TOLERANCE * (1 + float(expected.double().abs().max()))
