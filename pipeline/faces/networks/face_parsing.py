"""BiSeNet face parsing (19 CelebAMask-HQ classes, zllrunning's face-parsing.PyTorch layout).

The reference parses the 256 px aligned face after a nearest resize to 512 px (ImageNet-normalised) and
keeps as foreground every pixel whose class is not background (0), cloth (16) or hat (18); for video
blending it also excludes ears (7, 8), neck (14) and necklace (17). The mask is resized back (nearest).

This variant of BiSeNet has no spatial path: the ResNet-18 1/8 feature stands in for it. The two
auxiliary heads (`conv_out16`, `conv_out32`) only supervised training; they are kept so the
checkpoint's names load unchanged, and inference uses the main head only.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.faces.networks import FrozenNetwork, load_exact_state

CLASSES = 19
PARSING_SIZE = 512
REFERENCE_MASK_SIZE = 256
IMAGE_BACKGROUND = (0, 18, 16)  # background, hat, cloth
VIDEO_BACKGROUND = IMAGE_BACKGROUND + (7, 8, 14, 17)  # and left/right ear, neck, necklace
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Crops parsed at once by `parsing_face_mask`: 19 logit planes at 512 px are 20 MB a crop.
MASK_CHUNK = 8


class ConvBNReLU(nn.Module):
    """Bias-free convolution -> BatchNorm -> ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int = 3, stride: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel, stride, (kernel - 1) // 2, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


