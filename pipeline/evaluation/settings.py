"""Settings of the `evaluate` step: the optional LPIPS network."""

from __future__ import annotations

from typing import Literal

from pipeline.core.config import Section, WeightsPath


class EvaluateParams(Section):
    """What `dva evaluate` measures beyond the weight-free metrics."""

    # The complete LPIPS network (backbone + linear heads) as one local file; unset: no LPIPS in the
    # metrics (nothing is downloaded, and a made-up backbone would give meaningless figures).
    lpips_weights: WeightsPath | None = None
    lpips_net: Literal["alex", "vgg", "squeeze"] = "alex"
    device: str = "auto"
