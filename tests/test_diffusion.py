import dataclasses
import math

import pytest
import torch

from pipeline.model.diffusion import REFERENCE_SAMPLER, DDIMScheduler, SamplerSettings
from pipeline.model.samplers import BDIASampler, DDIMSampler, build_sampler, sampler_from_config, timestep_grid
from pipeline.model.unet import DiffusionVideoAutoencoder, tiny


def invert(eps_fn, x0, scheduler, steps, name="ddim", gamma=None):
    return build_sampler(scheduler, name, steps, bdia_gamma=gamma).invert(eps_fn, x0)


def sample(eps_fn, state, scheduler, steps, name="ddim", gamma=None):
    return build_sampler(scheduler, name, steps, bdia_gamma=gamma).sample(eps_fn, state)


def ddim_invert(eps_fn, x0, scheduler, steps):
    return DDIMSampler.on_grid(scheduler, steps).invert(eps_fn, x0)


def ddim_sample(eps_fn, x_T, scheduler, steps, progress=False):
    return DDIMSampler.on_grid(scheduler, steps).sample(eps_fn, x_T, progress)


@pytest.fixture
def scheduler():
    return DDIMScheduler()


def test_alphas_cumprod_golden_values(scheduler):
    a = scheduler.alphas_cumprod
    assert a.dtype == torch.float64 and a.shape == (1000,)
    # beta_0 = 1e-4, so alpha_bar_0 = 1 - 1e-4.
    assert a[0].item() == pytest.approx(1 - 1e-4, abs=1e-15)
    # beta_1 = 1e-4 + (0.02 - 1e-4) / 999 = 1.19919...e-4, so alpha_bar_1 = 0.9999 * (1 - beta_1) = 0.99978009...
    assert a[1].item() == pytest.approx((1 - 1e-4) * (1 - (1e-4 + (0.02 - 1e-4) / 999)), abs=1e-15)
    assert a[1].item() == pytest.approx(0.99978009207, abs=1e-11)
    # log alpha_bar_999 = sum log(1 - beta_i) ~ -sum beta - sum beta^2 / 2 - sum beta^3 / 3
    #   sum beta   = 1000 * (1e-4 + 0.02) / 2                      = 10.05
    #   sum beta^2 = 1000 * (a^2 + ab + b^2) / 3, a=1e-4, b=0.02   ~ 0.134003
    #   sum beta^3 = 1000 * (a + b)(a^2 + b^2) / 4                 ~ 0.0020101
    # so alpha_bar_999 ~ exp(-10.05 - 0.0670015 - 0.00067) = exp(-10.11767) ~ 4.0358e-5.
    assert a[999].item() == pytest.approx(math.exp(-10.05 - 0.134003 / 2 - 0.0020101 / 3), rel=1e-4)
    assert a[999].item() == pytest.approx(4.0358e-5, rel=1e-4)


def test_timesteps(scheduler):
    ts = DDIMSampler.on_grid(scheduler, 50).timesteps
    assert ts == list(range(980, -1, -20))
    assert DDIMSampler.on_grid(scheduler, 1000).timesteps == list(range(999, -1, -1))
    assert DDIMSampler.on_grid(scheduler, 3).timesteps == [666, 333, 0]
    with pytest.raises(ValueError):
        timestep_grid(0)


def test_the_stride_rule_is_the_references():
    # S = 30: stride 34 (range(0, 1000, 33) has 31 elements); S = 7: stride 143; S = 1000 / S where S divides.
    assert timestep_grid(30, "stride") == list(range(0, 1000, 34))
    assert timestep_grid(7, "stride") == [0, 143, 286, 429, 572, 715, 858]
    assert timestep_grid(50, "stride") == timestep_grid(50, "even") == list(range(0, 1000, 20))
    # No stride gives 1 step (the smallest stride tried is T - 1, giving 2) or 37.
    for steps in (1, 37):
        with pytest.raises(ValueError, match="nearest usable count"):
            timestep_grid(steps, "stride")


def test_add_noise_predict_x0_consistent(scheduler):
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(4, 3, 8, 8, generator=g)
    noise = torch.randn(4, 3, 8, 8, generator=g)
    t = torch.tensor([0, 1, 500, 999])
    x_t = scheduler.add_noise(x0, noise, t)
    a = scheduler.alphas_cumprod[t].float().view(-1, 1, 1, 1)
    torch.testing.assert_close(x_t, a.sqrt() * x0 + (1 - a).sqrt() * noise)
    torch.testing.assert_close(scheduler.predict_x0(x_t, noise, t), x0, atol=1e-3, rtol=1e-4)


