"""Training objective of Diffusion Video Autoencoders and an EMA of the model weights."""

from __future__ import annotations

import copy
from typing import NamedTuple

import torch
from torch import nn

from pipeline.model.diffusion import DDIMScheduler


class LossTerms(NamedTuple):
    """Weighted total loss and its two unweighted parts."""

    total: torch.Tensor
    simple: torch.Tensor
    reg: torch.Tensor


def disentangle_loss(
    model: nn.Module,
    scheduler: DDIMScheduler,
    x0: torch.Tensor,
    z_face: torch.Tensor,
    mask: torch.Tensor,
    t: torch.Tensor,
    noise1: torch.Tensor,
    noise2: torch.Tensor,
    *,
    w_simple: float = 1.0,
    w_reg: float = 1.0,
) -> LossTerms:
    """Denoising loss with the paper's disentanglement regulariser (Kim et al. 2023).

    The same frame is noised twice at the same ``t``. ``L_simple`` is the L1 noise-prediction error of
    both; ``L_reg`` is the mean absolute difference of the two clean-image estimates inside the face
    ``mask`` (B, 1, H, W): if they agree, the face must come from ``z_face`` rather than from the noise.
    """
    batch = x0.shape[0]
    x_t = torch.cat([scheduler.add_noise(x0, noise1, t), scheduler.add_noise(x0, noise2, t)])
    t2 = torch.cat([t, t])
    # One forward pass over both noisings; GroupNorm keeps samples independent, so this equals two passes.
    # The loss is computed in float32 whatever dtype autocast gave the model output.
    eps_hat = model(x_t, t2, torch.cat([z_face, z_face])).float()
    e1_hat, e2_hat = eps_hat[:batch], eps_hat[batch:]
    simple = (noise1.float() - e1_hat).abs().mean() + (noise2.float() - e2_hat).abs().mean()
    x0_hat = scheduler.predict_x0(x_t.float(), eps_hat, t2)
    reg = (mask.float() * (x0_hat[:batch] - x0_hat[batch:])).abs().mean()
    return LossTerms(total=w_simple * simple + w_reg * reg, simple=simple, reg=reg)


class EMA:
    """Exponential moving average of a model's parameters and floating-point buffers.

    ``shadow`` is a frozen deep copy in eval mode; pass the unwrapped module (not a DDP wrapper)
    to :meth:`update`.
    """

    def __init__(self, model: nn.Module, decay: float):
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"decay must be in [0, 1], got {decay}")
        self.decay = decay
        self.shadow = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the shadow towards ``model``: ``shadow = decay * shadow + (1 - decay) * model``."""
        for s, p in zip(self.shadow.parameters(), model.parameters()):
            s.lerp_(p.detach(), 1.0 - self.decay)
        for s, b in zip(self.shadow.buffers(), model.buffers()):
            # Integer buffers (e.g. batch counters) cannot be averaged; track the latest value.
            if s.is_floating_point():
                s.lerp_(b, 1.0 - self.decay)
            else:
                s.copy_(b)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The shadow model's state dict (flat name -> tensor, suitable for safetensors)."""
        return self.shadow.state_dict()

    def load_state_dict(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Restore the shadow weights from :meth:`state_dict` output."""
        self.shadow.load_state_dict(state_dict)

    def copy_to(self, model: nn.Module) -> None:
        """Overwrite ``model``'s weights with the averaged ones."""
        model.load_state_dict(self.shadow.state_dict())
