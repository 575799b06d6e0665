"""The reference's frozen face encoders together, and their loading from an imported checkpoint.

In the reference (`DiffusionVideoAutoencoder`), the face code is `Linear(614 -> 512)` of the identity
code and the landmark feature of the same frame; that linear layer is trainable and belongs to the
autoencoder. This module holds only the frozen parts: identity (IR-SE50), landmarks (MobileNetV2-GDConv)
and face parsing (BiSeNet), stored in project checkpoints under `encoders.identity.`,
`encoders.landmarks.` and `encoders.parsing.`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from torch import nn

from pipeline.core.device import resolve_device
from pipeline.core.errors import InputError, MissingWeightsError
from pipeline.core.hashing import sha256_file
from pipeline.faces.networks import StateDictMismatch
from pipeline.faces.networks.face_parsing import FaceParser, build_face_parser, uint8_to_unit_range
from pipeline.faces.networks.irse50 import IRSE50, build_irse50
from pipeline.faces.networks.landmark_net import LandmarkNet, build_landmark_net

REFERENCE_SIZE = 256
CHECKPOINT_PREFIX = "encoders."
PARTS = ("identity", "landmarks", "parsing")
_BUILDERS: dict[str, Callable[[Mapping[str, torch.Tensor]], nn.Module]] = {
    "identity": build_irse50,
    "landmarks": build_landmark_net,
    "parsing": build_face_parser,
}


class ReferenceFaceEncoder(nn.Module):
    """Identity, landmark and face-parsing networks of the reference; any of them may be absent.

    All inputs are (B, 3, 256, 256) aligned faces in [-1, 1], as the reference's encoder takes them.
    State-dict names are `<part>.<reference name>`, so `encoders.` + name is the checkpoint key.
    """

    def __init__(
        self,
        identity: IRSE50 | None = None,
        landmarks: LandmarkNet | None = None,
        parsing: FaceParser | None = None,
    ):
        super().__init__()
        self.identity = identity
        self.landmarks = landmarks
        self.parsing = parsing

    def _part(self, name: str) -> nn.Module:
        network = getattr(self, name)
        if network is None:
            raise RuntimeError(f"this face encoder was built without its {name} network")
        return network

    def identity_features(self, faces: torch.Tensor) -> torch.Tensor:
        """(B, 512) L2-normalised identity codes (`z_id`)."""
        return self._part("identity")(faces)

    def landmark_features(self, faces: torch.Tensor) -> torch.Tensor:
        """(B, 102) landmark features (`z_lnd`): 51 non-jaw points in [0, 1] of the 224 px centre crop."""
        return self._part("landmarks")(faces)

    def parsing_logits(self, faces: torch.Tensor) -> torch.Tensor:
        """(B, 19, 512, 512) face-parsing logits of the 512 px nearest-resized faces."""
        return self._part("parsing")(faces)

    def face_mask(self, faces: torch.Tensor, for_video: bool = False) -> torch.Tensor:
        """(B, 1, 256, 256) float foreground mask; `for_video` also excludes ears, neck and necklace."""
        return self._part("parsing").face_mask(faces, for_video)


def crops_to_reference_faces(crops: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """(B, R, R, 3) uint8 RGB aligned crops -> (B, 3, 256, 256) float32 faces in [-1, 1], the encoders' input.

    Crops of another size are resized bilinearly (antialiased when shrinking), as the reference's own
    pipeline brings its 64 px frames to the encoders' 256 px.
    """
    faces = uint8_to_unit_range(crops, device)
    if faces.shape[-1] != REFERENCE_SIZE:
        shrink = faces.shape[-1] > REFERENCE_SIZE
        faces = F.interpolate(faces, (REFERENCE_SIZE, REFERENCE_SIZE), mode="bilinear", align_corners=False,
                              antialias=shrink)
    return faces


def load_reference_encoders(
    path: Path | str, parts: Iterable[str] = PARTS, device: torch.device | str = "cpu"
) -> ReferenceFaceEncoder:
    """Build the requested networks (`identity`, `landmarks`, `parsing`) from a safetensors file.

    The file holds each network under `encoders.<part>.` (other keys, such as the autoencoder's, are
    ignored; only the requested parts need be present). A missing, unreadable or ill-fitting file is an
    `InputError` naming the file and the problem.
    """
    path = Path(path)
    parts = tuple(parts)
    unknown = [part for part in parts if part not in _BUILDERS]
    if unknown:
        raise ValueError(f"unknown face encoder part(s) {unknown}; choose from {list(PARTS)}")
    if not path.is_file():
        raise InputError(path, "no such weights file")
    prefixes = {part: f"{CHECKPOINT_PREFIX}{part}." for part in parts}
    states: dict[str, dict[str, torch.Tensor]] = {}
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            # Only the requested parts are read: the file may also hold the whole autoencoder.
            names = handle.keys()
            for part, prefix in prefixes.items():
                states[part] = {
                    name[len(prefix) :]: handle.get_tensor(name) for name in names if name.startswith(prefix)
                }
    except (SafetensorError, OSError) as error:
        raise InputError(path, f"not a readable safetensors file ({error})") from None
    absent = [prefixes[part] + "*" for part in parts if not states[part]]
    if absent:
        raise InputError(path, f"holds no {', '.join(absent)} weights (import the reference checkpoint first)")
    networks = {}
    for part in parts:
        try:
            networks[part] = _BUILDERS[part](states[part]).to(device)
        except StateDictMismatch as error:
            raise InputError(path, f"{prefixes[part]}*: {error}") from None
    return ReferenceFaceEncoder(**networks)


def load_face_parser(path: str | None, param: str, device: torch.device | str = "cpu") -> FaceParser:
    """The BiSeNet parser from the weights file a parameter names (an imported checkpoint will do).

    A parameter that is unset or names a missing file is a `MissingWeightsError` naming the parameter.
    """
    if not path or not Path(path).is_file():
        raise MissingWeightsError(param, path or "an imported model file holding encoders.parsing.*")
    return load_reference_encoders(path, parts=("parsing",), device=device).parsing


class CropNetwork:
    """One of the reference's face networks, from the weights file a parameter names, applied to uint8 crops.

    `part` is identity, landmarks or parsing; `role` names the weights in lineage records. An unset or
    missing file is a `MissingWeightsError` naming `param`.
    """

    def __init__(self, part: str, weights_path: str | None, param: str, role: str, device: str = "cpu") -> None:
        if not weights_path or not Path(weights_path).is_file():
            raise MissingWeightsError(param, weights_path or "models/dva_reference.safetensors")
        self._device = resolve_device(device)
        self._network = getattr(load_reference_encoders(weights_path, (part,), self._device), part)
        self.weight_files = {role: Path(weights_path)}
        self.weights = {role: sha256_file(Path(weights_path))}

    @torch.no_grad()
    def __call__(self, crops: np.ndarray) -> np.ndarray:
        """The network's output for (B, R, R, 3) uint8 aligned crops, as float32."""
        return self._network(crops_to_reference_faces(crops, self._device)).float().cpu().numpy()
