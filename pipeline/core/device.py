"""Device selection and how work runs on it, in one place: `auto` picks CUDA when present, else the CPU.

On CUDA the `auto` settings turn on bf16 autocast, channels-last layout and batches sized from free
memory; on the CPU they are full precision, the default layout and a fixed batch, so CPU results do not
depend on them.
"""

from __future__ import annotations

from typing import Literal, TypeVar

import torch
from torch import nn

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


Precision = Literal["auto", "float32", "bfloat16", "float16"]
# None: full precision (autocast off).
PRECISION_DTYPES: dict[str, torch.dtype | None] = {"float32": None, "bfloat16": torch.bfloat16,
                                                   "float16": torch.float16}
# What `batch_size: auto` gives on the CPU: the fixed default the stages used before it existed. A larger
# batch buys nothing there (one batch of 8 already saturates the cores, README: speed).
CPU_BATCH_SIZE = 32
# Share of the GPU's free memory an automatic batch may plan to fill: the rest covers the allocator's
# fragmentation, cuDNN workspaces, torch.compile's buffers and the error of the per-item estimate.
GPU_MEMORY_FRACTION = 0.7
# Upper bound of an automatic batch: frames are streamed, so a batch beyond this only adds latency and
# host memory (a 256 px batch of 256 frames already fills an H100's SMs many times over).
MAX_AUTO_BATCH = 256


def precision_dtype(precision: Precision, device: torch.device) -> torch.dtype | None:
    """The autocast dtype a `precision` setting means on `device`; None: full precision.

    `auto` is bf16 autocast on CUDA (fp16 where the GPU lacks bf16) and full precision on the CPU, whose
    results therefore stay bit-identical to float32; an explicit dtype is used as asked, on any device.
    """
    if precision == "auto":
        return autocast_dtype(device, True)
    return PRECISION_DTYPES[precision]


def use_channels_last(setting: bool | Literal["auto"], device: torch.device) -> bool:
    """Whether to run convolutions in channels-last layout: `auto` on CUDA only (tensor cores want NHWC;
    on the CPU it helped only on an idle machine, README: speed)."""
    return device.type == "cuda" if setting == "auto" else bool(setting)


M = TypeVar("M", nn.Module, torch.Tensor)


def channels_last(value: M, enabled: bool) -> M:
    """A module or 4-D tensor in channels-last memory format when `enabled` (same values either way)."""
    if not enabled:
        return value
    if isinstance(value, nn.Module):
        return value.to(memory_format=torch.channels_last)
    return value.contiguous(memory_format=torch.channels_last) if value.dim() == 4 else value


def maybe_compile(module: nn.Module, enabled: bool) -> nn.Module:
    """`module` with its forward compiled by torch.compile when `enabled` (weights shared, not copied).

    Shapes are static: a batch stage sees at most two batch sizes (full and last), each compiled once.
    """
    if enabled:
        module.forward = torch.compile(module.forward, dynamic=False)
    return module


def resolve_batch_size(setting: int | Literal["auto"], device: torch.device, bytes_per_item: int,
                       cpu_default: int = CPU_BATCH_SIZE) -> int:
    """A fixed batch size as set, or for `auto` the largest batch whose estimated memory fits the GPU.

    `bytes_per_item` is the caller's estimate of one item's peak working memory. Call this after the model
    is on the device, so that the free memory reported by the driver already excludes its weights.
    On the CPU `auto` is `cpu_default`.
    """
    if setting != "auto":
        return int(setting)
    if device.type != "cuda":
        return cpu_default
    free, _ = torch.cuda.mem_get_info(device)
    fits = int(free * GPU_MEMORY_FRACTION) // max(1, bytes_per_item)
    return max(1, min(MAX_AUTO_BATCH, fits))
