"""Diffusion Video Autoencoder decoder: a DiffAE-style UNet conditioned on a face code.

The face code ``z_face = Linear([z_id, z_lnd])`` is the only trainable part of the encoder. Every
residual block applies it as a channel-wise scale after the timestep AdaGN (Kim et al. 2023, following
Preechakul et al. 2022)::

    h = GN(h) * (1 + t_scale) + t_shift
    h = h * (1 + Linear(SiLU(z_face)))
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


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
    head_channels: int = 64


def tiny(id_dim: int = 128) -> UNetConfig:
    """64 px, ~2 M parameters: trains in minutes on a CPU for the bundled demo."""
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
    """The paper's 256 px model (ArcFace identity codes by default)."""
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
    # The largest group count <= 32 that divides the channels, so any width works.
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


class ResBlock(nn.Module):
    """Residual block with timestep AdaGN followed by the face-code scale."""

    def __init__(self, in_ch: int, out_ch: int, embed_dim: int, dropout: float):
        super().__init__()
        self.in_layers = nn.Sequential(_norm(in_ch), nn.SiLU(), nn.Conv2d(in_ch, out_ch, 3, padding=1))
        self.time_proj = nn.Sequential(nn.SiLU(), nn.Linear(embed_dim, 2 * out_ch))
        self.face_proj = nn.Sequential(nn.SiLU(), nn.Linear(embed_dim, out_ch))
        self.out_norm = _norm(out_ch)
        self.out_layers = nn.Sequential(
            nn.SiLU(), nn.Dropout(dropout), _zero(nn.Conv2d(out_ch, out_ch, 3, padding=1))
        )
        self.skip = nn.Identity() if in_ch == out_ch else nn.Conv2d(in_ch, out_ch, 1)

    def forward(self, x: torch.Tensor, t_emb: torch.Tensor, z_face: torch.Tensor) -> torch.Tensor:
        """Apply the block to ``x`` (B, C, H, W) given the time embedding and face code (B, embed_dim)."""
        h = self.in_layers(x)
        t_scale, t_shift = self.time_proj(t_emb)[..., None, None].chunk(2, dim=1)
        h = self.out_norm(h) * (1 + t_scale) + t_shift
        h = h * (1 + self.face_proj(z_face)[..., None, None])
        return self.skip(x) + self.out_layers(h)


class AttentionBlock(nn.Module):
    """Multi-head self-attention over spatial positions, with a residual connection."""

    def __init__(self, channels: int, head_channels: int):
        super().__init__()
        self.heads = max(1, channels // head_channels)
        self.norm = _norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = _zero(nn.Conv2d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Attend over the H*W positions of ``x`` (B, C, H, W)."""
        b, c, h, w = x.shape
        # (B, 3C, H, W) -> three tensors of shape (B, heads, H*W, C/heads).
        qkv = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w)
        q, k, v = qkv.transpose(-1, -2).unbind(1)
        out = F.scaled_dot_product_attention(q, k, v)
        return x + self.proj(out.transpose(-1, -2).reshape(b, c, h, w))


class Downsample(nn.Module):
    """Halve the spatial size with a strided 3x3 convolution."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Downsample ``x`` by 2."""
        return self.conv(x)


class Upsample(nn.Module):
    """Double the spatial size: nearest-neighbour upsampling, then a 3x3 convolution."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Upsample ``x`` by 2."""
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _Level(nn.Module):
    """One residual block, optionally followed by self-attention."""

    def __init__(self, in_ch: int, out_ch: int, cfg: UNetConfig, attention: bool):
        super().__init__()
        self.res = ResBlock(in_ch, out_ch, cfg.embed_dim, cfg.dropout)
        self.attn = AttentionBlock(out_ch, cfg.head_channels) if attention else nn.Identity()

    def forward(self, x: torch.Tensor, t_emb: torch.Tensor, z_face: torch.Tensor) -> torch.Tensor:
        return self.attn(self.res(x, t_emb, z_face))


class DiffusionVideoAutoencoder(nn.Module):
    """Face-code encoder head plus the conditional noise-predicting UNet decoder."""

    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = cfg = config
        self.face_encoder = nn.Linear(cfg.id_dim + cfg.lnd_dim, cfg.embed_dim)
        self.time_embed = nn.Sequential(
            nn.Linear(cfg.base_channels, cfg.embed_dim), nn.SiLU(), nn.Linear(cfg.embed_dim, cfg.embed_dim)
        )
        self.input_conv = nn.Conv2d(cfg.in_channels, cfg.base_channels, 3, padding=1)

        # Encoder path; `skip_channels` records the width of every feature map the decoder consumes.
        ch, res = cfg.base_channels, cfg.resolution
        skip_channels = [ch]
        self.down = nn.ModuleList()
        for level, mult in enumerate(cfg.channel_mults):
            for _ in range(cfg.num_res_blocks):
                self.down.append(_Level(ch, mult * cfg.base_channels, cfg, res in cfg.attention_resolutions))
                ch = mult * cfg.base_channels
                skip_channels.append(ch)
            if level < len(cfg.channel_mults) - 1:
                self.down.append(Downsample(ch))
                res //= 2
                skip_channels.append(ch)

        self.mid = nn.ModuleList(
            [ResBlock(ch, ch, cfg.embed_dim, cfg.dropout), AttentionBlock(ch, cfg.head_channels),
             ResBlock(ch, ch, cfg.embed_dim, cfg.dropout)]
        )

        # Decoder path: one extra block per level so that every skip (including the downsamplers') is used.
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.channel_mults))):
            for _ in range(cfg.num_res_blocks + 1):
                in_ch = ch + skip_channels.pop()
                ch = mult * cfg.base_channels
                self.up.append(_Level(in_ch, ch, cfg, res in cfg.attention_resolutions))
            if level > 0:
                self.up.append(Upsample(ch))
                res *= 2

        self.out = nn.Sequential(_norm(ch), nn.SiLU(), _zero(nn.Conv2d(ch, cfg.in_channels, 3, padding=1)))

    def face_code(self, z_id: torch.Tensor, z_lnd: torch.Tensor) -> torch.Tensor:
        """Map identity (B, id_dim) and landmark (B, lnd_dim) features to ``z_face`` (B, embed_dim)."""
        return self.face_encoder(torch.cat([z_id, z_lnd], dim=-1))

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, z_face: torch.Tensor) -> torch.Tensor:
        """Predict the noise in ``x_t`` (B, C, H, W) at timesteps ``t`` (B,) given ``z_face`` (B, embed_dim).

        H and W must be divisible by ``2 ** (len(channel_mults) - 1)``.
        """
        t_emb = self.time_embed(timestep_embedding(t, self.config.base_channels))
        h = self.input_conv(x_t)
        skips = [h]
        for layer in self.down:
            h = layer(h) if isinstance(layer, Downsample) else layer(h, t_emb, z_face)
            skips.append(h)
        h = self.mid[0](h, t_emb, z_face)
        h = self.mid[1](h)
        h = self.mid[2](h, t_emb, z_face)
        for layer in self.up:
            if isinstance(layer, Upsample):
                h = layer(h)
            else:
                # Under autocast the skip and h can differ in dtype; concatenate in h's.
                h = layer(torch.cat([h, skips.pop().to(h.dtype)], dim=1), t_emb, z_face)
        return self.out(h)
