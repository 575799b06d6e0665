"""Text-driven (CLIP) editing of the identity code.

A direction ``dz`` in identity space is optimised on the video's first face frame so that decoding with
``l2norm(z + dz)`` changes the image the way a text prompt changes ("face" -> "face with a beard"),
measured by a directional CLIP loss on a short DDIM trajectory (the paper's text editing). The video is
then decoded with ``apply_text_direction(z_mean, dz, scale)`` in every frame. The conventions (text
features averaged over :data:`PROMPT_TEMPLATES`, the CLIP input preprocessing, the loss and the L1 mask)
are the reference implementation's; the settings are :class:`pipeline.editing.kinds.text.TextEdit`
(read here through :class:`TextEditSettings`).

No CLIP weights exist offline: :func:`load_clip` loads them from a local file and never downloads;
:func:`tiny_clip` builds a small untrained CLIP for tests and offline demos.
"""

from __future__ import annotations

import contextlib
import logging
import math
import warnings
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Callable, Iterator, Protocol

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from open_clip.model import CLIP, set_model_preprocess_cfg
from open_clip.tokenizer import SimpleTokenizer
from safetensors import SafetensorError
from safetensors.torch import load_file
from tqdm.auto import tqdm

from pipeline.core.errors import InputError, MissingWeightsError
from pipeline.editing.editing import l2norm
from pipeline.model.diffusion import DDIMScheduler
from pipeline.model.reference_import import read_lightning_state
from pipeline.model.samplers import DDIMSampler, batch_timestep

Tokenizer = Callable[[list[str]], torch.Tensor]


class TextEditSettings(Protocol):
    """The settings of a text edit this module reads (the schema is `pipeline/editing/kinds/text.py`)."""

    source_text: str
    target_text: str
    iterations: int
    lr: float
    w_clip: float
    w_id: float
    w_l1: float
    num_steps: int
    t_start: int

# The prompt templates over which the reference averages text features: `imagenet_templates` of the
# reference's `utils/text_templates.py`, the list `losses/clip_loss.py` fills for every text (CLIP's ImageNet
# zero-shot prompts, 79, in the reference's order; tests/fixtures/clip_reference holds its tokens).
PROMPT_TEMPLATES: tuple[str, ...] = (
    "a bad photo of a {}.", "a sculpture of a {}.", "a photo of the hard to see {}.",
    "a low resolution photo of the {}.", "a rendering of a {}.", "graffiti of a {}.", "a bad photo of the {}.",
    "a cropped photo of the {}.", "a tattoo of a {}.", "the embroidered {}.", "a photo of a hard to see {}.",
    "a bright photo of a {}.", "a photo of a clean {}.", "a photo of a dirty {}.", "a dark photo of the {}.",
    "a drawing of a {}.", "a photo of my {}.", "the plastic {}.", "a photo of the cool {}.",
    "a close-up photo of a {}.", "a black and white photo of the {}.", "a painting of the {}.",
    "a painting of a {}.", "a pixelated photo of the {}.", "a sculpture of the {}.", "a bright photo of the {}.",
    "a cropped photo of a {}.", "a plastic {}.", "a photo of the dirty {}.", "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.", "a photo of the {}.", "a good photo of the {}.", "a rendering of the {}.",
    "a {} in a video game.", "a photo of one {}.", "a doodle of a {}.", "a close-up photo of the {}.",
    "a photo of a {}.", "the origami {}.", "the {} in a video game.", "a sketch of a {}.", "a doodle of the {}.",
    "a origami {}.", "a low resolution photo of a {}.", "the toy {}.", "a rendition of the {}.",
    "a photo of the clean {}.", "a photo of a large {}.", "a rendition of a {}.", "a photo of a nice {}.",
    "a photo of a weird {}.", "a blurry photo of a {}.", "a cartoon {}.", "art of a {}.", "a sketch of the {}.",
    "a embroidered {}.", "a pixelated photo of a {}.", "itap of the {}.", "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.", "a plushie {}.", "a photo of the nice {}.", "a photo of the small {}.",
    "a photo of the weird {}.", "the cartoon {}.", "art of the {}.", "a drawing of the {}.",
    "a photo of the large {}.", "a black and white photo of a {}.", "the plushie {}.", "a dark photo of a {}.",
    "itap of a {}.", "graffiti of the {}.", "a toy {}.", "itap of my {}.", "a photo of a cool {}.",
    "a photo of a small {}.", "a tattoo of the {}.",
)


class MissingClipWeightsError(MissingWeightsError, FileNotFoundError):
    """CLIP weights named by a parameter are not on disk; also a FileNotFoundError."""