def test_dtype_and_clean_endpoint(scheduler):
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 3, 4, 4, generator=g).bfloat16()
    eps = torch.randn(2, 3, 4, 4, generator=g).bfloat16()
    assert scheduler.step(eps, 500, 480, x).dtype == torch.bfloat16
    # Stepping to t = -1 (alpha_bar = 1) returns exactly the predicted clean image.
    x64 = x.double()
    eps64 = eps.double()
    torch.testing.assert_close(
        scheduler.step(eps64, 500, -1, x64), scheduler.predict_x0(x64, eps64, torch.tensor([500, 500]))
    )


def test_step_then_invert_roundtrip(scheduler):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, 8, 8, generator=g)
    eps = torch.randn(2, 3, 8, 8, generator=g)
    for t, t_prev in [(980, 960), (20, 0), (0, -1), (999, -1)]:
        back = scheduler.invert_step(eps, t_prev, t, scheduler.step(eps, t, t_prev, x))
        torch.testing.assert_close(back, x, atol=1e-5, rtol=1e-5)


def test_step_direction_checked(scheduler):
    x = torch.zeros(1, 1, 2, 2)
    with pytest.raises(ValueError):
        scheduler.step(x, 10, 20, x)
    with pytest.raises(ValueError):
        scheduler.invert_step(x, 20, 10, x)


@pytest.mark.parametrize("dtype, atol", [(torch.float64, 1e-10), (torch.float32, 2e-4)])
def test_invert_then_sample_roundtrip(scheduler, dtype, atol):
    # Exact up to rounding. float32 cannot do much better than 1e-5 here: x_980 keeps x_0 only at the
    # scale sqrt(alpha_bar_980) ~ 0.007, so one float32 ulp of x_980 is already ~1e-5 of x_0.
    g = torch.Generator().manual_seed(1)
    x0 = (torch.rand(2, 3, 8, 8, generator=g) * 2 - 1).to(dtype)
    const = (torch.randn(2, 3, 8, 8, generator=g) * 0.5).to(dtype)
    seen = []

    def eps_fn(x, t):
        assert t.dtype == torch.long and t.shape == (2,)
        seen.append(int(t[0]))
        return const

    x_T = ddim_invert(eps_fn, x0, scheduler, 50)
    # The clean image is evaluated as timestep 0, then each step uses its lower timestep: 0, 20, ..., 960.
    assert seen == [0] + list(range(0, 980, 20))
    assert x_T.dtype == dtype and not torch.allclose(x_T, x0)
    seen.clear()
    x_rec = ddim_sample(eps_fn, x_T, scheduler, 50)
    assert seen == list(range(980, -1, -20))
    torch.testing.assert_close(x_rec, x0, atol=atol, rtol=0)


def test_sample_then_invert_roundtrip(scheduler):
    g = torch.Generator().manual_seed(2)
    x_T = torch.randn(1, 3, 8, 8, generator=g)
    const = torch.randn(1, 3, 8, 8, generator=g)
    x0 = ddim_sample(lambda x, t: const, x_T, scheduler, 10, progress=True)
    torch.testing.assert_close(ddim_invert(lambda x, t: const, x0, scheduler, 10), x_T, atol=1e-5, rtol=1e-5)


