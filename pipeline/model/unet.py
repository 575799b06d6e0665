"""Diffusion Video Autoencoder decoder: the reference code's UNet, conditioned on a face code.

The face code ``z_face = Linear([z_id, (z_lnd - landmark_center) / landmark_scale])`` is the only trainable
part of the encoder. The landmark standardisation is fixed from the training data (`standardise_landmarks`;
identity for a model imported from the reference code): a clip's landmarks move by a few hundredths of
the crop, too little for a freshly initialised head to pass on, so a small model trained briefly would
otherwise learn to ignore its motion codes. Every
residual block (Kim et al. 2023, model/blocks.py of the authors' code) applies the timestep and then
the face code, each as a channel-wise scale *and* shift, around an extra conv + GroupNorm::

    h = in_layers(x)                                    # GN -> SiLU -> conv
    h = GN(h) * (1 + t_scale) + t_shift                 # timestep
    h = GN(conv(SiLU(h))) * (1 + c_scale) + c_shift     # face code
    out = skip(x) + zero_conv(dropout(SiLU(h)))

Down- and up-sampling are residual blocks too (average pooling / nearest upsampling inside the block).
Module and parameter names follow the reference's layout (``input_blocks``, ``middle_block``,
``output_blocks``, ``out``), so a reference checkpoint maps onto this model name by name.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.model.diffusion import SamplerSettings


@dataclass(frozen=True, kw_only=True)
class UNetConfig:
    """Architecture of :class:`DiffusionVideoAutoencoder`.

    ``attention_resolutions`` are feature-map sizes in pixels, relative to ``resolution``.
    ``embed_dim`` is the width of both the timestep embedding and the face code.
    """

    resolution: int
    in_channels: int = 3
    base_channels: int
    channel_mults: tuple[int, ...]
    num_res_blocks: int
    attention_resolutions: tuple[int, ...]
    embed_dim: int = 512
    dropout: float
    id_dim: int
    lnd_dim: int = 102
    num_heads: int = 1


def tiny(id_dim: int = 128) -> UNetConfig:
    """64 px, the paper's blocks at a small width: trains in minutes on a CPU for the bundled demo."""
    return UNetConfig(
        resolution=64,
        base_channels=32,
        channel_mults=(1, 2, 2, 2),
        num_res_blocks=1,
        attention_resolutions=(16,),
        embed_dim=128,
        # Short runs on a handful of clips: regularisation would only slow fitting.
        dropout=0.0,
        id_dim=id_dim,
    )


def paper(id_dim: int = 512) -> UNetConfig:
    """The paper's 256 px model (190,576,643 UNet parameters with 512-d identity codes)."""
    return UNetConfig(
        resolution=256,
        base_channels=128,
        channel_mults=(1, 1, 2, 2, 4, 4),
        num_res_blocks=2,
        attention_resolutions=(16,),
        embed_dim=512,
        dropout=0.1,
        id_dim=id_dim,
    )


PRESETS = {"tiny": tiny, "paper": paper}


def count_parameters(model: nn.Module) -> int:
    """Total number of parameter elements of ``model`` (works on the meta device)."""
    return sum(p.numel() for p in model.parameters())


def _norm(channels: int) -> nn.GroupNorm:
    # 32 groups as the reference; narrower layers take the largest group count that divides them.
    groups = next(g for g in range(min(32, channels), 0, -1) if channels % g == 0)
    return nn.GroupNorm(groups, channels)


def _zero(module: nn.Module) -> nn.Module:
    # Zero-initialised output layers make each block start as the identity, which stabilises training.
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding (B, dim) of timesteps ``t`` (B,), as in the Transformer and DDPM."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def _scale_shift(projection: nn.Module, code: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    scale, shift = projection(code).to(like.dtype)[..., None, None].chunk(2, dim=1)
    return 1 + scale, shift


