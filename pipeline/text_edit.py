"""Text-driven (CLIP) editing of the identity code.

A direction ``dz`` in identity space is optimised on one frame so that decoding with
``l2norm(z_id + dz)`` changes the image the way a text prompt changes ("face" -> "face with a beard"),
measured by a directional CLIP loss on a short DDIM trajectory (the paper's text editing). The video is
then decoded with ``apply_text_direction(z_mean, dz, scale)`` in every frame.

No CLIP weights exist offline: :func:`load_clip` loads them from a local file and never downloads;
:func:`tiny_clip` builds a small untrained CLIP for tests and offline demos.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from open_clip.model import CLIP, set_model_preprocess_cfg
from open_clip.tokenizer import SimpleTokenizer
from tqdm.auto import tqdm

from pipeline.editing import l2norm
from pipeline.errors import MissingWeightsError

Tokenizer = Callable[[list[str]], torch.Tensor]

class MissingClipWeightsError(MissingWeightsError, FileNotFoundError):
    """CLIP weights named by a parameter are not on disk; also a FileNotFoundError."""


@dataclass
class TextEditConfig:
    """Settings of the CLIP direction optimisation; defaults are the reference implementation's.

    The reference uses w_clip 3 (the paper 5). ``t_start`` and ``num_steps`` define the short DDIM
    trajectory (see :func:`short_timesteps`).
    """

    target_text: str
    source_text: str = "face"
    iterations: int = 2000
    lr: float = 0.002
    w_clip: float = 3.0
    w_id: float = 1.0
    w_l1: float = 5.0
    scale: float = 0.5
    num_steps: int = 5
    t_start: int = 800

    def __post_init__(self) -> None:
        if not self.target_text.strip():
            raise ValueError("target_text must not be empty")
        if self.iterations < 1 or self.num_steps < 1:
            raise ValueError(f"iterations and num_steps must be >= 1; got {self.iterations} and {self.num_steps}")
        if self.t_start < 0:
            raise ValueError(f"t_start must be >= 0; got {self.t_start}")
        if self.lr <= 0 or min(self.w_clip, self.w_id, self.w_l1) < 0:
            raise ValueError("lr must be positive and the loss weights non-negative")


def short_timesteps(t_start: int, num_steps: int) -> list[int]:
    """Timesteps of the short trajectory: ``num_steps`` evenly spaced values from ``t_start`` down to 0.

    The trajectory visits ``x_{t_start} -> ... -> x_0 -> clean`` (the last step goes to ``-1``). For
    ``t_start=800, num_steps=5`` this is ``[800, 600, 400, 200, 0]``, the same grid as a full 5-step
    DDIM schedule over T=1000, as in DiffusionCLIP.
    """
    if num_steps == 1:
        return [t_start]
    return [int(round(t_start * i / (num_steps - 1))) for i in reversed(range(num_steps))]


@contextlib.contextmanager
def _frozen(*modules: torch.nn.Module) -> Iterator[None]:
    """Put modules in eval mode without parameter gradients; restore both afterwards."""
    saved = [(m, m.training, [(p, p.requires_grad) for p in m.parameters()]) for m in modules]
    try:
        for m in modules:
            m.eval()
            m.requires_grad_(False)
        yield
    finally:
        for m, training, flags in saved:
            m.train(training)
            for p, flag in flags:
                p.requires_grad_(flag)


def _batch_t(t: int, x: torch.Tensor) -> torch.Tensor:
    return torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)


def _clip_image_features(clip_model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Unit-norm CLIP embeddings of images in [-1, 1], resized and normalised the way the CLIP expects."""
    visual = clip_model.visual
    size = visual.image_size if isinstance(visual.image_size, tuple) else (visual.image_size,) * 2
    cfg = getattr(visual, "preprocess_cfg", None) or {}
    mean = torch.tensor(cfg.get("mean", OPENAI_DATASET_MEAN), device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(cfg.get("std", OPENAI_DATASET_STD), device=images.device).view(1, 3, 1, 1)
    # No clamping: noisy intermediates leave [-1, 1] and clamping would cut their gradient.
    x = (images + 1) / 2
    if tuple(x.shape[-2:]) != tuple(size):
        x = F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=True)
    return F.normalize(clip_model.encode_image((x - mean) / std), dim=-1)


