"""Image similarity of reconstructions to their source crops: MS-SSIM at any crop size, and LPIPS.

MS-SSIM (Wang et al. 2003) compares images at several scales, each half the size of the one before,
with an 11 px Gaussian window (sigma 1.5). The paper measures 256 px crops at the standard 5 scales;
at 5 scales the coarsest image of a 64 px crop would be 4 px, smaller than the window (torchmetrics
refuses it). :func:`ms_ssim_settings` keeps the window and the paper's scales where they fit, and
drops the coarsest scales otherwise: 64 px crops get 3 scales (the coarsest 16 px), 128 px 4, 256 px
the paper's 5. The kept exponents are rescaled to sum to 1, so a score stays a weighted geometric mean
of per-scale similarities on the same 0..1 scale; at 5 scales the published exponents are used as
they are, which is exactly torchmetrics' default MS-SSIM.

LPIPS (Zhang et al. 2018) needs a pretrained backbone that torchmetrics would download; here the
whole network (backbone + linear heads) comes from one local file (:func:`load_lpips`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from pipeline.core.device import resolve_device
from pipeline.core.errors import InputError, MissingWeightsError
from pipeline.core.progress import progress_bar
from pipeline.faces.networks import StateDictMismatch, load_exact_state

# Wang et al.'s per-scale exponents, finest scale first (torchmetrics' defaults).
MS_SSIM_BETAS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
MS_SSIM_WINDOW = 11
MS_SSIM_SIGMA = 1.5
LPIPS_PARAM = "evaluate.lpips_weights"


@dataclass(frozen=True)
class MsSsimSettings:
    """The scales, window and exponents one MS-SSIM figure was measured with (recorded beside it)."""

    scales: int
    window: int
    sigma: float
    betas: tuple[float, ...]

    def as_dict(self) -> dict:
        """JSON-ready form, for metrics files."""
        return asdict(self) | {"betas": list(self.betas)}


def ms_ssim_settings(size: int) -> MsSsimSettings:
    """MS-SSIM settings for `size` px images: as many of the paper's 5 scales as keep the 11 px window.

    The coarsest scale must hold the window, and torchmetrics additionally requires
    `size // (scales - 1) ** 2 > window - 1` (stricter than halving at 4 scales).
    """
    for scales in range(len(MS_SSIM_BETAS), 0, -1):
        if size // 2 ** (scales - 1) >= MS_SSIM_WINDOW and size // max(1, scales - 1) ** 2 > MS_SSIM_WINDOW - 1:
            break
    else:
        raise ValueError(f"{size} px images are smaller than the {MS_SSIM_WINDOW} px MS-SSIM window")
    betas = MS_SSIM_BETAS[:scales]
    if scales < len(MS_SSIM_BETAS):
        betas = tuple(beta / sum(betas) for beta in betas)
    return MsSsimSettings(scales, MS_SSIM_WINDOW, MS_SSIM_SIGMA, betas)


def to_unit_images(crops: np.ndarray) -> torch.Tensor:
    """uint8 crops (B, R, R, 3) as float images (B, 3, R, R) in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(crops)).permute(0, 3, 1, 2).float() / 255


def ms_ssim(images: torch.Tensor, reference: torch.Tensor, settings: MsSsimSettings | None = None) -> np.ndarray:
    """Per-image MS-SSIM of (B, 3, R, R) images in [0, 1] against `reference` (1: identical).

    `settings` default to :func:`ms_ssim_settings` for the image size.
    """
    # torchmetrics is imported where it is used: importing it costs seconds (it imports torchvision and
    # torch._dynamo), which a preview, which measures nothing, would pay for nothing.
    from torchmetrics.functional.image import multiscale_structural_similarity_index_measure

    settings = settings or ms_ssim_settings(images.shape[-1])
    scores = multiscale_structural_similarity_index_measure(
        images.float(), reference.float(), kernel_size=settings.window, sigma=settings.sigma, betas=settings.betas,
        data_range=1.0, reduction="none")
    return scores.cpu().numpy().astype(np.float32)


class Lpips:
    """LPIPS distance (0: identical) with a network read from a local file; see :func:`load_lpips`."""

    def __init__(self, network: torch.nn.Module, net: str, path: Path, device: torch.device):
        self._network, self._device = network.to(device), device
        self.net, self.path = net, path

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, reference: torch.Tensor) -> np.ndarray:
        """Per-image distance of (B, 3, R, R) images in [0, 1] to `reference`."""
        scores = self._network(images.to(self._device), reference.to(self._device), normalize=True)
        return scores.flatten().float().cpu().numpy()


