import dataclasses

import pytest
import torch

from pipeline.model.unet import PRESETS, DiffusionVideoAutoencoder, UNetConfig, count_parameters, paper, tiny
from tests.reference_fixture import paper_unet_parameters


def _perturb_zero_init(model, scale=0.05):
    # The zero-initialised output convolutions make a fresh model ignore its inputs; wake them up.
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.copy_(torch.randn(p.shape, generator=g) * scale)


def _inputs(batch, res, cfg, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, cfg.in_channels, res, res, generator=g)
    t = torch.randint(0, 1000, (batch,), generator=g)
    z_id = torch.randn(batch, cfg.id_dim, generator=g)
    z_lnd = torch.rand(batch, cfg.lnd_dim, generator=g)
    return x, t, z_id, z_lnd


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = DiffusionVideoAutoencoder(tiny())
    _perturb_zero_init(m)
    return m.eval()


@pytest.mark.parametrize("res", [32, 64])
def test_output_shape(res):
    cfg = dataclasses.replace(tiny(), resolution=res)
    m = DiffusionVideoAutoencoder(cfg)
    x, t, z_id, z_lnd = _inputs(2, res, cfg)
    z_face = m.face_code(z_id, z_lnd)
    assert z_face.shape == (2, cfg.embed_dim)
    out = m(x, t, z_face)
    assert out.shape == x.shape
    # Zero-initialised output convolution: an untrained model predicts no noise.
    assert not out.any()


def test_face_code_changes_output(model):
    cfg = model.config
    x, t, z_id, z_lnd = _inputs(2, 64, cfg)
    with torch.no_grad():
        a = model(x, t, model.face_code(z_id, z_lnd))
        b = model(x, t, model.face_code(z_id, z_lnd + 0.5))
        c = model(x, t, model.face_code(z_id, z_lnd))
    assert a.abs().mean() > 0
    assert (a - b).abs().mean() > 1e-3 * a.abs().mean()
    torch.testing.assert_close(a, c)


def test_timestep_changes_output(model):
    x, t, z_id, z_lnd = _inputs(2, 64, model.config)
    with torch.no_grad():
        z_face = model.face_code(z_id, z_lnd)
        assert not torch.allclose(model(x, t, z_face), model(x, (t + 300) % 1000, z_face))


def test_samples_are_independent(model):
    # GroupNorm and attention act within a sample: batching must not mix frames.
    x, t, z_id, z_lnd = _inputs(3, 32, model.config)
    with torch.no_grad():
        z_face = model.face_code(z_id, z_lnd)
        full = model(x, t, z_face)
        single = model(x[1:2], t[1:2], z_face[1:2])
    torch.testing.assert_close(full[1:2], single, atol=1e-5, rtol=1e-4)


def test_optimizer_steps_train_face_encoder():
    torch.manual_seed(0)
    m = DiffusionVideoAutoencoder(dataclasses.replace(tiny(), resolution=32))
    opt = torch.optim.Adam(m.parameters(), lr=1e-3)
    x, t, z_id, z_lnd = _inputs(2, 32, m.config)
    before = m.face_encoder.weight.detach().clone()
    # Step 1 only moves the zero-initialised output layer; step 2 reaches the encoder through it.
    for _ in range(3):
        opt.zero_grad()
        loss = (m(x, t, m.face_code(z_id, z_lnd)) - x).abs().mean()
        loss.backward()
        opt.step()
    assert not torch.equal(before, m.face_encoder.weight)
    with torch.no_grad():
        a = m(x, t, m.face_code(z_id, z_lnd))
        b = m(x, t, m.face_code(z_id, z_lnd + 0.5))
    assert not torch.allclose(a, b)


def test_bf16_autocast(model):
    x, t, z_id, z_lnd = _inputs(2, 32, model.config)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x, t, model.face_code(z_id, z_lnd))
    assert out.shape == x.shape and torch.isfinite(out).all()


def test_odd_channel_widths_build_and_run():
    # 24 and 48 channels: GroupNorm must pick a group count that divides them.
    cfg = dataclasses.replace(tiny(id_dim=512), base_channels=24, resolution=32)
    m = DiffusionVideoAutoencoder(cfg)
    x, t, z_id, z_lnd = _inputs(1, 32, cfg)
    assert m(x, t, m.face_code(z_id, z_lnd)).shape == x.shape


def test_tiny_parameter_count():
    n = count_parameters(DiffusionVideoAutoencoder(tiny()))
    print(f"tiny preset: {n:,} parameters")
    assert 1_500_000 <= n <= 3_000_000


def test_paper_preset_builds_on_meta_device():
    cfg = paper()
    assert (cfg.resolution, cfg.base_channels, cfg.num_res_blocks) == (256, 128, 2)
    assert cfg.channel_mults == (1, 1, 2, 2, 4, 4)
    assert (cfg.attention_resolutions, cfg.embed_dim, cfg.dropout, cfg.id_dim) == ((16,), 512, 0.1, 512)
    with torch.device("meta"):
        m = DiffusionVideoAutoencoder(cfg)
    # The reference's UNet at 256 px (model/unet.py of the authors' code) without the face-code head, as
    # counted in tests/fixtures/dva_reference/meta.json.
    assert m.unet_parameters() == paper_unet_parameters()
    assert m.face_encoder.in_features == 512 + 102 and m.face_encoder.out_features == 512
    assert m.config is cfg


def test_config_is_frozen_and_presets_registered():
    cfg = tiny()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.resolution = 128
    assert PRESETS["tiny"]() == cfg and PRESETS["paper"](id_dim=128).id_dim == 128
    assert isinstance(cfg, UNetConfig) and cfg.lnd_dim == 102


def test_landmark_standardisation_centres_and_scales_the_head_input():
    torch.manual_seed(0)
    m = DiffusionVideoAutoencoder(tiny())
    features = 0.5 + 0.02 * torch.randn(40, 102)  # a clip's landmarks: near 0.5, moving by hundredths
    z_id = torch.randn(40, 128)
    raw = m.face_code(z_id, features)
    m.standardise_landmarks(features)
    standardised = (features - m.landmark_center) / m.landmark_scale
    assert standardised.mean(dim=0).abs().max() < 1e-5
    assert float(standardised.square().mean().sqrt()) == pytest.approx(1.0, abs=1e-5)
    expected = m.face_encoder(torch.cat([z_id, standardised], dim=-1))
    assert torch.allclose(m.face_code(z_id, features), expected)
    # The same motion now moves the code ~50x further than raw features did.
    moved = features + 0.02
    raw_change = (m.face_encoder(torch.cat([z_id, moved], dim=-1)) - raw).norm()
    assert (m.face_code(z_id, moved) - m.face_code(z_id, features)).norm() > 20 * raw_change