def invert_to_t_start(
    model: torch.nn.Module,
    scheduler,
    x0: torch.Tensor,
    z_id: torch.Tensor | np.ndarray,
    z_lnd: torch.Tensor | np.ndarray,
    cfg: TextEditConfig,
) -> torch.Tensor:
    """DDIM-invert a clean frame ``x0`` (1, 3, H, W) in [-1, 1] to ``x_start`` at ``cfg.t_start``.

    Runs :func:`short_timesteps` backwards with the unedited code ``l2norm(z_id)``, so decoding
    ``x_start`` along the same grid with that code reconstructs ``x0``. Uses ``scheduler.invert_step``.
    """
    device = x0.device
    z0 = F.normalize(torch.as_tensor(z_id, dtype=torch.float32, device=device), dim=0)
    lnd = torch.as_tensor(z_lnd, dtype=torch.float32, device=device)
    ts = short_timesteps(cfg.t_start, cfg.num_steps)[::-1]
    with _frozen(model), torch.no_grad():
        face = model.face_code(z0[None], lnd[None])
        x = x0
        # As in DDIM inversion, eps comes from the current (lower) timestep; the clean image is fed as t=0.
        for t, t_next in zip([-1] + ts[:-1], ts):
            x = scheduler.invert_step(model(x, _batch_t(max(t, 0), x), face), t, t_next, x)
    return x


def optimise_text_direction(
    model: torch.nn.Module,
    scheduler,
    clip_model: torch.nn.Module,
    tokenizer: Tokenizer,
    x_start: torch.Tensor,
    z_id: torch.Tensor | np.ndarray,
    z_lnd: torch.Tensor | np.ndarray,
    mask: torch.Tensor,
    cfg: TextEditConfig,
    progress: bool = False,
) -> tuple[np.ndarray, list[float]]:
    """Optimise an identity-code direction ``dz`` so the decoded frame follows ``cfg.target_text``.

    Args:
        model: the autoencoder; ``model.face_code(z_id (B,D), z_lnd (B,L))`` and ``model(x_t, t, z_face)``.
        scheduler: a :class:`pipeline.diffusion.DDIMScheduler` (``step`` is used).
        clip_model, tokenizer: from :func:`load_clip` or :func:`tiny_clip`, on ``x_start``'s device.
        x_start: (1, 3, H, W), the frame at timestep ``cfg.t_start`` (NOT the full-depth noise map
            ``x_T`` of the video inversion); :func:`invert_to_t_start` computes it from the clean frame.
        z_id: (D,) the video's identity code; z_lnd: (L,) the frame's landmark code.
        mask: (1, 1, H, W) keep mask: 1 where the edit should not change the image (weights the L1 term).
        cfg: loss weights, iterations, trajectory.
        progress: show a progress bar.

    The unedited code is ``l2norm(z_id)``, the code :func:`apply_text_direction` gives for ``dz = 0``, so
    the edited and original trajectories coincide at the start. Each iteration takes, for every step
    ``t -> t_prev`` of the original trajectory, one DDIM step from the ORIGINAL ``x_t`` with the edited
    code ``z' = l2norm(z_id + dz)`` and scores the noisy result against the original step's result:
    ``w_clip * -log((2 - L_dir) / 2) + w_l1 * mean|mask * (edited - original)|`` averaged over steps,
    plus ``w_id * (1 - cos(z', z_id))``; then one Adam step on ``dz`` with the gradient scaled to unit
    norm (the directional loss is singular at ``dz = 0``; see the comment in the loop).

    Returns ``dz`` (D,) float32 and the loss of every iteration (before its update).
    """
    device = x_start.device
    z = torch.as_tensor(z_id, dtype=torch.float32, device=device)
    lnd = torch.as_tensor(z_lnd, dtype=torch.float32, device=device)
    keep = torch.as_tensor(mask, dtype=x_start.dtype, device=device)
    if x_start.dim() != 4 or x_start.shape[:2] != (1, 3):
        raise ValueError(f"x_start must have shape (1, 3, H, W); got {tuple(x_start.shape)}")
    if z.dim() != 1 or lnd.dim() != 1:
        raise ValueError(f"z_id and z_lnd must be 1-D; got shapes {tuple(z.shape)} and {tuple(lnd.shape)}")
    if keep.shape != (1, 1, *x_start.shape[-2:]):
        height, width = x_start.shape[-2:]
        raise ValueError(f"mask must have shape (1, 1, {height}, {width}); got {tuple(keep.shape)}")

    ts = short_timesteps(cfg.t_start, cfg.num_steps)
    steps = list(zip(ts, ts[1:] + [-1]))
    z0 = F.normalize(z, dim=0)
    dz = torch.zeros_like(z, requires_grad=True)
    opt = torch.optim.Adam([dz], lr=cfg.lr)
    losses: list[float] = []
    with _frozen(model, clip_model):
        with torch.no_grad():
            face0 = model.face_code(z0[None], lnd[None])
            traj = [x_start]
            for t, t_prev in steps:
                traj.append(scheduler.step(model(traj[-1], _batch_t(t, x_start), face0), t, t_prev, traj[-1]))
            orig_feats = [_clip_image_features(clip_model, x) for x in traj[1:]]
            tokens = tokenizer([cfg.source_text, cfg.target_text]).to(device)
            text = F.normalize(clip_model.encode_text(tokens), dim=-1)
            text_dir = F.normalize(text[1] - text[0], dim=0)

        for _ in tqdm(range(cfg.iterations), desc="CLIP direction", disable=not progress):
            opt.zero_grad()
            z_edit = F.normalize(z + dz, dim=0)
            id_loss = cfg.w_id * (1 - F.cosine_similarity(z_edit, z, dim=0))
            id_loss.backward()
            total = float(id_loss.detach())
            # One backward per step frees that step's graph before the next: the gradient equals the
            # sum's, with the memory of one model call (what lets this run at 256 px on one GPU).
            for i, (t, t_prev) in enumerate(steps):
                face = model.face_code(F.normalize(z + dz, dim=0)[None], lnd[None])
                x_t = traj[i]
                edited = scheduler.step(model(x_t, _batch_t(t, x_t), face), t, t_prev, x_t)
                img_dir = _clip_image_features(clip_model, edited) - orig_feats[i]
                l_dir = 1 - F.cosine_similarity(img_dir, text_dir[None], dim=-1)
                clip_loss = -torch.log(((2 - l_dir) / 2).clamp_min(1e-6)).mean()
                l1 = (keep * (edited - traj[i + 1])).abs().mean()
                step_loss = (cfg.w_clip * clip_loss + cfg.w_l1 * l1) / len(steps)
                step_loss.backward()
                total += float(step_loss.detach())
            losses.append(total)
            # The directional cosine is singular at dz = 0 (edited == original, a zero image direction),
            # so the first gradients are orders of magnitude larger than later ones, by an amount set by
            # float noise; raw, they would swamp Adam's second moment and stall it for the whole run.
            # Unit-norm gradients keep the per-step size near lr from the first iteration on.
            grad_norm = dz.grad.norm()
            if grad_norm > 0:
                dz.grad /= grad_norm
            opt.step()
    return dz.detach().cpu().numpy().astype(np.float32), losses


