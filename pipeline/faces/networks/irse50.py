"""IR-SE50 face-identity network (InsightFace's improved ResNet-50 with squeeze-excitation units).

The reference computes `z_id` with it: the 256 px aligned face in [-1, 1] is cut to the central face box
`[35:223, 32:220]`, average-pooled to 112 px, and embedded to 512 numbers (BatchNorm, then L2 norm).
The networks' names follow the reference checkpoint (`backbone.input_layer`, `backbone.body.<i>`,
`backbone.output_layer`), so its weights load as they are.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.faces.networks import FrozenNetwork, load_exact_state

IDENTITY_DIM = 512
REFERENCE_SIZE = 256
FACE_BOX = (35, 223, 32, 220)  # rows, then columns, of the 256 px aligned face
INPUT_SIZE = 112
# (input channels, output channels, units) of the four stages of the 50-layer variant; the first unit
# of each stage halves the resolution: 112 -> 56 -> 28 -> 14 -> 7.
STAGES = ((64, 64, 3), (64, 128, 4), (128, 256, 14), (256, 512, 3))
SE_REDUCTION = 16


class SqueezeExcite(nn.Module):
    """Channel gating from the globally pooled response (two bias-free 1x1 convolutions)."""

    def __init__(self, channels: int):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, channels // SE_REDUCTION, 1, bias=False)
        self.fc2 = nn.Conv2d(channels // SE_REDUCTION, channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.fc2(F.relu(self.fc1(x.mean(dim=(2, 3), keepdim=True))))
        return x * torch.sigmoid(gate)


class BottleneckIRSE(nn.Module):
    """Pre-activation residual unit: BN -> conv -> PReLU -> conv (strided) -> BN -> SE, plus shortcut."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        if in_channels == out_channels:
            # A 1x1 max-pool with a stride is plain subsampling; kept as a module to mirror the layout.
            self.shortcut_layer: nn.Module = nn.MaxPool2d(1, stride)
        else:
            self.shortcut_layer = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )
        self.res_layer = nn.Sequential(
            nn.BatchNorm2d(in_channels),
            nn.Conv2d(in_channels, out_channels, 3, 1, 1, bias=False),
            nn.PReLU(out_channels),
            nn.Conv2d(out_channels, out_channels, 3, stride, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            SqueezeExcite(out_channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.res_layer(x) + self.shortcut_layer(x)


class IRSE50Backbone(nn.Module):
    """The embedding network proper: 112 px face in [-1, 1] -> L2-normalised 512-d code."""

    def __init__(self) -> None:
        super().__init__()
        self.input_layer = nn.Sequential(nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.PReLU(64))
        units = []
        for in_channels, out_channels, count in STAGES:
            units.append(BottleneckIRSE(in_channels, out_channels, 2))
            units.extend(BottleneckIRSE(out_channels, out_channels, 1) for _ in range(count - 1))
        self.body = nn.Sequential(*units)
        side = INPUT_SIZE // 16
        # Dropout (index 1) is inert at inference; it keeps the reference's indices for the weights.
        self.output_layer = nn.Sequential(
            nn.BatchNorm2d(512),
            nn.Dropout(),
            nn.Flatten(),
            nn.Linear(512 * side * side, IDENTITY_DIM),
            nn.BatchNorm1d(IDENTITY_DIM),
        )

    def forward(self, faces: torch.Tensor) -> torch.Tensor:
        codes = self.output_layer(self.body(self.input_layer(faces)))
        # No epsilon, as in the reference: a BatchNorm output is never exactly zero in practice.
        return codes / codes.norm(p=2, dim=1, keepdim=True)


class IRSE50(FrozenNetwork):
    """The reference's identity encoder: its pre-processing followed by IR-SE50."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = IRSE50Backbone()

    @staticmethod
    def preprocess(faces: torch.Tensor) -> torch.Tensor:
        """(B, 3, 256, 256) aligned faces in [-1, 1] -> the (B, 3, 112, 112) face box the network sees.

        Other sizes are average-pooled to 256 px first, as the reference does.
        """
        if faces.shape[-1] != REFERENCE_SIZE or faces.shape[-2] != REFERENCE_SIZE:
            faces = F.adaptive_avg_pool2d(faces, REFERENCE_SIZE)
        top, bottom, left, right = FACE_BOX
        return F.adaptive_avg_pool2d(faces[:, :, top:bottom, left:right], INPUT_SIZE)

    def forward(self, faces: torch.Tensor) -> torch.Tensor:
        """(B, 3, 256, 256) aligned faces in [-1, 1] -> (B, 512) unit-length identity codes."""
        return self.backbone(self.preprocess(faces))


def build_irse50(state: Mapping[str, torch.Tensor]) -> IRSE50:
    """IR-SE50 loaded from a state dict named as the reference's `encoder.idnet.*` (prefix removed)."""
    return load_exact_state(IRSE50(), state, "IR-SE50 (identity)")
