import pytest
import torch
from torch import nn

from pipeline.model.diffusion import DDIMScheduler
from pipeline.model.losses import EMA, LossTerms, disentangle_loss


class OracleInsideMask(nn.Module):
    """Predicts the true noise inside the mask and a wrong, input-dependent one outside it."""

    def __init__(self, scheduler, x0, mask):
        super().__init__()
        self.scheduler, self.x0, self.mask = scheduler, x0, mask

    def forward(self, x_t, t, z_face):
        reps = x_t.shape[0] // self.x0.shape[0]
        x0, mask = self.x0.repeat(reps, 1, 1, 1), self.mask.repeat(reps, 1, 1, 1)
        a = self.scheduler.alphas_cumprod[t].float().view(-1, 1, 1, 1)
        true_eps = (x_t - a.sqrt() * x0) / (1 - a).sqrt()
        return mask * true_eps + (1 - mask) * 0.3 * x_t


class ConstantModel(nn.Module):
    def __init__(self, value):
        super().__init__()
        self.value = value

    def forward(self, x_t, t, z_face):
        return torch.full_like(x_t, self.value)


@pytest.fixture
def scheduler():
    return DDIMScheduler()


def _batch(seed=0, b=2, res=8):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.rand(b, 3, res, res, generator=g) * 2 - 1
    mask = torch.zeros(b, 1, res, res)
    mask[..., 2:6, 2:6] = 1.0
    t = torch.tensor([100, 700])[:b]
    noise1 = torch.randn(b, 3, res, res, generator=g)
    noise2 = torch.randn(b, 3, res, res, generator=g)
    return x0, mask, t, noise1, noise2


def test_reg_zero_when_predictions_agree_inside_mask(scheduler):
    x0, mask, t, n1, n2 = _batch()
    model = OracleInsideMask(scheduler, x0, mask)
    z_face = torch.zeros(2, 4)
    terms = disentangle_loss(model, scheduler, x0, z_face, mask, t, n1, n2)
    assert isinstance(terms, LossTerms)
    assert terms.reg.item() == pytest.approx(0.0, abs=1e-5)
    # Outside the mask the two clean-image estimates differ, so an all-ones mask sees it.
    full = disentangle_loss(model, scheduler, x0, z_face, torch.ones_like(mask), t, n1, n2)
    assert full.reg.item() > 0.1
    torch.testing.assert_close(full.simple, terms.simple)


def test_simple_is_l1_hand_computed(scheduler):
    x0, mask, t, _, _ = _batch()
    # noise1 alternates 1, -3 and noise2 is 2 everywhere; the model predicts 0.
    noise1 = torch.tensor([1.0, -3.0]).repeat(2 * 3 * 8 * 4).view(2, 3, 8, 8)
    noise2 = torch.full((2, 3, 8, 8), 2.0)
    terms = disentangle_loss(ConstantModel(0.0), scheduler, x0, torch.zeros(2, 4), mask, t, noise1, noise2)
    # L1: mean(|1|, |-3|) + mean|2| = 2 + 2 = 4 (MSE would give 5 + 4 = 9).
    assert terms.simple.item() == pytest.approx(4.0)
    # Same eps for both noisings: x0_hat_1 - x0_hat_2 = (x_t^1 - x_t^2) / sqrt(a) = sqrt((1-a)/a) (n1 - n2).
    a = scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
    expected_reg = (mask * ((1 - a) / a).sqrt() * (noise1 - noise2)).abs().mean()
    assert terms.reg.item() == pytest.approx(expected_reg.item(), rel=1e-4)
    assert terms.total.item() == pytest.approx(4.0 + expected_reg.item(), rel=1e-5)


def test_weights(scheduler):
    x0, mask, t, n1, n2 = _batch()
    base = disentangle_loss(ConstantModel(0.1), scheduler, x0, torch.zeros(2, 4), mask, t, n1, n2)
    weighted = disentangle_loss(
        ConstantModel(0.1), scheduler, x0, torch.zeros(2, 4), mask, t, n1, n2, w_simple=0.5, w_reg=3.0
    )
    assert weighted.total.item() == pytest.approx(0.5 * base.simple.item() + 3.0 * base.reg.item(), rel=1e-5)


def test_loss_backpropagates_to_model(scheduler):
    x0, mask, t, n1, n2 = _batch()
    model = nn.Conv2d(3, 3, 1)
    terms = disentangle_loss(lambda x, tt, z: model(x), scheduler, x0, torch.zeros(2, 4), mask, t, n1, n2)
    terms.total.backward()
    assert model.weight.grad is not None and model.weight.grad.abs().sum() > 0


def test_ema_update_and_copy():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    ema = EMA(model, decay=0.9)
    assert not ema.shadow.training
    assert all(not p.requires_grad for p in ema.shadow.parameters())
    old = {k: v.clone() for k, v in ema.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
        model[1].running_mean.add_(2.0)
        model[1].num_batches_tracked.add_(5)
    ema.update(model)
    new = model.state_dict()
    for k, v in ema.state_dict().items():
        if v.is_floating_point():
            torch.testing.assert_close(v, 0.9 * old[k] + 0.1 * new[k])
        else:
            assert torch.equal(v, new[k])
    # The shadow is a separate copy: the model keeps its own weights until copy_to.
    assert not torch.equal(model[0].weight, ema.shadow[0].weight)
    ema.copy_to(model)
    torch.testing.assert_close(model[0].weight, ema.shadow[0].weight)


def test_ema_state_dict_roundtrip():
    model = nn.Linear(2, 2)
    ema = EMA(model, decay=0.5)
    state = {k: v + 1 for k, v in ema.state_dict().items()}
    other = EMA(model, decay=0.5)
    other.load_state_dict(state)
    for k, v in other.state_dict().items():
        torch.testing.assert_close(v, state[k])
