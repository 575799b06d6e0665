"""The reference code's three frozen face networks, re-implemented to reproduce its numbers.

- `irse50.IRSE50`: IR-SE50 identity embedding (512-d, L2-normalised), the reference's `IDnet`.
- `landmark_net.LandmarkNet`: MobileNetV2-GDConv 68-point landmarks, the reference's `LNDnet`.
- `face_parsing.FaceParser`: BiSeNet face parsing (19 classes), the reference's `BGnet`.
- `face_encoder.ReferenceFaceEncoder`: the three together, as the reference's composite encoder uses them.

Every module's `state_dict` names equal the reference checkpoint's (after its `encoder.idnet.`,
`encoder.lndnet.` and `encoder.bgnet.` prefixes), so weights load without renaming. This file holds what
the three share: strict loading with a readable report, and the frozen-network base class.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

import torch
from torch import nn

# Enough names to identify a layout problem without flooding a one-line error.
_LISTED_NAMES = 8
Network = TypeVar("Network", bound=nn.Module)


class StateDictMismatch(ValueError):
    """A state dict does not fit a network: names missing, unexpected, or with the wrong shape."""

    def __init__(self, network: str, missing: list[str], unexpected: list[str], misshaped: list[str]):
        self.missing = missing
        self.unexpected = unexpected
        self.misshaped = misshaped
        problems = [
            _describe(kind, names)
            for kind, names in (("missing", missing), ("unexpected", unexpected), ("wrong shape", misshaped))
            if names
        ]
        super().__init__(f"weights do not fit {network}: " + "; ".join(problems))


def _describe(kind: str, names: list[str]) -> str:
    shown = ", ".join(names[:_LISTED_NAMES])
    more = f" and {len(names) - _LISTED_NAMES} more" if len(names) > _LISTED_NAMES else ""
    return f"{len(names)} {kind} ({shown}{more})"


class FrozenNetwork(nn.Module):
    """A pretrained network that is only ever evaluated.

    Its BatchNorm statistics are part of the weights, so it must never run in training mode (the
    reference forces `eval()` on every call); `train()` therefore always selects inference mode, and a
    parent model switching to training leaves this network untouched.
    """

    def train(self, mode: bool = True) -> FrozenNetwork:
        """Ignore `mode`: the network stays in inference mode."""
        return super().train(False)


def load_exact_state(network: Network, state: Mapping[str, torch.Tensor], name: str) -> Network:
    """Load `state` into `network`, which must match it name for name and shape for shape.

    Returns the network frozen (no gradients) in inference mode; raises `StateDictMismatch` listing
    every missing, unexpected and mis-shaped name otherwise.
    """
    expected = network.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    misshaped = sorted(
        f"{key} {list(state[key].shape)} != {list(expected[key].shape)}"
        for key in set(expected) & set(state)
        if tuple(state[key].shape) != tuple(expected[key].shape)
    )
    if missing or unexpected or misshaped:
        raise StateDictMismatch(name, missing, unexpected, misshaped)
    network.load_state_dict(dict(state), strict=True)
    return network.requires_grad_(False).eval()
