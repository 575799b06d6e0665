"""Samplers: the deterministic paths between a clean frame and the state it is stored as, as objects.

A sampler is a grid of timesteps plus an update rule. :class:`DDIMSampler` (the paper's) stores the
noise map ``x_T``; its inversion is the usual approximation. :class:`BDIASampler` (BDIA-DDIM, Zhang,
Lewis and Kleijn 2023) stores ``x_T`` and the latent one step below it, and decodes back exactly. Both
take the per-step arithmetic from :class:`pipeline.model.diffusion.DDIMScheduler` (the model's noise
schedule and conventions) and offer one interface: :meth:`Sampler.invert`, :meth:`Sampler.sample`,
the state's shape, its noise maps, the evaluations a frame costs and the config saved with every
inversion (:meth:`Sampler.config`, rebuilt by :func:`sampler_from_config`).

The timestep grid follows a spacing rule (:func:`timestep_grid`): ``even`` takes ``i * T // S``;
``stride`` is the reference's ``space_timesteps(T, "ddimS")``, ``range(0, T, k)`` with the smallest
stride ``k`` giving exactly S steps, and refuses S that no stride gives.
"""

from __future__ import annotations

import functools
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import ClassVar, Literal

import torch
from tqdm.auto import tqdm

from pipeline.model.diffusion import DDIMScheduler

EpsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
TimestepSpacing = Literal["even", "stride"]
TIMESTEP_SPACINGS: tuple[str, ...] = ("even", "stride")
NUM_TRAIN_TIMESTEPS = 1000

# The most BDIA's inversion may multiply float round-off by (gamma ** -(steps - 1)): at 1e4 the demo model
# still reconstructs at 62.6 dB in float32 (S=50, gamma 0.83; benchmarks/sampler_bench.py).
BDIA_MAX_AMPLIFICATION = 1e4
# Damps the mode changed codes excite to under 1% of the change by S = 10 (tests/test_diffusion.py).
BDIA_DEFAULT_GAMMA = 0.5


def batch_timestep(t: int, x: torch.Tensor) -> torch.Tensor:
    """Timestep ``t`` for every sample of the batch ``x``: a LongTensor of shape (B,) on ``x``'s device."""
    return torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)


@functools.cache
def _stride(num_train_timesteps: int, steps: int) -> int | None:
    """The reference's stride: the smallest k in [1, T) with len(range(0, T, k)) == steps, or None."""
    for stride in range(1, num_train_timesteps):
        count = len(range(0, num_train_timesteps, stride))
        if count == steps:
            return stride
        if count < steps:
            return None
    return None