class ResBlock(nn.Module):
    """Residual block conditioned on the timestep and the face code; optionally resamples by 2."""

    def __init__(
        self, in_ch: int, out_ch: int, embed_dim: int, dropout: float,
        resample: Literal["up", "down"] | None = None,
    ):
        super().__init__()
        self.resample = resample
        self.in_layers = nn.Sequential(_norm(in_ch), nn.SiLU(), nn.Conv2d(in_ch, out_ch, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(embed_dim, 2 * out_ch))
        self.cond_emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(embed_dim, 2 * out_ch))
        # Indices as the reference: 0 GN (time), 2 conv + 3 GN (face code), 6 zero conv.
        self.out_layers = nn.Sequential(
            _norm(out_ch), nn.SiLU(), nn.Conv2d(out_ch, out_ch, 3, padding=1), _norm(out_ch),
            nn.SiLU(), nn.Dropout(dropout), _zero(nn.Conv2d(out_ch, out_ch, 3, padding=1)),
        )
        self.skip_connection = nn.Identity() if in_ch == out_ch else nn.Conv2d(in_ch, out_ch, 1)

    def _resample(self, x: torch.Tensor) -> torch.Tensor:
        if self.resample == "down":
            return F.avg_pool2d(x, 2)
        if self.resample == "up":
            return F.interpolate(x, scale_factor=2.0, mode="nearest")
        return x

    def forward(self, x: torch.Tensor, t_emb: torch.Tensor, z_face: torch.Tensor) -> torch.Tensor:
        """Apply the block to ``x`` (B, C, H, W) given the time embedding and face code (B, embed_dim)."""
        # Resampling sits between the input activation and its conv, on both paths (as the reference).
        norm_act, conv = self.in_layers[:-1], self.in_layers[-1]
        h = conv(self._resample(norm_act(x)))
        x = self._resample(x)
        layers = self.out_layers
        t_scale, t_shift = _scale_shift(self.emb_layers, t_emb, h)
        h = layers[0](h) * t_scale + t_shift
        c_scale, c_shift = _scale_shift(self.cond_emb_layers, z_face, h)
        h = layers[3](layers[2](layers[1](h))) * c_scale + c_shift
        return self.skip_connection(x) + layers[6](layers[5](layers[4](h)))