def short_timesteps(t_start: int, num_steps: int) -> list[int]:
    """Timesteps of the short trajectory: ``num_steps`` evenly spaced values from ``t_start`` down to 0.

    The trajectory visits ``x_{t_start} -> ... -> x_0 -> clean`` (the last step goes to ``-1``). For
    ``t_start=800, num_steps=5`` this is ``[800, 600, 400, 200, 0]``, the same grid as a full 5-step
    DDIM schedule over T=1000, as in DiffusionCLIP.
    """
    if num_steps == 1:
        return [t_start]
    return [int(round(t_start * i / (num_steps - 1))) for i in reversed(range(num_steps))]


def trajectory_sampler(scheduler: DDIMScheduler, spec: TextEditSettings) -> DDIMSampler:
    """The DDIM sampler of the short trajectory :func:`short_timesteps`, over the model's scheduler.

    Its inversion follows the scheduler's convention: from the clean image (``clean``), or with the clean
    frame taken as the sample at timestep 0 (``first_timestep``, the reference: four steps for the defaults).
    """
    return DDIMSampler(scheduler, short_timesteps(spec.t_start, spec.num_steps)[::-1])


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


def text_direction(
    clip_model: torch.nn.Module,
    tokenizer: Tokenizer,
    source_text: str,
    target_text: str,
    templates: Sequence[str] = PROMPT_TEMPLATES,
) -> torch.Tensor:
    """Unit CLIP text direction from ``source_text`` to ``target_text``, shape (E,).

    The reference's convention: every template filled with each text is encoded and L2-normalised, the
    per-template differences target - source are averaged, and the mean is normalised once.
    """
    device = next(clip_model.parameters()).device

    def features(text: str) -> torch.Tensor:
        tokens = tokenizer([template.format(text) for template in templates]).to(device)
        return F.normalize(clip_model.encode_text(tokens), dim=-1)

    direction = (features(target_text) - features(source_text)).mean(dim=0)
    norm = direction.norm()
    if not norm > 0:
        raise ValueError(f"the texts {source_text!r} and {target_text!r} give no CLIP direction")
    return direction / norm


