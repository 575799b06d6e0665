"""Device selection in one place: `auto` picks CUDA when present, else the CPU."""

from __future__ import annotations

import torch

from pipeline.core.errors import ParamsError


def resolve_device(name: str) -> torch.device:
    """`auto`, `cpu`, `cuda` or `cuda:N` -> a usable torch device (error if CUDA was asked for but absent)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ParamsError(f"device {name!r} is not a torch device (use auto, cpu or cuda[:N])") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ParamsError(f"device {name!r} requested but no CUDA GPU is visible")
    return device


def autocast_dtype(device: torch.device, enabled: bool) -> torch.dtype | None:
    """bf16 autocast on GPUs that support it (fp16 otherwise); None (full precision) on the CPU."""
    if not enabled or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