def test_zero_noise_model_inverts_to_scaled_image(scheduler):
    # With eps = 0 the DDIM path is x_t = sqrt(alpha_bar_t) x_0 at every step.
    x0 = torch.randn(1, 3, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    x_T = ddim_invert(lambda x, t: torch.zeros_like(x), x0, scheduler, 50)
    torch.testing.assert_close(x_T, scheduler.alphas_cumprod[980].sqrt() * x0)


# ----------------------------------------------------------------------------------------------
# BDIA-DDIM: exact inversion


@pytest.mark.parametrize("settings", [SamplerSettings(), REFERENCE_SAMPLER])
@pytest.mark.parametrize("gamma", [1.0, 0.5])
def test_bdia_invert_step_undoes_bdia_step(settings, gamma):
    scheduler = DDIMScheduler.from_settings(settings)
    g = torch.Generator().manual_seed(6)
    x_next, x_t, eps = (torch.randn(2, 3, 8, 8, generator=g, dtype=torch.float64) * 2 for _ in range(3))
    for t_next, t, t_prev in [(980, 960, 940), (200, 100, 0), (100, 0, -1)]:
        x_prev = scheduler.bdia_step(eps, t_next, t, t_prev, x_next, x_t, gamma)
        back = scheduler.bdia_invert_step(eps, t_next, t, t_prev, x_t, x_prev, gamma)
        torch.testing.assert_close(back, x_next, atol=1e-10, rtol=0)


def test_bdia_with_gamma_zero_is_a_ddim_step(scheduler):
    g = torch.Generator().manual_seed(7)
    x_next, x_t, eps = (torch.randn(1, 3, 4, 4, generator=g) for _ in range(3))
    torch.testing.assert_close(scheduler.bdia_step(eps, 600, 400, 200, x_next, x_t, 0.0),
                               scheduler.step(eps, 400, 200, x_t))


def random_unet(dtype: torch.dtype = torch.float32):
    """A 32 px `tiny` UNet whose zero-initialised output layers are given small random weights."""
    model = DiffusionVideoAutoencoder(dataclasses.replace(tiny(), resolution=32)).eval()
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for parameter in model.parameters():
            if not parameter.abs().max() > 0:
                parameter.add_(torch.randn(parameter.shape, generator=g) * 0.005)
    z_face = torch.randn(2, model.config.embed_dim, generator=torch.Generator().manual_seed(2))
    return model.to(dtype), z_face.to(dtype)


@pytest.mark.parametrize("settings", [SamplerSettings(), REFERENCE_SAMPLER], ids=["clean", "reference"])
@pytest.mark.parametrize("dtype, atol", [(torch.float32, 1e-4), (torch.float64, 1e-10)])
def test_bdia_invert_then_sample_is_exact_with_a_random_unet(settings, dtype, atol):
    # A random UNet is nothing like a trained denoiser: DDIM's round trip misses by whole image ranges.
    # BDIA's is exact algebra up to round-off: observed 3e-5 (float32) and 5e-14 (float64) without
    # clipping, 1e-5 and 5e-14 with the reference's.
    scheduler = DDIMScheduler.from_settings(settings)
    model, z_face = random_unet(dtype)
    x0 = (torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 2 - 1).to(dtype)
    calls = []

    def eps_fn(x, t):
        calls.append((x.clone(), int(t[0])))
        return model(x, t, z_face)

    clipped = []
    with torch.inference_mode():
        state = invert(eps_fn, x0, scheduler, 10, "bdia")
        inverted, calls[:] = list(calls), []
        x_rec = sample(eps_fn, state, scheduler, 10, "bdia")
        ddim = sample(eps_fn, invert(eps_fn, x0, scheduler, 10), scheduler, 10)
        for x, t in inverted:
            x0_pred = scheduler.predict_x0(x, model(x, torch.full((2,), t), z_face), torch.full((2,), t))
            clipped.append(bool((x0_pred.abs() > 1).any()))
    assert state.shape == (2, 2, 3, 32, 32) and state.dtype == dtype
    torch.testing.assert_close(BDIASampler.on_grid(scheduler, 10).noise_maps(state), state[:, 0])
    first = settings.inversion_start == "clean"
    # Inversion: the clean image (DDIM start, only with inversion_start "clean"), then 0, 100, ..., 800.
    assert [t for _, t in inverted] == [0] * first + list(range(0, 900, 100))
    # Decoding replays the same evaluations in reverse, on the same latents; never the top one, x_900.
    assert [t for _, t in calls[:9]] == list(range(800, -1, -100))
    for (x_inv, _), (x_dec, _) in zip(inverted[first:][::-1], calls[:9]):
        torch.testing.assert_close(x_dec, x_inv, atol=atol, rtol=0)
    # Evaluations per frame: (first edit = inversion + one decoding, each further edit).
    assert BDIASampler.on_grid(scheduler, 10).evaluations() == (9 + first + 9, 9)
    assert DDIMSampler.on_grid(scheduler, 10).evaluations() == (9 + first + 10, 10)
    torch.testing.assert_close(x_rec, x0, atol=atol, rtol=0)
    assert (ddim - x0).abs().max() > 0.5
    # The replayed evaluations predicted clean images outside [-1, 1]: under the reference's
    # conventions the clipping was active, and the round trip stayed exact.
    assert any(clipped)


def test_bdia_decoding_follows_the_codes():
    scheduler = DDIMScheduler()
    model, z_face = random_unet()
    x0 = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.inference_mode():
        state = invert(lambda x, t: model(x, t, z_face), x0, scheduler, 10, "bdia")
        other = sample(lambda x, t: model(x, t, z_face.flip(0)), state, scheduler, 10, "bdia")
    assert (other - x0).abs().mean() > 1e-2


def point_mass_denoiser(scheduler: DDIMScheduler, mu: torch.Tensor):
    """The exact eps of data that is the single image `mu`: every DDIM step predicts x0 = mu."""
    def eps(x, t):
        a = scheduler._alpha_bar(t, x)
        return (x - a.sqrt() * mu) / (1 - a).sqrt()
    return eps


@pytest.mark.parametrize("steps", [5, 10, 20])
def test_bdia_decoding_with_new_codes_lands_where_they_lead_only_when_damped(scheduler, steps):
    # Invert image A under a denoiser whose data is A, decode under one whose data is B (a changed code):
    # the ODE of B leads every x_T to B, and so does DDIM. BDIA's gamma = 1 (leapfrog) leaves the mode
    # that the mismatch excites undamped and overshoots by more than the change itself at S <= 10
    # (computed: 12x, 2.2x, 0.61x the change at S = 5, 10, 20); gamma = 0.5 damps it to 0.76x, 0.0044x, 1e-6x.
    g = torch.Generator().manual_seed(0)
    image_a = torch.rand(1, 3, 8, 8, generator=g, dtype=torch.float64) * 2 - 1
    image_b = image_a + 0.2 * torch.randn(1, 3, 8, 8, generator=g, dtype=torch.float64)
    change = (image_b - image_a).abs().mean()
    miss = {}
    for gamma in (1.0, 0.5):
        # float64 throughout: the round-off bound that guards float32 inversions does not apply.
        sampler = BDIASampler.on_grid(scheduler, steps, gamma=gamma, max_amplification=math.inf)
        state = sampler.invert(point_mass_denoiser(scheduler, image_a), image_a)
        decoded = sampler.sample(point_mass_denoiser(scheduler, image_b), state)
        miss[gamma] = float((decoded - image_b).abs().mean() / change)
    ddim_state = invert(point_mass_denoiser(scheduler, image_a), image_a, scheduler, steps)
    torch.testing.assert_close(sample(point_mass_denoiser(scheduler, image_b), ddim_state, scheduler, steps), image_b)
    assert miss[1.0] > 0.5
    assert miss[0.5] < 0.1 * miss[1.0]
    if steps >= 10:
        assert miss[0.5] < 0.01


def test_bdia_needs_two_steps_and_samplers_are_named(scheduler):
    x = torch.zeros(1, 3, 4, 4)
    with pytest.raises(ValueError, match="at least 2 steps"):
        invert(lambda x, t: x, x, scheduler, 1, "bdia")
    with pytest.raises(ValueError, match="unknown sampler"):
        sample(lambda x, t: x, x, scheduler, 5, "euler")
    with pytest.raises(ValueError, match="t_next > t > t_prev"):
        scheduler.bdia_step(x, 100, 200, 0, x, x)
    assert DDIMSampler.on_grid(scheduler, 5).state_shape((3, 8, 8)) == (3, 8, 8)
    assert BDIASampler.on_grid(scheduler, 5).state_shape((3, 8, 8)) == (2, 3, 8, 8)


def test_a_sampler_is_rebuilt_from_the_config_an_inversion_saves(scheduler):
    sampler = build_sampler(scheduler, "bdia", 7, "stride")
    config = sampler.config()
    assert config == {"sampler": "bdia", "steps": 7, "timestep_spacing": "stride",
                      "timesteps": [0, 143, 286, 429, 572, 715, 858], "bdia_gamma": 0.5}
    rebuilt = sampler_from_config(scheduler, config)
    assert type(rebuilt) is BDIASampler and rebuilt.config() == config
    # Inversions written before the sampler was recorded are DDIM on the even grid.
    assert sampler_from_config(scheduler, {"steps": 10}).config()["timesteps"] == list(range(0, 1000, 100))
    with pytest.raises(ValueError, match="differ"):
        sampler_from_config(scheduler, config | {"timesteps": [0, 100]})


def test_the_readmes_sampler_table_counts_evaluations_as_the_samplers_do():
    # The demo model's conventions (inversion from the clean image); gamma does not change the counts.
    import re

    from tests.conftest import REPO_ROOT

    rows = re.findall(r"^\| (ddim|bdia)[^|]* \| (\d+) \| (\d+) / (\d+) \|", (REPO_ROOT / "README.md").read_text(), re.M)
    assert len(rows) >= 4
    for name, steps, first, further in rows:
        sampler = build_sampler(DDIMScheduler(), name, int(steps), bdia_gamma=1.0 if name == "bdia" else None)
        assert sampler.evaluations() == (int(first), int(further)), (name, steps)
