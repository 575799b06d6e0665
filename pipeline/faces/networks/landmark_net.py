"""MobileNetV2-GDConv 68-point landmark regressor (Cunjian Chen's PyTorch face landmark model).

The reference computes `z_lnd` with it: the centre 224 px of the 256 px aligned face, ImageNet-normalised,
regresses 68 (x, y) points in [0, 1] of that 224 px frame; the 17 jaw points are dropped, leaving 102
numbers, (x, y) interleaved. The network is torchvision's MobileNetV2 feature stack followed by a global
depthwise 7x7 convolution ("GDConv") and a 1x1 convolution to the 136 coordinates.

The reference checkpoint lists the feature stack twice: under `backbone.base_net.0.*` (the copy the
forward pass uses) and under `backbone.pretrain_net.features.*` (the same tensors, reached through the
torchvision model it was cut from, whose ImageNet classifier `backbone.pretrain_net.classifier.*` is
never used). This module holds one copy, under the `base_net.0` names; `drop_unused_alias` converts.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from pipeline.faces.networks import FrozenNetwork, load_exact_state

POINTS = 68
JAW_POINTS = 17
FEATURE_DIM = 2 * (POINTS - JAW_POINTS)
REFERENCE_SIZE = 256
INPUT_SIZE = 224
CROP_OFFSET = (REFERENCE_SIZE - INPUT_SIZE) // 2  # the reference's [16:240] centre crop
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# MobileNetV2's inverted-residual stages: (expansion, output channels, units, first stride).
INVERTED_RESIDUAL_STAGES = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
STEM_CHANNELS = 32
LAST_CHANNELS = 1280
ALIAS_PREFIX = "backbone.pretrain_net."
ALIAS_FEATURES = "backbone.pretrain_net.features."
USED_FEATURES = "backbone.base_net.0."


def conv_bn_relu6(in_channels: int, out_channels: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    """Convolution -> BatchNorm -> ReLU6, indexed 0/1/2 as torchvision's MobileNetV2 does."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU6(),
    )


class InvertedResidual(nn.Module):
    """Expand (1x1) -> depthwise 3x3 -> linear projection (1x1), with identity shortcut when shapes allow."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, expansion: int):
        super().__init__()
        hidden = in_channels * expansion
        layers: list[nn.Module] = []
        if expansion != 1:
            layers.append(conv_bn_relu6(in_channels, hidden, 1))
        layers += [
            conv_bn_relu6(hidden, hidden, 3, stride, groups=hidden),
            nn.Conv2d(hidden, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        ]
        self.conv = nn.Sequential(*layers)
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.residual else self.conv(x)


def mobilenet_v2_features() -> nn.Sequential:
    """MobileNetV2 (width 1.0) up to its 1280-channel 7x7 map, indexed as torchvision's `features`."""
    layers: list[nn.Module] = [conv_bn_relu6(3, STEM_CHANNELS, 3, 2)]
    channels = STEM_CHANNELS
    for expansion, out_channels, units, stride in INVERTED_RESIDUAL_STAGES:
        for unit in range(units):
            layers.append(InvertedResidual(channels, out_channels, stride if unit == 0 else 1, expansion))
            channels = out_channels
    layers.append(conv_bn_relu6(channels, LAST_CHANNELS, 1))
    return nn.Sequential(*layers)


class ConvBN(nn.Module):
    """Bias-free convolution followed by BatchNorm, no activation (the GDConv head's layers)."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, groups: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel, bias=False, groups=groups)
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


class MobileNetGDConv(nn.Module):
    """224 px ImageNet-normalised face -> 136 raw coordinates (x0, y0, x1, ...)."""

    def __init__(self) -> None:
        super().__init__()
        # A one-element Sequential, so the feature names read `base_net.0.*` as in the checkpoint.
        self.base_net = nn.Sequential(mobilenet_v2_features())
        self.linear7 = ConvBN(LAST_CHANNELS, LAST_CHANNELS, 7, groups=LAST_CHANNELS)
        self.linear1 = ConvBN(LAST_CHANNELS, 2 * POINTS, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear1(self.linear7(self.base_net(x))).flatten(1)


class LandmarkNet(FrozenNetwork):
    """The reference's landmark feature: its pre-processing, MobileNetV2-GDConv, clamp, jaw dropped."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = MobileNetGDConv()
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def preprocess(self, faces: torch.Tensor) -> torch.Tensor:
        """(B, 3, 256, 256) aligned faces in [-1, 1] -> ImageNet-normalised (B, 3, 224, 224) centre crops.

        A 224 px input is taken as already cropped, as the reference does; any other size is an error
        (the fixed [16:240] crop only means something on the 256 px frame).
        """
        size = faces.shape[-1]
        if size != INPUT_SIZE:
            if size != REFERENCE_SIZE or faces.shape[-2] != REFERENCE_SIZE:
                raise ValueError(f"landmark net expects 256 px (or 224 px cropped) faces, got {tuple(faces.shape)}")
            end = CROP_OFFSET + INPUT_SIZE
            faces = faces[:, :, CROP_OFFSET:end, CROP_OFFSET:end]
        return ((faces + 1) / 2 - self.mean) / self.std

    def points(self, faces: torch.Tensor) -> torch.Tensor:
        """(B, 68, 2) landmarks (x, y) in [0, 1] of the 224 px centre crop of (B, 3, 256, 256) faces in [-1, 1]."""
        return self.backbone(self.preprocess(faces)).clamp(0, 1).view(-1, POINTS, 2)

    def forward(self, faces: torch.Tensor) -> torch.Tensor:
        """(B, 102) landmark features: `points` without the jaw, (x, y) interleaved."""
        return self.points(faces)[:, JAW_POINTS:].flatten(1)


def drop_unused_alias(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The reference checkpoint's landmark state without its `backbone.pretrain_net.*` names.

    Each `pretrain_net.features.*` tensor must equal its `base_net.0.*` twin (they are one tensor in the
    reference model); the unused ImageNet classifier under `pretrain_net.classifier.*` is dropped with them.
    Raises `ValueError` naming an alias without a twin or one that differs from it.
    """
    kept = {key: value for key, value in state.items() if not key.startswith(ALIAS_PREFIX)}
    for key, value in state.items():
        if not key.startswith(ALIAS_FEATURES):
            continue
        twin = USED_FEATURES + key[len(ALIAS_FEATURES) :]
        if twin not in kept:
            raise ValueError(f"landmark weights: {key} has no twin {twin}")
        if kept[twin].shape != value.shape or not torch.equal(kept[twin], value):
            raise ValueError(f"landmark weights: {key} differs from {twin}")
    return kept


def build_landmark_net(state: Mapping[str, torch.Tensor]) -> LandmarkNet:
    """Landmark net loaded from a state dict named as the reference's `encoder.lndnet.*` (prefix removed),
    without the `backbone.pretrain_net.*` alias (see `drop_unused_alias`)."""
    return load_exact_state(LandmarkNet(), state, "MobileNetV2-GDConv (landmarks)")
