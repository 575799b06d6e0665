"""Deterministic DDIM sampling and inversion (Song et al. 2021, "Denoising Diffusion Implicit Models").

Notation follows the DDIM paper: ``alpha_t`` there is the cumulative product of ``1 - beta`` (called
``alpha_bar`` / ``alphas_cumprod`` here and in DDPM). Timestep ``-1`` stands for the clean image,
whose ``alpha_bar`` is 1, so the last sampling step lands exactly on ``x_0`` rather than on the
slightly noisy training timestep 0.

Two conventions of the paper's reference code are options of the scheduler (:class:`SamplerSettings`,
stored with every checkpoint): clipping the predicted ``x_0`` to [-1, 1] and re-deriving the noise
from it, and starting the inversion by treating the clean image as ``x`` at the first timestep.

Beside DDIM, whose inversion is only approximate, this module runs BDIA-DDIM (Zhang, Lewis and Kleijn
2023, "Exact diffusion inversion via bi-directional integration approximation"): the same one network
evaluation per step, but each update is an explicit, invertible function of the two latents before
it, so decoding replays the inversion's evaluations backwards and returns the input up to round-off.
This module holds the per-step arithmetic of both; the samplers that loop over a timestep grid are
:mod:`pipeline.model.samplers`.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Literal

import torch

InversionStart = Literal["clean", "first_timestep"]


@dataclass(frozen=True)
class SamplerSettings:
    """The noise schedule and the DDIM conventions a model was trained and is run with.

    ``clip_x0``: clip the predicted clean image to [-1, 1] and re-derive the noise from it (the
    reference, both directions). ``inversion_start``: ``clean`` takes a first step from the clean image
    (alpha_bar 1) to the first timestep, so inversion and decoding use the same S steps; ``first_timestep``
    (the reference) treats the clean image as ``x`` at timestep 0 and inverts in S - 1 steps.
    """

    num_train_timesteps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02
    clip_x0: bool = False
    inversion_start: InversionStart = "clean"

    def to_json(self) -> str:
        """The settings as JSON (for checkpoint metadata)."""
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "SamplerSettings":
        """Inverse of :meth:`to_json`; raises ValueError on unknown fields or values."""
        raw = json.loads(text)
        if not isinstance(raw, dict) or set(raw) - {f.name for f in dataclasses.fields(cls)}:
            raise ValueError(f"not sampler settings: {text[:80]!r}")
        settings = cls(**raw)
        if settings.inversion_start not in ("clean", "first_timestep"):
            raise ValueError(f"unknown inversion_start {settings.inversion_start!r}")
        return settings


REFERENCE_SAMPLER = SamplerSettings(clip_x0=True, inversion_start="first_timestep")


class DDIMScheduler:
    """Linear-beta noise schedule with the deterministic (eta = 0) DDIM update and its inverse.

    Args:
        num_train_timesteps: number of diffusion steps T used in training.
        beta_start: beta_1 of the linear schedule.
        beta_end: beta_T of the linear schedule.
        clip_x0: clip the predicted clean image to [-1, 1] and re-derive the noise (the reference).
        inversion_start: where :meth:`pipeline.model.samplers.Sampler.invert` starts (see :class:`SamplerSettings`).
    """

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
        clip_x0: bool = False,
        inversion_start: InversionStart = "clean",
    ):
        self.num_train_timesteps = num_train_timesteps
        self.clip_x0 = clip_x0
        self.inversion_start = inversion_start
        # float64: the cumulative product over 1000 factors loses digits in float32.
        self.betas = torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float64)
        self.alphas_cumprod = torch.cumprod(1.0 - self.betas, dim=0)
        # Index t + 1 of this table is alpha_bar_t, with alpha_bar_{-1} = 1 (the clean image) at index 0.
        self._alpha_bar_table = torch.cat([torch.ones(1, dtype=torch.float64), self.alphas_cumprod])

    @classmethod
    def from_settings(cls, settings: SamplerSettings) -> "DDIMScheduler":
        """The scheduler a checkpoint's :class:`SamplerSettings` describe."""
        return cls(**dataclasses.asdict(settings))

    def _alpha_bar(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """alpha_bar_t per sample (B,), shaped to broadcast against ``like`` and in its dtype and device."""
        a = self._alpha_bar_table[t.detach().cpu().long() + 1]
        return a.reshape(-1, *([1] * (like.dim() - 1))).to(dtype=like.dtype, device=like.device)

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Sample ``x_t ~ q(x_t | x_0)`` with the given noise; ``t`` is a LongTensor of shape (B,)."""
        a = self._alpha_bar(t, x0)
        # DDIM eq. 4: x_t = sqrt(alpha_t) x_0 + sqrt(1 - alpha_t) eps.
        return a.sqrt() * x0 + (1 - a).sqrt() * noise

    def predict_x0(self, x_t: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Estimate the clean image from ``x_t`` and predicted noise ``eps``; ``t`` has shape (B,)."""
        a = self._alpha_bar(t, x_t)
        # DDIM eq. 9: f_theta(x_t) = (x_t - sqrt(1 - alpha_t) eps) / sqrt(alpha_t).
        return (x_t - (1 - a).sqrt() * eps) / a.sqrt()

    def _move(self, eps: torch.Tensor, x_t: torch.Tensor, t_from: int, t_to: int) -> torch.Tensor:
        """Deterministic DDIM transfer of ``x_t`` from ``t_from`` to ``t_to`` holding ``eps`` fixed."""
        for t in (t_from, t_to):
            if not -1 <= t < self.num_train_timesteps:
                raise ValueError(f"timestep {t} outside [-1, {self.num_train_timesteps - 1}]")
        a_from, a_to = self._alpha_bar_table[t_from + 1], self._alpha_bar_table[t_to + 1]

        def coefficient(value: torch.Tensor) -> torch.Tensor:
            # Computed in float64 and cast once, as the reference does.
            return value.to(dtype=x_t.dtype, device=x_t.device)

        recip, recip_m1 = coefficient((1 / a_from).sqrt()), coefficient((1 / a_from - 1).sqrt())
        # DDIM eq. 9: the clean image implied by eps, f_theta(x_t) = (x_t - sqrt(1 - alpha_t) eps) / sqrt(alpha_t).
        x0 = recip * x_t - recip_m1 * eps
        if self.clip_x0 and t_from >= 0:
            # The reference clips x0 to the image range and re-derives the noise that explains it.
            x0 = x0.clamp(-1, 1)
            eps = (recip * x_t - x0) / recip_m1
        # DDIM eq. 12 with sigma_t = 0: x_to = sqrt(alpha_to) x0_pred + sqrt(1 - alpha_to) eps.
        return coefficient(a_to.sqrt()) * x0 + coefficient((1 - a_to).sqrt()) * eps

    def step(self, eps: torch.Tensor, t: int, t_prev: int, x_t: torch.Tensor) -> torch.Tensor:
        """One generative DDIM step (eta = 0) from ``t`` down to ``t_prev`` (``-1`` = clean image)."""
        if t_prev >= t:
            raise ValueError(f"a generative step must go down in time, got {t} -> {t_prev}")
        return self._move(eps, x_t, t, t_prev)

    def invert_step(self, eps: torch.Tensor, t: int, t_next: int, x_t: torch.Tensor) -> torch.Tensor:
        """One DDIM inversion step from ``t`` up to ``t_next`` (``t = -1`` = clean image).

        The Euler discretisation of the DDIM ODE (eqs. 13-14) run forward in time (section 4.3): the
        same update as eq. 12, so with the same ``eps`` it exactly undoes :meth:`step`.
        """
        if t_next <= t:
            raise ValueError(f"an inversion step must go up in time, got {t} -> {t_next}")
        return self._move(eps, x_t, t, t_next)

    def bdia_step(
        self, eps: torch.Tensor, t_next: int, t: int, t_prev: int, x_next: torch.Tensor, x_t: torch.Tensor,
        gamma: float = 1.0,
    ) -> torch.Tensor:
        """One generative BDIA-DDIM step: ``x_{t_prev}`` from ``x_{t_next}`` and ``x_t``, ``t_next > t > t_prev``.

        ``eps`` is the network's prediction at ``(x_t, t)``. Write ``D(x_t; t -> s)`` for the DDIM
        transfer of ``x_t`` to timestep ``s`` holding ``eps`` fixed (DDIM eq. 12; with ``clip_x0``, the
        clipped version). The exact ODE solution from ``t_next`` to ``t_prev`` is the sum of the two
        integrals over ``[t_next, t]`` and ``[t, t_prev]``. BDIA approximates *both* at the middle
        point ``x_t``, the first by a DDIM step backwards in time:

            (B1)  x_t - x_{t_next}  ~  x_t - D(x_t; t -> t_next)
            (B2)  x_{t_prev} - x_t  ~  D(x_t; t -> t_prev) - x_t

        Adding them, and weighting the backward estimate's disagreement with the known ``x_{t_next}``
        by ``gamma`` (write-ups of BDIA differ on whether this weight is called gamma or 1 - gamma):

            (B3)  x_{t_prev} = D(x_t; t -> t_prev) + gamma * (x_{t_next} - D(x_t; t -> t_next))

        ``gamma = 0`` is plain DDIM; ``gamma = 1`` is the time-symmetric (leapfrog) integrator. Both
        ``D`` terms depend on ``x_t`` only, and ``x_{t_next}`` enters linearly, which is what makes the
        step invertible (:meth:`bdia_invert_step`) whatever ``D`` does to ``x_t`` (clipping included).
        """
        if not t_next > t > t_prev:
            raise ValueError(f"a BDIA step needs t_next > t > t_prev, got {t_next}, {t}, {t_prev}")
        return self._move(eps, x_t, t, t_prev) + gamma * (x_next - self._move(eps, x_t, t, t_next))

    def bdia_invert_step(
        self, eps: torch.Tensor, t_next: int, t: int, t_prev: int, x_t: torch.Tensor, x_prev: torch.Tensor,
        gamma: float = 1.0,
    ) -> torch.Tensor:
        """The exact inverse of :meth:`bdia_step`: ``x_{t_next}`` from ``x_t`` and ``x_{t_prev}``.

        Solving (B3) for ``x_{t_next}``, with the same ``eps`` at ``(x_t, t)``:

            (B4)  x_{t_next} = D(x_t; t -> t_next) + (x_{t_prev} - D(x_t; t -> t_prev)) / gamma

        Exact algebra, no approximation: round-off is the only difference from the forward step.
        """
        if not t_next > t > t_prev:
            raise ValueError(f"a BDIA step needs t_next > t > t_prev, got {t_next}, {t}, {t_prev}")
        if gamma <= 0:
            raise ValueError(f"BDIA inversion needs gamma > 0, got {gamma}")
        return self._move(eps, x_t, t, t_next) + (x_prev - self._move(eps, x_t, t, t_prev)) / gamma