def timestep_grid(steps: int, spacing: TimestepSpacing = "even", num_train_timesteps: int = NUM_TRAIN_TIMESTEPS) -> list[int]:
    """The ``steps`` sampling timesteps in ascending order, by the ``spacing`` rule (see the module doc).

    Raises ValueError for a step count out of range, or one the ``stride`` rule cannot give, naming the
    nearest usable count.
    """
    if not 1 <= steps <= num_train_timesteps:
        raise ValueError(f"steps must be in [1, {num_train_timesteps}], got {steps}")
    if spacing == "even":
        return [i * num_train_timesteps // steps for i in range(steps)]
    if spacing != "stride":
        raise ValueError(f"unknown timestep spacing {spacing!r} (known: {', '.join(TIMESTEP_SPACINGS)})")
    stride = _stride(num_train_timesteps, steps)
    if stride is None:
        usable = [count for count in range(1, num_train_timesteps + 1)
                  if _stride(num_train_timesteps, count) is not None]
        nearest = min(usable, key=lambda count: (abs(count - steps), count))
        raise ValueError(f"the reference's timestep rule has no stride giving {steps} steps out of "
                         f"{num_train_timesteps}; the nearest usable count is {nearest}")
    return list(range(0, num_train_timesteps, stride))


class Sampler(ABC):
    """A deterministic sampler on a timestep grid, over a model's :class:`DDIMScheduler`.

    ``timesteps`` are ascending (``t_1 < ... < t_S``). Decoding visits ``x_{t_S} -> ... -> x_{t_1}`` and
    ends with a step to ``-1``, the clean image (alpha_bar 1), so the last step lands on ``x_0`` itself.
    """

    name: ClassVar[str]
    # Latents a frame's state holds: BDIA needs two to step back exactly.
    state_latents: ClassVar[int]

    def __init__(self, scheduler: DDIMScheduler, timesteps: Sequence[int], spacing: TimestepSpacing = "even"):
        ts = [int(t) for t in timesteps]
        if not ts or any(later <= earlier for earlier, later in zip(ts, ts[1:])):
            raise ValueError(f"timesteps must be given in strictly ascending order, got {ts}")
        if ts[0] < 0 or ts[-1] >= scheduler.num_train_timesteps:
            raise ValueError(f"timesteps must lie in [0, {scheduler.num_train_timesteps}), got {ts}")
        self.scheduler, self.spacing, self._timesteps = scheduler, spacing, ts

    @classmethod
    def on_grid(cls, scheduler: DDIMScheduler, steps: int, spacing: TimestepSpacing = "even", **options) -> "Sampler":
        """The sampler with ``steps`` timesteps spaced by ``spacing`` over the scheduler's T."""
        return cls(scheduler, timestep_grid(steps, spacing, scheduler.num_train_timesteps), spacing, **options)

    @property
    def steps(self) -> int:
        """Number of timesteps S."""
        return len(self._timesteps)

    @property
    def timesteps(self) -> list[int]:
        """The grid in decoding order, descending: ``t_S > ... > t_1``."""
        return self._timesteps[::-1]

    def decoding_steps(self) -> list[tuple[int, int]]:
        """The (t, t_prev) pairs decoding takes, the last one to ``-1`` (the clean image)."""
        ts = self.timesteps
        return list(zip(ts, ts[1:] + [-1]))

    def config(self) -> dict:
        """What an inversion made with this sampler must be decoded with (saved with every inversion)."""
        return {"sampler": self.name, "steps": self.steps, "timestep_spacing": self.spacing,
                "timesteps": self._timesteps}

    def state_shape(self, image_shape: Sequence[int]) -> tuple[int, ...]:
        """Shape of one frame's state for images of ``image_shape`` (C, H, W)."""
        return tuple(image_shape) if self.state_latents == 1 else (self.state_latents, *image_shape)

    def noise_maps(self, state: torch.Tensor) -> torch.Tensor:
        """``x_T`` (B, C, H, W) of a batch of states."""
        return state if self.state_latents == 1 else state[:, 0]

    @abstractmethod
    def evaluations(self) -> tuple[int, int]:
        """Network evaluations per frame: (the first edit, inversion included; each further edit)."""

    @abstractmethod
    def invert(self, eps_fn: EpsFn, x0: torch.Tensor, progress: bool = False) -> torch.Tensor:
        """The state (see :meth:`state_shape`) a batch of clean images (B, C, H, W) decodes from.

        ``eps_fn(x, t)`` takes a LongTensor ``t`` of shape (B,) and closes over any conditioning. Gradients
        are not disabled here; wrap the call in ``torch.inference_mode()`` when none are needed.
        """

    @abstractmethod
    def sample(self, eps_fn: EpsFn, state: torch.Tensor, progress: bool = False) -> torch.Tensor:
        """Clean images decoded from a batch of states of :meth:`invert`."""

    def _inversion_path(self) -> list[int]:
        """The grid ascending, after where the clean image is taken to be: -1 (alpha_bar 1) by default; with
        the reference's ``first_timestep``, timestep 0 (so a grid that starts at 0 needs no extra step)."""
        start = 0 if self.scheduler.inversion_start == "first_timestep" else -1
        return self._timesteps if self._timesteps[0] == start else [start, *self._timesteps]

    def _inversion_evaluations(self) -> int:
        return len(self._inversion_path()) - 1


class DDIMSampler(Sampler):
    """Deterministic DDIM (eta = 0), the paper's sampler; its inversion is the usual approximation."""

    name = "ddim"
    state_latents = 1

    def evaluations(self) -> tuple[int, int]:
        return self._inversion_evaluations() + self.steps, self.steps

    def invert(self, eps_fn: EpsFn, x0: torch.Tensor, progress: bool = False) -> torch.Tensor:
        """``x_T`` by the reverse path of :meth:`sample`, ``eps`` taken at the current (lower) timestep.

        Visits ``clean -> x_{t_1} -> ... -> x_{t_S}``. The clean image is fed to the network as timestep 0
        (it was never trained on -1). With ``inversion_start="first_timestep"`` (the reference) the clean
        image is taken as ``x_0`` itself, so a grid starting at 0 skips the first step.
        """
        path = self._inversion_path()
        x = x0
        for t, t_next in tqdm(list(zip(path, path[1:])), desc="DDIM invert", disable=not progress):
            x = self.scheduler.invert_step(eps_fn(x, batch_timestep(max(t, 0), x)), t, t_next, x)
        return x

    def sample(self, eps_fn: EpsFn, state: torch.Tensor, progress: bool = False) -> torch.Tensor:
        """Decode ``x_T`` with S DDIM steps."""
        x = state
        for t, t_prev in tqdm(self.decoding_steps(), desc="DDIM sample", disable=not progress):
            x = self.scheduler.step(eps_fn(x, batch_timestep(t, x)), t, t_prev, x)
        return x


def lowest_bdia_gamma(steps: int) -> float:
    """The lowest gamma (to 0.01) whose inversion multiplies round-off by at most BDIA_MAX_AMPLIFICATION."""
    return math.ceil(BDIA_MAX_AMPLIFICATION ** (-1 / max(steps - 1, 1)) * 100) / 100


def bdia_gamma(steps: int, gamma: float | None = None, max_amplification: float = BDIA_MAX_AMPLIFICATION) -> float:
    """The gamma BDIA runs with at ``steps``: ``gamma``, or when None 0.5 or the lowest the round-off allows.

    Raises ValueError for fewer than 2 steps or a gamma whose inversion would multiply round-off by more
    than ``max_amplification`` (float32's bound by default; float64 work may allow more).
    """
    if steps < 2:
        raise ValueError(f"BDIA needs at least 2 steps (its state is two latents), got {steps}")
    if gamma is None:
        return max(BDIA_DEFAULT_GAMMA, lowest_bdia_gamma(steps))
    if not 0 < gamma <= 1:
        raise ValueError(f"BDIA's gamma must lie in (0, 1], got {gamma}")
    if gamma ** (1 - steps) > max_amplification:
        raise ValueError(f"bdia_gamma {gamma:g} with {steps} steps: the inversion would multiply round-off by "
                         f"{gamma ** (1 - steps):.1e}; use bdia_gamma >= {lowest_bdia_gamma(steps):g} or fewer steps")
    return gamma


class BDIASampler(Sampler):
    """BDIA-DDIM: each update an explicit, invertible function of the two latents before it.

    ``gamma`` weights the backward half-step (:meth:`DDIMScheduler.bdia_step`). 1 is time-symmetric and
    leaves an undamped alternating mode that changed codes excite (speckled edits); below 1 decoding damps
    it by gamma per step while the inversion divides by gamma. None picks :func:`bdia_gamma`'s default.
    """

    name = "bdia"
    state_latents = 2

    def __init__(self, scheduler: DDIMScheduler, timesteps: Sequence[int], spacing: TimestepSpacing = "even",
                 gamma: float | None = None, max_amplification: float = BDIA_MAX_AMPLIFICATION):
        super().__init__(scheduler, timesteps, spacing)
        self.gamma = bdia_gamma(self.steps, gamma, max_amplification)

    def config(self) -> dict:
        return super().config() | {"bdia_gamma": self.gamma}

    def evaluations(self) -> tuple[int, int]:
        return self._inversion_evaluations() + self.steps - 1, self.steps - 1

    def _path(self) -> list[int]:
        return self.timesteps + [-1]

    def invert(self, eps_fn: EpsFn, x0: torch.Tensor, progress: bool = False) -> torch.Tensor:
        """The pair (``x_T``, ``x_second``) stacked as (B, 2, C, H, W), which :meth:`sample` decodes exactly.

        With path ``p_0 = t_S > ... > p_{S-1} = t_1 > p_S = -1`` and latents ``y_k`` at ``p_k``: ``y_S`` is
        the clean image, ``y_{S-1}`` comes from one DDIM inversion step (or, with
        ``inversion_start="first_timestep"`` and ``t_1 = 0``, is the clean image itself), then (B4) runs the decoding's
        recurrence backwards, evaluating the network at exactly the latents decoding will visit:

            y_{k-1} = bdia_invert_step(eps(y_k, p_k); p_{k-1}, p_k, p_{k+1}; y_k, y_{k+1}),  k = S-1 .. 1
        """
        path, scheduler = self._path(), self.scheduler
        start = self._inversion_path()
        x = x0
        if len(start) > self.steps:
            # One DDIM inversion step from where the clean image is taken to be up to the first timestep.
            x = scheduler.invert_step(eps_fn(x0, batch_timestep(max(start[0], 0), x0)), start[0], start[1], x0)
        after = x0
        for k in tqdm(range(self.steps - 1, 0, -1), desc="BDIA invert", disable=not progress):
            eps = eps_fn(x, batch_timestep(path[k], x))
            after, x = x, scheduler.bdia_invert_step(eps, path[k - 1], path[k], path[k + 1], x, after, self.gamma)
        return torch.stack((x, after), dim=1)

    def sample(self, eps_fn: EpsFn, state: torch.Tensor, progress: bool = False) -> torch.Tensor:
        """Decode the pair of :meth:`invert` with (B3), starting from the stored ``y_0`` and ``y_1``:

            y_{k+1} = bdia_step(eps(y_k, p_k); p_{k-1}, p_k, p_{k+1}; y_{k-1}, y_k),  k = 1 .. S-1

        ``S - 1`` evaluations (a fresh sample would get ``y_1`` by one DDIM step; the stored one is what
        makes the round trip exact).
        """
        path, scheduler = self._path(), self.scheduler
        before, x = state[:, 0], state[:, 1]
        for k in tqdm(range(1, self.steps), desc="BDIA sample", disable=not progress):
            eps = eps_fn(x, batch_timestep(path[k], x))
            before, x = x, scheduler.bdia_step(eps, path[k - 1], path[k], path[k + 1], before, x, self.gamma)
        return x


SAMPLERS: dict[str, type[Sampler]] = {sampler.name: sampler for sampler in (DDIMSampler, BDIASampler)}


def build_sampler(scheduler: DDIMScheduler, name: str, steps: int, spacing: TimestepSpacing = "even",
                  bdia_gamma: float | None = None) -> Sampler:
    """The sampler ``name`` with ``steps`` timesteps by ``spacing``; ValueError for settings it refuses."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r} (known: {', '.join(SAMPLERS)})")
    options = {"gamma": bdia_gamma} if name == BDIASampler.name else {}
    return SAMPLERS[name].on_grid(scheduler, steps, spacing, **options)


def sampler_from_config(scheduler: DDIMScheduler, config: dict) -> Sampler:
    """The sampler an inversion's saved :meth:`Sampler.config` describes.

    Inversions written before the sampler was recorded are DDIM; before the spacing was, ``even``.
    """
    sampler = build_sampler(scheduler, config.get("sampler", DDIMSampler.name), int(config["steps"]),
                            config.get("timestep_spacing", "even"), config.get("bdia_gamma"))
    if "timesteps" in config and [int(t) for t in config["timesteps"]] != sampler.timesteps[::-1]:
        raise ValueError(f"saved timesteps {config['timesteps']} differ from the {sampler.spacing} grid of "
                         f"{sampler.steps} steps")
    return sampler
