"""`conventions:` the one setting that makes every step do what the reference's editing scripts do.

`project` is this project's own choices (exact BDIA inversion, union blend mask, the normalised video
identity...); `reference` reproduces the authors' `editing_classifier.py` / `editing_CLIP.py`; `auto`, the
default, is the checkpoint's own: `reference` for a model imported with `dva import-reference`, `project`
for one trained here (resolved by `dva edit` and `dva batch`, which know the checkpoint before any step;
under DVC, where alignment runs before the model is known, `auto` means `project` and an imported model
asks for an explicit choice).

A convention is a profile of defaults: under `reference`, every setting the profile names takes the
reference's value unless the params file sets it explicitly, so an explicit setting (BDIA, fewer steps)
still wins, and the run's lineage records what ran.
"""

from __future__ import annotations

import copy
from typing import Literal

Conventions = Literal["auto", "project", "reference"]

# The reference's choices, as this project's settings (reference file: what it does).
REFERENCE_PROFILE: dict[str, dict[str, object]] = {
    # editing_classifier.py / editing_CLIP.py: gaussian_filter1d (scipy's default `reflect` edges) of the quad
    # centre (sigma 1) and axes (sigma 3); crop_image() warps the quad to 1024 px with PIL (black outside
    # the frame), saves a JPEG (PIL's default quality 75) that ImageDataset resizes to 256 on loading.
    "align": {"smooth_edges": "reflect", "outside": "black", "warp_size": 1024, "jpeg_quality": 75,
              # face_mask(..., for_video=True): a hard parsed mask.
              "mask_feather": 0.0},
    # --T 1000 through space_timesteps(T, "ddimT"); DDIM (encode_stochastic / render); avg_cond, the raw mean
    # of the per-frame identity codes over all frames, not re-normalised.
    "invert": {"sampler": "ddim", "timestep_spacing": "stride", "steps": 1000, "video_identity": "raw_mean"},
    # paste_bg = edited * mask + original * (1 - mask) in the 256 px crop, then the whole crop pasted back.
    # editing_CLIP.py's L1 term: face_mask(start_img), the parser's image foreground of frame 0.
    "edit": {"blend": "reference", "text_l1_mask": "parsed_image"},
}


def apply_conventions(raw: dict) -> dict:
    """`raw` (a loaded params mapping) with its convention's defaults filled in where it sets nothing.

    `auto` and `project` change nothing: the sections' own defaults are the project's conventions.
    """
    if raw.get("conventions") != "reference":
        return raw
    filled = copy.deepcopy(raw)
    for section, defaults in REFERENCE_PROFILE.items():
        given = filled.get(section)
        if given is None:
            given = {}
        if isinstance(given, dict):
            filled[section] = defaults | given
    return filled