class BasicBlock(nn.Module):
    """ResNet basic block (two 3x3 convolutions) with a projected shortcut when the shape changes."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.downsample: nn.Module | None = None
        if in_channels != out_channels or stride != 1:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(shortcut + residual)


def _stage(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    return nn.Sequential(BasicBlock(in_channels, out_channels, stride), BasicBlock(out_channels, out_channels))


class ResNet18(nn.Module):
    """ResNet-18 trunk returning its 1/8, 1/16 and 1/32 feature maps."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = _stage(64, 64, 1)
        self.layer2 = _stage(64, 128, 2)
        self.layer3 = _stage(128, 256, 2)
        self.layer4 = _stage(256, 512, 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.layer1(self.maxpool(F.relu(self.bn1(self.conv1(x)))))
        feat8 = self.layer2(x)
        feat16 = self.layer3(feat8)
        return feat8, feat16, self.layer4(feat16)


class AttentionRefinement(nn.Module):
    """Features re-weighted per channel by a gate computed from their global average."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = ConvBNReLU(in_channels, out_channels)
        self.conv_atten = nn.Conv2d(out_channels, out_channels, 1, bias=False)
        self.bn_atten = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.conv(x)
        gate = torch.sigmoid(self.bn_atten(self.conv_atten(features.mean(dim=(2, 3), keepdim=True))))
        return features * gate


class ContextPath(nn.Module):
    """ResNet-18 plus top-down refinement: returns the 1/8 trunk feature and the refined 1/8 and 1/16 maps."""

    def __init__(self) -> None:
        super().__init__()
        self.resnet = ResNet18()
        self.arm16 = AttentionRefinement(256, 128)
        self.arm32 = AttentionRefinement(512, 128)
        self.conv_head32 = ConvBNReLU(128, 128)
        self.conv_head16 = ConvBNReLU(128, 128)
        self.conv_avg = ConvBNReLU(512, 128, kernel=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        feat8, feat16, feat32 = self.resnet(x)
        # The global context is a 1x1 map; adding it broadcasts, as the reference's nearest upsampling does.
        context = self.conv_avg(feat32.mean(dim=(2, 3), keepdim=True))
        up32 = F.interpolate(self.arm32(feat32) + context, feat16.shape[2:], mode="nearest")
        up32 = self.conv_head32(up32)
        up16 = F.interpolate(self.arm16(feat16) + up32, feat8.shape[2:], mode="nearest")
        up16 = self.conv_head16(up16)
        return feat8, up16, up32


class FeatureFusion(nn.Module):
    """Concatenated features fused by a 1x1 block, then boosted by a squeeze-excitation style gate."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.convblk = ConvBNReLU(in_channels, out_channels, kernel=1)
        self.conv1 = nn.Conv2d(out_channels, out_channels // 4, 1, bias=False)
        self.conv2 = nn.Conv2d(out_channels // 4, out_channels, 1, bias=False)

    def forward(self, spatial: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        features = self.convblk(torch.cat([spatial, context], dim=1))
        gate = torch.sigmoid(self.conv2(F.relu(self.conv1(features.mean(dim=(2, 3), keepdim=True)))))
        return features * gate + features


class OutputHead(nn.Module):
    """3x3 ConvBNReLU then a 1x1 convolution to the class logits."""

    def __init__(self, in_channels: int, mid_channels: int, classes: int):
        super().__init__()
        self.conv = ConvBNReLU(in_channels, mid_channels)
        self.conv_out = nn.Conv2d(mid_channels, classes, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_out(self.conv(x))


class BiSeNet(nn.Module):
    """Normalised image -> per-pixel class logits at the input's resolution (main head only)."""

    def __init__(self, classes: int = CLASSES):
        super().__init__()
        self.cp = ContextPath()
        self.ffm = FeatureFusion(256, 256)
        self.conv_out = OutputHead(256, 256, classes)
        self.conv_out16 = OutputHead(128, 64, classes)
        self.conv_out32 = OutputHead(128, 64, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat8, context8, _ = self.cp(x)
        logits = self.conv_out(self.ffm(feat8, context8))
        return F.interpolate(logits, x.shape[2:], mode="bilinear", align_corners=True)


class FaceParser(FrozenNetwork):
    """The reference's face parser (`BGnet`): its pre-processing, BiSeNet, and the foreground masks."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = BiSeNet(CLASSES)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def preprocess(self, faces: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) faces in [-1, 1] -> (B, 3, 512, 512): nearest resize, clip, ImageNet normalisation."""
        faces = F.interpolate(faces, (PARSING_SIZE, PARSING_SIZE), mode="nearest")
        return ((faces.clamp(-1, 1) + 1) / 2 - self.mean) / self.std

    def forward(self, faces: torch.Tensor) -> torch.Tensor:
        """(B, 19, 512, 512) class logits of (B, 3, H, W) faces in [-1, 1]."""
        return self.backbone(self.preprocess(faces))

    def classes(self, faces: torch.Tensor) -> torch.Tensor:
        """(B, 512, 512) most likely class of every pixel of the 512 px parsing."""
        return self(faces).argmax(dim=1)

    def face_mask(self, faces: torch.Tensor, for_video: bool = False, size: int = REFERENCE_MASK_SIZE) -> torch.Tensor:
        """(B, 1, size, size) float foreground mask (1 = face) of (B, 3, H, W) faces in [-1, 1].

        `for_video` also excludes ears, neck and necklace, as the reference's video blending does; the
        default size is the reference's 256 px.
        """
        labels = self.classes(faces).unsqueeze(1)
        background = VIDEO_BACKGROUND if for_video else IMAGE_BACKGROUND
        excluded = torch.tensor(background, device=labels.device).view(1, -1, 1, 1)
        foreground = (labels != excluded).all(dim=1, keepdim=True)
        return F.interpolate(foreground.float(), (size, size), mode="nearest")


def build_face_parser(state: Mapping[str, torch.Tensor]) -> FaceParser:
    """BiSeNet loaded from a state dict named as the reference's `encoder.bgnet.*` (prefix removed)."""
    return load_exact_state(FaceParser(), state, "BiSeNet (face parsing)")


def uint8_to_unit_range(crops: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """(B, R, R, 3) uint8 RGB crops -> (B, 3, R, R) float32 in [-1, 1] on `device`."""
    images = torch.from_numpy(np.ascontiguousarray(crops)).to(device)
    return images.permute(0, 3, 1, 2).float() / 127.5 - 1


@torch.no_grad()
def parsing_face_mask(crops: np.ndarray, parser: FaceParser, for_video: bool) -> np.ndarray:
    """(B, R, R) float32 foreground masks (1 = face) of (B, R, R, 3) uint8 RGB aligned crops.

    Each crop is parsed as the reference parses its 256 px frame (nearest resize to 512 px) and the mask
    is brought back to R px (nearest), on the parser's device, a few crops at a time.
    """
    crops = np.asarray(crops)
    if crops.ndim != 4 or crops.shape[-1] != 3 or crops.shape[1] != crops.shape[2]:
        raise ValueError(f"expected (B, R, R, 3) crops, got shape {crops.shape}")
    size = crops.shape[1]
    device = parser.mean.device
    masks = np.zeros(crops.shape[:3], dtype=np.float32)
    for start in range(0, len(crops), MASK_CHUNK):
        faces = uint8_to_unit_range(crops[start : start + MASK_CHUNK], device)
        masks[start : start + MASK_CHUNK] = parser.face_mask(faces, for_video, size)[:, 0].cpu().numpy()
    return masks