def apply_text_direction(z_mean: np.ndarray, dz: np.ndarray, scale: float) -> np.ndarray:
    """The edited video code ``l2norm(z_mean + scale * dz)``; scale 0 gives ``l2norm(z_mean)``."""
    z = np.asarray(z_mean)
    d = np.asarray(dz)
    if z.shape != d.shape or z.ndim != 1:
        raise ValueError(f"z_mean and dz must be 1-D of the same size; got {z.shape} and {d.shape}")
    return l2norm(z.astype(np.float64) + scale * d.astype(np.float64)).astype(np.result_type(z.dtype, np.float32))


def load_clip(
    model_name: str,
    weights_path: Path | str | None,
    param_name: str = "edit.clip_weights",
    device: str | torch.device = "cpu",
) -> tuple[torch.nn.Module, Tokenizer]:
    """Load an open_clip model (e.g. ``"ViT-B-32"``) from a local weights file; return (model, tokenizer).

    Nothing is downloaded: a missing file raises :class:`MissingClipWeightsError` (a FileNotFoundError)
    naming ``param_name`` and the expected path. The tokenizer of the OpenAI-style models is open_clip's
    BPE tokenizer, whose vocabulary ships inside the package; models with a Hugging Face tokenizer would
    need the network and are not supported offline.
    """
    if weights_path is None or not Path(weights_path).is_file():
        raise MissingClipWeightsError(param_name, weights_path)
    model, _, _ = open_clip.create_model_and_transforms(model_name, pretrained=str(weights_path), device=device)
    model.eval()
    return model, open_clip.get_tokenizer(model_name)


def tiny_clip(image_size: int = 32, embed_dim: int = 32, seed: int = 0) -> tuple[CLIP, Tokenizer]:
    """A small untrained CLIP (2-layer, width-64 vision and text towers) and its tokenizer, built offline.

    For tests and offline demos only: its embeddings carry no meaning, but the whole text-editing path
    (tokenisation, CLIP preprocessing, gradients through both towers) runs as with real weights. The
    initial weights come from ``seed`` without touching the global random state.
    """
    vision_cfg = {
        "image_size": image_size, "patch_size": max(image_size // 8, 1), "width": 64, "layers": 2, "head_width": 32
    }
    text_cfg = {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIP(embed_dim=embed_dim, vision_cfg=vision_cfg, text_cfg=text_cfg)
    set_model_preprocess_cfg(
        model, {"size": (image_size, image_size), "mean": OPENAI_DATASET_MEAN, "std": OPENAI_DATASET_STD}
    )
    model.eval()
    return model, SimpleTokenizer(context_length=77)
