"""Tests of CLIP-guided identity-direction optimisation with a tiny untrained CLIP and a fake autoencoder."""

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from pipeline.editing.editing import l2norm
from pipeline.editing.kinds import TextEdit
from pipeline.editing.text_edit import (
    PROMPT_TEMPLATES,
    _clip_image_features,
    _direction_loss,
    _TextObjective,
    apply_text_direction,
    invert_to_t_start,
    load_clip,
    optimise_text_direction,
    short_timesteps,
    text_direction,
    tiny_clip,
    trajectory_sampler,
)
from pipeline.model.diffusion import DDIMScheduler

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

    inversion_start = "clean"
    num_train_timesteps = 1000

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
    mask[..., : RES // 4, :] = 1  # the L1 term guards the top rows
    return model, x0, z_id, z_lnd, mask


def test_short_timesteps():
    assert short_timesteps(800, 5) == [800, 600, 400, 200, 0]
    assert short_timesteps(500, 1) == [500]


@pytest.mark.parametrize("start, t_start, num_steps, evaluated", [
    # The reference treats the clean frame as the sample at timestep 0: four steps up to 800.
    ("first_timestep", 800, 5, [0, 200, 400, 600]),
    # From the clean image (fed as timestep 0) to 0 first, then up the grid.
    ("clean", 800, 5, [0, 0, 200, 400, 600]),
    # A one-step grid that does not start at 0: one step from the clean frame at 0 up to 500.
    ("first_timestep", 500, 1, [0]),
])
def test_the_trajectory_inversion_follows_the_scheduler(start, t_start, num_steps, evaluated):
    seen = []
    spec = TextEdit(kind="text", target_text="face with a beard", t_start=t_start, num_steps=num_steps)
    sampler = trajectory_sampler(DDIMScheduler(inversion_start=start), spec)
    sampler.invert(lambda x, t: seen.append(int(t[0])) or torch.zeros_like(x), torch.zeros(1, 3, 4, 4))
    assert seen == evaluated
    assert sampler.timesteps == short_timesteps(t_start, num_steps)


@pytest.mark.parametrize("start", ["clean", "first_timestep"])
def test_inversion_then_trajectory_reconstructs(start):
    """With noise predictions that do not depend on x, decoding retraces the inversion exactly.

    Under the reference's convention the clean frame stands for the sample at timestep 0, so it is
    recovered one step before the end of the trajectory (whose last step, 0 -> clean, then denoises it).
    """

    class ConstantEps(nn.Module):
        def face_code(self, z_id, z_lnd):
            return z_id

        def forward(self, x, t, z_face):
            return torch.full_like(x, 0.3)

    gen = torch.Generator().manual_seed(0)
    x0 = torch.rand(1, 3, 8, 8, generator=gen) * 1.6 - 0.8
    spec = TextEdit(kind="text", target_text="face with a beard")
    scheduler = DDIMScheduler(inversion_start=start)
    x = invert_to_t_start(ConstantEps(), scheduler, x0, torch.ones(4), torch.zeros(102), spec)
    ts = short_timesteps(spec.t_start, spec.num_steps)
    steps = list(zip(ts, ts[1:] + [-1]))
    for t, t_prev in steps[:-1] if start == "first_timestep" else steps:
        x = scheduler.step(torch.full_like(x, 0.3), t, t_prev, x)
    torch.testing.assert_close(x, x0, atol=1e-5, rtol=0)


def test_prompt_templates():
    assert len(PROMPT_TEMPLATES) == 79 and len(set(PROMPT_TEMPLATES)) == 79
    assert all(template.count("{}") == 1 for template in PROMPT_TEMPLATES)


def test_text_direction_averages_normalised_template_features():
    clip_model, tokenizer = tiny_clip()
    templates = PROMPT_TEMPLATES[:3]
    with torch.no_grad():
        direction = text_direction(clip_model, tokenizer, "face", "face with a beard", templates)

        def unit(text):
            tokens = tokenizer([template.format(text) for template in templates])
            return F.normalize(clip_model.encode_text(tokens), dim=-1)

        # Normalise each template's features, average target - source, normalise once.
        expected = F.normalize((unit("face with a beard") - unit("face")).mean(dim=0), dim=0)
    torch.testing.assert_close(direction, expected)
    assert direction.shape == (32,)


def test_clip_preprocessing_resizes_the_shorter_side_and_crops_the_centre():
    # Square inputs are checked against the reference in test_clip_reference; here a wide frame.
    clip_model, _ = tiny_clip(image_size=16)
    images = torch.rand(2, 3, 40, 56) * 2 - 1
    with torch.no_grad():
        feats = _clip_image_features(clip_model, images)
        x = F.interpolate((images + 1) / 2, size=(16, 22), mode="bicubic", align_corners=False, antialias=True)
        x = x[..., 3:19]
        mean = torch.tensor(clip_model.visual.preprocess_cfg["mean"]).view(1, 3, 1, 1)
        std = torch.tensor(clip_model.visual.preprocess_cfg["std"]).view(1, 3, 1, 1)
        expected = F.normalize(clip_model.encode_image((x - mean) / std), dim=-1)
    torch.testing.assert_close(feats, expected)


def test_direction_loss_without_any_change_scores_the_embedding():
    text_dir = F.normalize(torch.tensor([1.0, 1.0, 0.0]), dim=0)
    same = F.normalize(torch.tensor([[1.0, 0.0, 0.0]]), dim=-1)
    # No image direction: the reference compares the edited embedding itself with the text direction.
    torch.testing.assert_close(_direction_loss(same, same, text_dir, True), 1 - text_dir[0])
    moved = F.normalize(torch.tensor([[1.0, 0.0, 1.0]]), dim=-1)
    expected = 1 - F.cosine_similarity(moved - same, text_dir[None]).mean()
    torch.testing.assert_close(_direction_loss(moved, same, text_dir, False), expected)


def test_objective_gradient_is_the_reference_loss_gradient(setup, monkeypatch):
    """Step-by-step backward passes give the gradient of the reference's loss over all steps at once."""
    # The untrained CLIP barely reacts to the edit (feature changes of 1e-6 at the last step), so the
    # directions are at the mercy of rounding: keep attention on one code path with and without gradients.
    monkeypatch.setattr(torch.backends.mha, "get_fastpath_enabled", lambda: False)
    model, x0, z_id, z_lnd, mask = setup
    clip_model, tokenizer = tiny_clip(image_size=RES)
    spec = TextEdit(kind="text", target_text="face with a beard", w_clip=3.0, w_id=1.0, w_l1=5.0)
    scheduler = DDIMScheduler()  # real steps, so that the edit moves the images enough for a clear direction
    x_start = invert_to_t_start(model, scheduler, x0, z_id, z_lnd, spec)
    model.requires_grad_(False)
    clip_model.requires_grad_(False)
    objective = _TextObjective(model, scheduler, clip_model, tokenizer, x_start, z_id, z_lnd, spec, mask)
    dz = (0.5 * torch.randn(ID_DIM, generator=torch.Generator().manual_seed(3))).requires_grad_(True)
    loss = objective.backward(dz)
    grad = dz.grad.clone()

    # The reference's loss, written out over all steps in one graph (images encoded one at a time, as
    # batching changes the rounding).
    dz.grad = None
    z_edit = F.normalize(z_id + dz, dim=0)
    face = model.face_code(z_edit[None], z_lnd[None])
    ts = short_timesteps(spec.t_start, spec.num_steps)
    traj = objective.traj
    edited = torch.cat([scheduler.step(model(traj[i], torch.tensor([t]), face), t, t_prev, traj[i])
                        for i, (t, t_prev) in enumerate(zip(ts, ts[1:] + [-1]))])
    original = torch.cat(traj[1:])
    delta = torch.cat([_clip_image_features(clip_model, e[None]) - _clip_image_features(clip_model, o[None])
                       for e, o in zip(edited, original)])
    delta = delta / (delta.norm(dim=-1, keepdim=True) + 1e-7)
    text_dir = text_direction(clip_model, tokenizer, spec.source_text, spec.target_text)
    l_dir = (1 - F.cosine_similarity(delta, text_dir[None], dim=-1)).mean()
    l1 = (original * mask - edited * mask).abs().mean()
    id_loss = 1 - z_edit @ F.normalize(z_id, dim=0)
    full = spec.w_clip * -torch.log((2 - l_dir) / 2) + spec.w_id * id_loss + spec.w_l1 * l1
    full.backward()
    assert loss == pytest.approx(float(full.detach()), rel=1e-4)
    torch.testing.assert_close(grad, dz.grad, rtol=1e-3, atol=1e-6)


def test_mask_shapes(setup):
    model, x0, z_id, z_lnd, _ = setup
    clip_model, tokenizer = tiny_clip(image_size=RES)
    spec = TextEdit(kind="text", target_text="face with a beard", iterations=1)
    bad_masks = [(torch.ones(RES, RES // 2), "mask must have shape"), (torch.full((RES, RES), 2.0), r"\[0, 1\]")]
    for bad, message in bad_masks:
        with pytest.raises(ValueError, match=message):
            optimise_text_direction(model, FakeScheduler(), clip_model, tokenizer, x0, z_id, z_lnd, spec, bad)
    dz, losses = optimise_text_direction(model, FakeScheduler(), clip_model, tokenizer, x0, z_id, z_lnd, spec)
    assert dz.shape == (ID_DIM,) and len(losses) == 1


def test_text_edit_spec_defaults_and_checks():
    spec = TextEdit(kind="text", target_text="face with a beard")
    assert (spec.clip_model, spec.w_clip, spec.w_id, spec.w_l1, spec.lr, spec.iterations) == (
        "ViT-B-16-quickgelu", 3.0, 1.0, 5.0, 0.002, 2000)
    for bad in ({"target_text": "  "}, {"target_text": "face"}, {"target_text": "x", "w_l1": -1.0}):
        with pytest.raises(ValueError):
            TextEdit(kind="text", **bad)


def test_optimisation_lowers_loss(setup):
    model, x0, z_id, z_lnd, mask = setup
    clip_model, tokenizer = tiny_clip(image_size=RES)
    spec = TextEdit(kind="text", target_text="face with a beard", iterations=15)
    x_start = invert_to_t_start(model, FakeScheduler(), x0, z_id, z_lnd, spec)
    dz, losses = optimise_text_direction(
        model, FakeScheduler(), clip_model, tokenizer, x_start, z_id, z_lnd, spec, mask[0, 0]
    )
    assert len(losses) == 15 and all(np.isfinite(losses))
    # The first loss scores unchanged images (no image direction yet), so start the comparison after it.
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
