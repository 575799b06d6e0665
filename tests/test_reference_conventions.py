"""The reference's timestep rule, from `tests/fixtures/reference_conventions/` (outputs of the authors' code).

Inputs and expected values come from the fixture file, so a fixture regenerated with other step counts
works unchanged.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.model.diffusion import REFERENCE_SAMPLER, DDIMScheduler
from pipeline.model.samplers import DDIMSampler, timestep_grid

FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "reference_conventions" / "timesteps.json").read_text())
T = FIXTURE["T"]


@pytest.mark.parametrize("steps", sorted(FIXTURE["timesteps"], key=int))
def test_the_stride_rule_gives_the_references_timesteps(steps):
    assert timestep_grid(int(steps), "stride", T) == FIXTURE["timesteps"][steps]


def test_the_stride_rule_refuses_exactly_the_step_counts_the_reference_refuses():
    refused = set(FIXTURE["refused"])
    for steps in range(1, T + 1):
        if steps in refused:
            with pytest.raises(ValueError, match="nearest usable count"):
                timestep_grid(steps, "stride", T)
        else:
            timestep_grid(steps, "stride", T)


def test_a_reference_sampler_decodes_on_the_references_grid():
    # The grid in decoding order, as the reference's sampler visits it (highest first).
    steps = max(FIXTURE["timesteps"], key=int)
    sampler = DDIMSampler.on_grid(DDIMScheduler.from_settings(REFERENCE_SAMPLER), int(steps), "stride")
    assert sampler.timesteps == FIXTURE["timesteps"][steps][::-1]