def _clip_input(clip_model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The CLIP input of images in [-1, 1], preprocessed as the reference's ``CLIPLoss.preprocess`` does.

    [-1, 1] -> [0, 1] without clamping (noisy intermediates leave the range and clamping would cut their
    gradient), the shorter side resized to the CLIP input size (bicubic, antialiased: torchvision's ``Resize``
    on tensors since torchvision 0.17; the reference's pinned 0.13 did not antialias), a centre crop, then
    CLIP's mean/std normalisation.
    """
    visual = clip_model.visual
    crop_h, crop_w = visual.image_size if isinstance(visual.image_size, tuple) else (visual.image_size,) * 2
    cfg = getattr(visual, "preprocess_cfg", None) or {}
    mean = torch.tensor(cfg.get("mean", OPENAI_DATASET_MEAN), device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(cfg.get("std", OPENAI_DATASET_STD), device=images.device).view(1, 3, 1, 1)
    x = (images + 1) / 2
    height, width = x.shape[-2:]
    side = min(crop_h, crop_w)
    size = (side, int(side * width / height)) if height <= width else (int(side * height / width), side)
    if tuple(x.shape[-2:]) != size:
        x = F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=True)
    top, left = round((size[0] - crop_h) / 2.0), round((size[1] - crop_w) / 2.0)
    x = x[..., top : top + crop_h, left : left + crop_w]
    return (x - mean) / std


def _clip_image_features(clip_model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Unit-norm CLIP embeddings of images in [-1, 1] (:func:`_clip_input`, then the image tower)."""
    return F.normalize(clip_model.encode_image(_clip_input(clip_model, images)), dim=-1)


def _direction_loss(
    edited: torch.Tensor, original: torch.Tensor, text_dir: torch.Tensor, no_change: bool
) -> torch.Tensor:
    """The reference's directional loss ``1 - cos(image direction, text direction)`` of one image.

    When no edited image differs from its original at all (the first iteration), the image direction is
    undefined and the reference scores the edited embedding itself against the text direction.
    """
    if no_change:
        return 1 - F.cosine_similarity(edited, text_dir[None], dim=-1).mean()
    delta = edited - original
    delta = delta / (delta.norm(dim=-1, keepdim=True) + 1e-7)
    return 1 - F.cosine_similarity(delta, text_dir[None], dim=-1).mean()


def _clip_edit_term(direction_loss: float) -> float:
    """The text edit's CLIP term ``-log((2 - L_dir) / 2)`` (before its weight ``w_clip``), as the reference.

    ``L_dir`` lies in [0, 2]; the term is 0 for a perfect direction and grows without bound near 2.
    """
    return -math.log((2 - direction_loss) / 2)


def _l1_weight(mask: torch.Tensor | np.ndarray | None, like: torch.Tensor) -> torch.Tensor:
    """The L1 weight map (1, 1, H, W) from an optional (1, 1, H, W) or (H, W) mask with values in [0, 1]."""
    height, width = like.shape[-2:]
    if mask is None:
        return torch.ones(1, 1, height, width, dtype=like.dtype, device=like.device)
    weight = torch.as_tensor(mask, dtype=like.dtype, device=like.device)
    if weight.dim() == 2:
        weight = weight[None, None]
    if tuple(weight.shape) != (1, 1, height, width):
        expected = f"({height}, {width}) or (1, 1, {height}, {width})"
        raise ValueError(f"mask must have shape {expected}; got {tuple(weight.shape)}")
    if not bool(((weight >= 0) & (weight <= 1)).all()):
        raise ValueError("mask values must lie in [0, 1]")
    return weight


def invert_to_t_start(
    model: torch.nn.Module,
    scheduler: DDIMScheduler,
    x0: torch.Tensor,
    z_id: torch.Tensor | np.ndarray,
    z_lnd: torch.Tensor | np.ndarray,
    spec: TextEditSettings,
) -> torch.Tensor:
    """DDIM-invert a clean frame ``x0`` (1, 3, H, W) in [-1, 1] to ``x_start`` at ``spec.t_start``.

    Along :func:`trajectory_sampler` with the frame's unedited code ``l2norm(z_id)`` (the reference uses the
    frame's own identity here, not the video mean), so decoding ``x_start`` along the same trajectory with
    that code reconstructs ``x0``.
    """
    device = x0.device
    z0 = F.normalize(torch.as_tensor(z_id, dtype=torch.float32, device=device), dim=0)
    lnd = torch.as_tensor(z_lnd, dtype=torch.float32, device=device)
    with _frozen(model), torch.no_grad():
        face = model.face_code(z0[None], lnd[None])
        return trajectory_sampler(scheduler, spec).invert(lambda x, t: model(x, t, face), x0)


def optimise_text_direction(
    model: torch.nn.Module,
    scheduler,
    clip_model: torch.nn.Module,
    tokenizer: Tokenizer,
    x_start: torch.Tensor,
    z_id: torch.Tensor | np.ndarray,
    z_lnd: torch.Tensor | np.ndarray,
    spec: TextEditSettings,
    mask: torch.Tensor | np.ndarray | None = None,
    progress: bool = False,
) -> tuple[np.ndarray, list[float]]:
    """Optimise an identity-code direction ``dz`` so the decoded frame follows ``spec.target_text``.

    Args:
        model: the autoencoder; ``model.face_code(z_id (B,D), z_lnd (B,L))`` and ``model(x_t, t, z_face)``.
        scheduler: a :class:`pipeline.model.diffusion.DDIMScheduler` (``step`` is used).
        clip_model, tokenizer: from :func:`load_clip` or :func:`tiny_clip`, on ``x_start``'s device.
        x_start: (1, 3, H, W), the frame at timestep ``spec.t_start`` (NOT the full-depth noise map
            ``x_T`` of the video inversion); :func:`invert_to_t_start` computes it from the clean frame.
        z_id: (D,) the frame's identity code; z_lnd: (L,) its landmark code.
        spec: the text edit (texts, loss weights, iterations, trajectory).
        mask: (1, 1, H, W) or (H, W) in [0, 1], where the L1 term penalises change: the reference uses
            the frame's parsed face foreground. None: the whole frame.
        progress: show a progress bar.

    The unedited code is ``z = l2norm(z_id)``, the code :func:`apply_text_direction` gives for ``dz = 0``,
    so the edited and original trajectories coincide at the start. Each iteration takes, for every step
    ``t -> t_prev`` of the original trajectory, one DDIM step from the ORIGINAL ``x_t`` with the edited
    code ``z' = l2norm(z_id + dz)``, and minimises the reference's loss
    ``w_clip * -log((2 - L_dir) / 2) + w_id * (1 - cos(z', z)) + w_l1 * L1``, where ``L_dir`` is the
    directional CLIP loss averaged over the steps' noisy results and ``L1`` the mean of
    ``|mask * (edited - original)|`` over them; then one Adam step on ``dz`` with the gradient scaled to
    unit norm (see the comment in the loop). Each iteration costs two model calls per step plus one
    backward pass (see :meth:`_TextObjective.backward`).

    Returns ``dz`` (D,) float32 and the loss of every iteration (before its update).
    """
    device = x_start.device
    z = torch.as_tensor(z_id, dtype=torch.float32, device=device)
    lnd = torch.as_tensor(z_lnd, dtype=torch.float32, device=device)
    if x_start.dim() != 4 or x_start.shape[:2] != (1, 3):
        raise ValueError(f"x_start must have shape (1, 3, H, W); got {tuple(x_start.shape)}")
    if z.dim() != 1 or lnd.dim() != 1:
        raise ValueError(f"z_id and z_lnd must be 1-D; got shapes {tuple(z.shape)} and {tuple(lnd.shape)}")
    weight = _l1_weight(mask, x_start)

    dz = torch.zeros_like(z, requires_grad=True)
    opt = torch.optim.Adam([dz], lr=spec.lr)
    losses: list[float] = []
    with _frozen(model, clip_model):
        objective = _TextObjective(model, scheduler, clip_model, tokenizer, x_start, z, lnd, spec, weight)
        for _ in tqdm(range(spec.iterations), desc="CLIP direction", disable=not progress):
            opt.zero_grad()
            losses.append(objective.backward(dz))
            # Just after dz leaves 0 the image direction normalises a tiny difference, and its gradient
            # grows like 1 / |difference|: the first gradients are orders of magnitude larger than later
            # ones and, raw, would swamp Adam's second moment and stall it for the whole run.
            # Unit-norm gradients keep each step near lr from the first iteration on.
            grad_norm = dz.grad.norm()
            if grad_norm > 0:
                dz.grad /= grad_norm
            opt.step()
    return dz.detach().cpu().numpy().astype(np.float32), losses


class _TextObjective:
    """The text-edit loss of :func:`optimise_text_direction` as a function of ``dz``, with its gradient.

    Construction decodes the original trajectory (with ``l2norm(z)``) and the text direction once.
    """

    def __init__(self, model, scheduler, clip_model, tokenizer, x_start, z, lnd, spec: TextEditSettings, weight):
        self.model, self.scheduler, self.clip_model = model, scheduler, clip_model
        self.z, self.lnd, self.spec, self.weight = z, lnd, spec, weight
        self.steps = trajectory_sampler(scheduler, spec).decoding_steps()
        self.z0 = F.normalize(z, dim=0)
        with torch.no_grad():
            face0 = model.face_code(self.z0[None], lnd[None])
            self.traj = [x_start]
            for t, t_prev in self.steps:
                x_t = self.traj[-1]
                self.traj.append(scheduler.step(model(x_t, batch_timestep(t, x_t), face0), t, t_prev, x_t))
            self.orig_feats = [_clip_image_features(clip_model, x) for x in self.traj[1:]]
            self.text_dir = text_direction(clip_model, tokenizer, spec.source_text, spec.target_text)

    def _edited(self, dz: torch.Tensor, i: int) -> torch.Tensor:
        """Step ``i`` of the original trajectory taken with the edited code ``l2norm(z + dz)``."""
        face = self.model.face_code(F.normalize(self.z + dz, dim=0)[None], self.lnd[None])
        t, t_prev = self.steps[i]
        x_t = self.traj[i]
        return self.scheduler.step(self.model(x_t, batch_timestep(t, x_t), face), t, t_prev, x_t)

    def backward(self, dz: torch.Tensor) -> float:
        """Add the loss's gradient to ``dz.grad`` and return the loss.

        Exact, but built one step at a time so that memory holds one model call's graph: a pass without
        gradients gives ``L_dir`` (the log's derivative needs it), a second backpropagates each step's share.
        """
        spec, count = self.spec, len(self.steps)
        with torch.no_grad():
            edited = [self._edited(dz, i) for i in range(count)]
            feats = [_clip_image_features(self.clip_model, x) for x in edited]
            no_change = all(torch.equal(f, o) for f, o in zip(feats, self.orig_feats))
            l_dir = sum(float(_direction_loss(f, o, self.text_dir, no_change)) for f, o in zip(feats, self.orig_feats))
            l_dir /= count
            l1 = sum(float((self.weight * (x - o)).abs().mean()) for x, o in zip(edited, self.traj[1:])) / count
        id_loss = spec.w_id * (1 - F.normalize(self.z + dz, dim=0) @ self.z0)
        id_loss.backward()
        # d/dL_dir of -log((2 - L_dir) / 2) is 1 / (2 - L_dir); L_dir is the mean over the steps.
        clip_weight = spec.w_clip / ((2 - l_dir) * count)
        for i in range(count):
            x = self._edited(dz, i)
            feats_i = _clip_image_features(self.clip_model, x)
            step_dir = _direction_loss(feats_i, self.orig_feats[i], self.text_dir, no_change)
            step_l1 = (self.weight * (x - self.traj[i + 1])).abs().mean()
            (clip_weight * step_dir + spec.w_l1 / count * step_l1).backward()
        return spec.w_clip * _clip_edit_term(l_dir) + float(id_loss.detach()) + spec.w_l1 * l1


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
    """Build the open_clip network ``model_name`` with the weights of a local file; return (model, tokenizer).

    The reference's CLIP is OpenAI's ViT-B/16, which uses QuickGELU: ``"ViT-B-16-quickgelu"`` here
    (``"ViT-B-16"`` is open_clip's GELU variant, for weights trained with GELU). Accepted files (see
    :func:`read_clip_state`): OpenAI's own download (``ViT-B-16.pt``, a TorchScript archive, always run with
    QuickGELU as every OpenAI CLIP was trained with it, whatever the name), or a state dict in OpenAI's and
    open_clip's key layout as safetensors or a plain PyTorch file. Weights keep their values (OpenAI's
    float16 ones are widened, never rounded further). The tokenizer is open_clip's BPE tokenizer, whose
    vocabulary ships inside the package (models with a Hugging Face tokenizer would need the network).

    Nothing is downloaded: a missing file raises :class:`MissingClipWeightsError` (a FileNotFoundError)
    naming ``param_name`` and the expected path; an unreadable file, or one whose tensors do not fit
    ``model_name``, raises :class:`~pipeline.core.errors.InputError` naming the file.
    """
    if weights_path is None or not Path(weights_path).is_file():
        raise MissingClipWeightsError(param_name, weights_path)
    path = Path(weights_path)
    state, openai_archive = read_clip_state(path)
    # open_clip warns that the network it builds is random; its weights are loaded right below.
    quiet = _DropRecords("initialized randomly")
    logging.getLogger().addFilter(quiet)
    try:
        model = open_clip.create_model(model_name, force_quick_gelu=openai_archive)
    finally:
        logging.getLogger().removeFilter(quiet)
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        first = str(error).strip().splitlines()
        detail = "; ".join(line.strip() for line in first[1:3]) or first[0]
        raise InputError(path, f"not weights of the CLIP model {model_name!r} ({detail[:300]})") from None
    return model.to(device).eval(), open_clip.get_tokenizer(model_name)


def read_clip_state(path: Path) -> tuple[dict[str, torch.Tensor], bool]:
    """The tensors of a CLIP weights file by their names, and whether the file is a TorchScript archive.

    Nothing in the file can run Python code: safetensors files hold tensors only; other files are read with
    PyTorch's weights-only unpickler (plain state dicts, or a dict with a ``state_dict``; a ``module.``
    prefix from data-parallel training is dropped); a TorchScript archive (OpenAI's download) goes through
    ``torch.jit.load``, whose unpickler only builds TorchScript types and never imports Python classes, and
    only its parameters are kept: its code is never called. OpenAI's metadata entries (input resolution,
    context length, vocabulary size) are dropped.
    """
    archive = _is_torchscript_archive(path)
    if archive:
        try:
            with warnings.catch_warnings():
                # torch marks TorchScript deprecated; OpenAI still publishes CLIP in it.
                warnings.simplefilter("ignore", FutureWarning)
                state = dict(torch.jit.load(str(path), map_location="cpu").state_dict())
        except RuntimeError as error:
            raise InputError(path, f"unreadable TorchScript archive ({str(error).strip()[:200]})") from None
    elif path.suffix == ".safetensors":
        try:
            state = load_file(str(path))
        except (SafetensorError, OSError) as error:
            raise InputError(path, f"not a readable safetensors file ({error})") from None
    else:
        state = read_lightning_state(path)
    if state and all(name.startswith("module.") for name in state):
        state = {name.removeprefix("module."): value for name, value in state.items()}
    for name in _OPENAI_METADATA:
        state.pop(name, None)
    return state, archive


# Entries of OpenAI's archives that are hyperparameters, not weights (its own loader drops them too).
_OPENAI_METADATA = ("input_resolution", "context_length", "vocab_size")


def _is_torchscript_archive(path: Path) -> bool:
    """Whether ``path`` is a TorchScript archive: a zip with the ``constants.pkl`` that ``torch.save`` never writes."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.rsplit("/", 1)[-1] == "constants.pkl" for name in archive.namelist())


class _DropRecords(logging.Filter):
    """A logging filter that drops records whose message contains ``text``."""

    def __init__(self, text: str):
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


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