def _read_state(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except (SafetensorError, OSError) as error:
            raise InputError(path, f"{LPIPS_PARAM}: not a readable safetensors file ({error})") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unreadable file is the same one-line error
        raise InputError(path, f"{LPIPS_PARAM}: not a readable state dict ({str(error).strip()[:200]})") from None
    if not isinstance(state, dict) or not all(isinstance(value, torch.Tensor) for value in state.values()):
        raise InputError(path, f"{LPIPS_PARAM}: not a state dict of tensors")
    return state


def lpips_network(net: str) -> torch.nn.Module:
    """An LPIPS network of backbone `net` with random weights, built without any download.

    torchmetrics' module (private, but the one its metric runs) with the torchvision backbone left
    uninitialised (`pnet_rand`) and no linear heads loaded (`pretrained=False`); dropout before the heads
    keeps the published files' names (`lin0.model.1.weight`) and is inactive in inference.
    """
    from torchmetrics.functional.image.lpips import _NoTrainLpips

    return _NoTrainLpips(pretrained=False, net=net, pnet_rand=True, use_dropout=True)


def _with_head_aliases(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`state` with the heads under both names the module registers them by (`lin0.` and `lins.0.`).

    Files need only the published names (`lin0.model.1.weight`); `lins.*` entries are rebuilt from them.
    """
    state = {key: value for key, value in state.items() if not key.startswith("lins.")}
    return state | {f"lins.{key[3:]}": value for key, value in state.items()
                    if key.startswith("lin") and key[3:4].isdigit()}


def lpips_state_from_published(net: str, backbone: dict[str, torch.Tensor],
                               heads: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The complete LPIPS state of backbone `net` from the published parts, for `evaluate.lpips_weights`.

    `backbone`: torchvision's ImageNet state dict of the backbone (`features.N.*`); `heads`: the LPIPS
    v0.1 linear heads (`lin0.model.1.weight`, ...; torchmetrics ships them in `lpips_models/`).
    """
    state = {}
    for key in lpips_network(net).state_dict():
        if key.startswith("net."):
            _, _, layer = key.split(".", 2)
            state[key] = backbone[f"features.{layer}"].contiguous()
        elif not key.startswith("lins."):
            state[key] = heads[key].contiguous()
    return state


def load_lpips(path: str | Path | None, net: str = "alex", device: str = "auto") -> Lpips:
    """The LPIPS network of backbone `net` from the file `evaluate.lpips_weights` names.

    The file (safetensors, or a torch state dict read with `weights_only=True`) must hold the complete
    network: every backbone and linear-head tensor, by the names and shapes of :func:`lpips_network`.
    A missing file or one that does not fit is a one-line error naming the file and the parameter.
    """
    if not path or not Path(path).is_file():
        raise MissingWeightsError(LPIPS_PARAM, path or "an LPIPS network file")
    path = Path(path)
    try:
        network = load_exact_state(lpips_network(net), _with_head_aliases(_read_state(path)), f"LPIPS-{net}")
    except StateDictMismatch as error:
        raise InputError(path, f"{LPIPS_PARAM} (evaluate.lpips_net {net}): {error}") from None
    return Lpips(network, net, path, resolve_device(device))


def reconstruction_similarity(source: np.ndarray, decoded: np.ndarray, frames: np.ndarray,
                              lpips: Lpips | None = None, batch: int = 32, progress: bool = False,
                              desc: str = "MS-SSIM") -> dict[str, np.ndarray]:
    """Per-frame MS-SSIM (and LPIPS when a network is given) of `decoded` against `source` crops.

    Both are uint8 stacks (N, R, R, 3), read only at the listed `frames`; returns arrays of len(frames).
    """
    settings = ms_ssim_settings(source.shape[1])
    scores: dict[str, list[np.ndarray]] = {"ms_ssim": []} | ({"lpips": []} if lpips is not None else {})
    batches = [frames[start : start + batch] for start in range(0, len(frames), batch)]
    for rows in progress_bar(batches, enabled=progress, total=len(batches), desc=desc):
        images, reference = to_unit_images(decoded[rows]), to_unit_images(source[rows])
        scores["ms_ssim"].append(ms_ssim(images, reference, settings))
        if lpips is not None:
            scores["lpips"].append(lpips(images, reference))
    return {name: np.concatenate(values) if values else np.zeros(0, np.float32) for name, values in scores.items()}
