import math

import pytest
import torch

from pipeline.diffusion import DDIMScheduler, ddim_invert, ddim_sample


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
    ts = scheduler.timesteps(50)
    assert ts == list(range(980, -1, -20))
    assert scheduler.timesteps(1000) == list(range(999, -1, -1))
    assert scheduler.timesteps(3) == [666, 333, 0]
    with pytest.raises(ValueError):
        scheduler.timesteps(0)


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
