"""Tests of CLIP-guided identity-direction optimisation with a tiny untrained CLIP and a fake autoencoder."""

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from pipeline.editing import l2norm
from pipeline.text_edit import (
    TextEditConfig,
    apply_text_direction,
    invert_to_t_start,
    load_clip,
    optimise_text_direction,
    short_timesteps,
    tiny_clip,
)

ID_DIM = 16
RES = 32


class FakeAutoencoder(nn.Module):
    """A few-layer stand-in for the diffusion autoencoder: codes modulate conv features, as in the real one."""

    def __init__(self):
        super().__init__()
        self.code = nn.Linear(ID_DIM + 102, 32)
        self.conv_in = nn.Conv2d(3, 16, 3, padding=1)
        self.film = nn.Linear(32, 16)
        self.conv_out = nn.Conv2d(16, 3, 3, padding=1)

    def face_code(self, z_id, z_lnd):
        return self.code(torch.cat([z_id, z_lnd], dim=1))

    def forward(self, x, t, z_face):
        h = F.silu(self.conv_in(x)) * (1 + self.film(F.silu(z_face)))[:, :, None, None]
        return self.conv_out(h)


class FakeScheduler:
    """Euler-like updates with the DDIMScheduler interface; only the contract matters here."""

    def step(self, eps, t, t_prev, x_t):
        return x_t - (t - t_prev) / 1000 * eps

    def invert_step(self, eps, t, t_next, x_t):
        return x_t + (t_next - t) / 1000 * eps


@pytest.fixture()
def setup():
    torch.manual_seed(0)
    model = FakeAutoencoder()
    gen = torch.Generator().manual_seed(1)
    x0 = torch.rand(1, 3, RES, RES, generator=gen) * 2 - 1
    z_id = torch.randn(ID_DIM, generator=gen)
    z_lnd = torch.rand(102, generator=gen)
    mask = torch.zeros(1, 1, RES, RES)
    mask[..., : RES // 4, :] = 1  # keep the top rows unchanged
    return model, x0, z_id, z_lnd, mask


def test_short_timesteps():
    assert short_timesteps(800, 5) == [800, 600, 400, 200, 0]
    assert short_timesteps(500, 1) == [500]


def test_optimisation_lowers_loss(setup):
    model, x0, z_id, z_lnd, mask = setup
    clip_model, tokenizer = tiny_clip(image_size=RES)
    cfg = TextEditConfig(target_text="face with a beard", iterations=15)
    x_start = invert_to_t_start(model, FakeScheduler(), x0, z_id, z_lnd, cfg)
    dz, losses = optimise_text_direction(
        model, FakeScheduler(), clip_model, tokenizer, x_start, z_id, z_lnd, mask, cfg
    )
    assert len(losses) == 15 and all(np.isfinite(losses))
    # The first loss compares two images that differ only by float noise, so start the comparison after it.
    assert np.mean(losses[-3:]) < np.mean(losses[1:4])
    assert dz.shape == (ID_DIM,) and dz.dtype == np.float32 and np.linalg.norm(dz) > 0
    # The models come back as they were handed in.
    assert model.training and all(p.requires_grad for p in model.parameters())


def test_apply_text_direction():
    z = np.array([3.0, 4.0], dtype=np.float32)
    unchanged = apply_text_direction(z, np.array([1.0, -1.0]), 0.0)
    np.testing.assert_array_equal(unchanged, l2norm(z.astype(np.float64)).astype(np.float32))
    # (3, 4) + 0.5 * (2, -8) = (4, 0) -> (1, 0).
    np.testing.assert_allclose(apply_text_direction(z, np.array([2.0, -8.0]), 0.5), [1.0, 0.0], atol=1e-7)


def test_missing_clip_weights_names_param(tmp_path):
    missing = tmp_path / "ViT-B-32.pt"
    with pytest.raises(FileNotFoundError, match=r"edit\.clip_weights") as info:
        load_clip("ViT-B-32", missing)
    assert str(missing) in str(info.value)
    with pytest.raises(FileNotFoundError, match=r"style\.clip"):
        load_clip("ViT-B-32", None, param_name="style.clip")