class AttentionBlock(nn.Module):
    """Self-attention over spatial positions with a residual connection (1-D convs as the reference)."""

    def __init__(self, channels: int, num_heads: int):
        super().__init__()
        self.heads = num_heads
        self.norm = _norm(channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = _zero(nn.Conv1d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Attend over the H*W positions of ``x`` (B, C, H, W)."""
        b, c, h, w = x.shape
        flat = x.reshape(b, c, h * w)
        # The reference's head layout: channels are grouped by head first, then q, k, v within a head.
        qkv = self.qkv(self.norm(flat)).reshape(b, self.heads, 3, c // self.heads, h * w)
        q, k, v = qkv.transpose(-1, -2).unbind(2)
        out = F.scaled_dot_product_attention(q, k, v).transpose(-1, -2).reshape(b, c, h * w)
        return (flat + self.proj_out(out)).reshape(b, c, h, w)


class ConditionedSequence(nn.ModuleList):
    """Layers applied in turn; residual blocks also receive the time embedding and the face code."""

    def forward(self, x: torch.Tensor, t_emb: torch.Tensor, z_face: torch.Tensor) -> torch.Tensor:
        """Run every layer on ``x``."""
        for layer in self:
            x = layer(x, t_emb, z_face) if isinstance(layer, ResBlock) else layer(x)
        return x


class DiffusionVideoAutoencoder(nn.Module):
    """Face-code encoder head plus the conditional noise-predicting UNet decoder.

    ``sampler`` is the noise schedule and DDIM conventions the model is trained and run with; it is
    saved with the weights, so every inversion and decoding of this model uses the same.
    """

    def __init__(self, config: UNetConfig, sampler: SamplerSettings = SamplerSettings()):
        super().__init__()
        self.sampler = sampler
        self.config = cfg = config
        self.face_encoder = nn.Linear(cfg.id_dim + cfg.lnd_dim, cfg.embed_dim)
        self.register_buffer("landmark_center", torch.zeros(cfg.lnd_dim))
        self.register_buffer("landmark_scale", torch.ones(()))
        self.time_embed = nn.Sequential(
            nn.Linear(cfg.base_channels, cfg.embed_dim), nn.SiLU(), nn.Linear(cfg.embed_dim, cfg.embed_dim)
        )

        def res(in_ch: int, out_ch: int, resample: Literal["up", "down"] | None = None) -> ResBlock:
            return ResBlock(in_ch, out_ch, cfg.embed_dim, cfg.dropout, resample)

        def level(*layers: nn.Module) -> ConditionedSequence:
            return ConditionedSequence(layers)

        # Encoder path; `skip_channels` records the width of every feature map the decoder consumes.
        ch = cfg.channel_mults[0] * cfg.base_channels
        size = cfg.resolution
        self.input_blocks = nn.ModuleList([level(nn.Conv2d(cfg.in_channels, ch, 3, padding=1))])
        skip_channels = [ch]
        for index, mult in enumerate(cfg.channel_mults):
            for _ in range(cfg.num_res_blocks):
                layers = [res(ch, mult * cfg.base_channels)]
                ch = mult * cfg.base_channels
                if size in cfg.attention_resolutions:
                    layers.append(AttentionBlock(ch, cfg.num_heads))
                self.input_blocks.append(level(*layers))
                skip_channels.append(ch)
            if index < len(cfg.channel_mults) - 1:
                self.input_blocks.append(level(res(ch, ch, "down")))
                size //= 2
                skip_channels.append(ch)

        self.middle_block = level(res(ch, ch), AttentionBlock(ch, cfg.num_heads), res(ch, ch))

        # Decoder path: one extra block per level so that every skip (including the downsamplers') is used.
        self.output_blocks = nn.ModuleList()
        for index, mult in reversed(list(enumerate(cfg.channel_mults))):
            for block in range(cfg.num_res_blocks + 1):
                layers = [res(ch + skip_channels.pop(), mult * cfg.base_channels)]
                ch = mult * cfg.base_channels
                if size in cfg.attention_resolutions:
                    layers.append(AttentionBlock(ch, cfg.num_heads))
                if index > 0 and block == cfg.num_res_blocks:
                    layers.append(res(ch, ch, "up"))
                    size *= 2
                self.output_blocks.append(level(*layers))

        self.out = nn.Sequential(_norm(ch), nn.SiLU(), _zero(nn.Conv2d(ch, cfg.in_channels, 3, padding=1)))

    def face_code(self, z_id: torch.Tensor, z_lnd: torch.Tensor) -> torch.Tensor:
        """Map identity (B, id_dim) and landmark (B, lnd_dim) features to ``z_face`` (B, embed_dim)."""
        z_lnd = (z_lnd - self.landmark_center) / self.landmark_scale
        return self.face_encoder(torch.cat([z_id, z_lnd], dim=-1))

    def standardise_landmarks(self, features: torch.Tensor) -> None:
        """Centre the landmark input on the mean of `features` (N, lnd_dim) and scale it by their RMS spread.

        One scale for all coordinates keeps the face's geometry (an expression direction stays one).
        """
        center = features.mean(dim=0)
        spread = (features - center).square().mean().sqrt()
        self.landmark_center.copy_(center)
        self.landmark_scale.copy_(spread.clamp_min(1e-6))

    def unet_parameters(self) -> int:
        """Parameter count of the decoder alone (without the face-code head)."""
        return count_parameters(self) - count_parameters(self.face_encoder)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, z_face: torch.Tensor) -> torch.Tensor:
        """Predict the noise in ``x_t`` (B, C, H, W) at timesteps ``t`` (B,) given ``z_face`` (B, embed_dim).

        H and W must be divisible by ``2 ** (len(channel_mults) - 1)``.
        """
        t_emb = self.time_embed(timestep_embedding(t, self.config.base_channels).to(x_t.dtype))
        h = x_t
        skips = []
        for block in self.input_blocks:
            h = block(h, t_emb, z_face)
            skips.append(h)
        h = self.middle_block(h, t_emb, z_face)
        for block in self.output_blocks:
            # Under autocast the skip and h can differ in dtype; concatenate in h's.
            h = block(torch.cat([h, skips.pop().to(h.dtype)], dim=1), t_emb, z_face)
        return self.out(h)
