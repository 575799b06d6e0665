"""The reference's frozen face networks (IR-SE50, MobileNetV2-GDConv, BiSeNet) against its golden outputs,
their loading from project checkpoints, and the encode stage's `irse50` / `mobilenet` backends."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from pipeline.core.errors import InputError, MissingWeightsError
from pipeline.faces.networks import StateDictMismatch
from pipeline.faces.networks.face_encoder import ReferenceFaceEncoder, load_reference_encoders
from pipeline.faces.networks.face_parsing import FaceParser, build_face_parser, parsing_face_mask
from pipeline.faces.networks.irse50 import IRSE50, build_irse50
from pipeline.faces.networks.landmark_net import LandmarkNet, build_landmark_net, drop_unused_alias
from pipeline.faces.settings import EncodeParams
from pipeline.faces.tracking import NO_FACE
from tests.reference_fixture import formula_state, golden, max_abs_difference, reference_keys, tolerance

REFERENCE_PREFIXES = {"identity": "encoder.idnet.", "landmarks": "encoder.lndnet.", "parsing": "encoder.bgnet."}
LANDMARK_ALIAS = "backbone.pretrain_net."
EVERY = 8  # the golden keeps every 8th pixel of the 512 px logits, starting at 0


def _strip(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {key[len(prefix) :]: value for key, value in state.items() if key.startswith(prefix)}


@pytest.fixture(scope="module")
def encoder_states() -> dict[str, dict[str, torch.Tensor]]:
    """The three networks' formula weights, by part, named as the project's modules expect."""
    state = formula_state("small64")
    parts = {part: _strip(state, "ema_model." + prefix) for part, prefix in REFERENCE_PREFIXES.items()}
    parts["landmarks"] = drop_unused_alias(parts["landmarks"])
    parts["linear"] = _strip(state, "ema_model.encoder.linear.")
    return parts


@pytest.fixture(scope="module")
def reference_encoder(encoder_states) -> ReferenceFaceEncoder:
    return ReferenceFaceEncoder(
        build_irse50(encoder_states["identity"]),
        build_landmark_net(encoder_states["landmarks"]),
        build_face_parser(encoder_states["parsing"]),
    )


def golden_differences(
    encoder: ReferenceFaceEncoder, linear: dict[str, torch.Tensor]
) -> dict[str, tuple[float, float]]:
    """Largest absolute difference from each golden encoder output, with its tolerance."""
    expected = golden()
    faces = expected["input.face_256"]
    with torch.no_grad():
        id_feats = encoder.identity_features(faces)
        lnd_feats = encoder.landmark_features(faces)
        logits = encoder.parsing_logits(faces)[:, :, ::EVERY, ::EVERY]
        # The face code's linear layer belongs to the autoencoder; here it only checks the wiring.
        z_face = torch.nn.functional.linear(torch.cat([id_feats, lnd_feats], 1), linear["weight"], linear["bias"])
        actual = {
            "encoder.id_feats": id_feats,
            "encoder.lnd_feats": lnd_feats,
            "encoder.z_face": z_face,
            "encoder.bisenet_logits_every8": logits,
            "encoder.bisenet_classes_every8": logits.argmax(dim=1),
            "encoder.face_mask_video": encoder.face_mask(faces, for_video=True),
            "encoder.face_mask_image": encoder.face_mask(faces, for_video=False),
        }
    return {
        name: (max_abs_difference(value, expected[name]), tolerance(expected[name])) for name, value in actual.items()
    }


def test_networks_reproduce_the_reference_outputs(reference_encoder, encoder_states):
    differences = golden_differences(reference_encoder, encoder_states["linear"])
    print(json.dumps({name: difference for name, (difference, _) in differences.items()}, indent=1))
    for name, (difference, bound) in differences.items():
        assert difference <= bound, (name, difference, bound)


def test_networks_cover_every_reference_encoder_name():
    reference = {key: tuple(shape) for key, shape in reference_keys("paper256").items()}
    with torch.device("meta"):
        modules = {"identity": IRSE50(), "landmarks": LandmarkNet(), "parsing": FaceParser()}
    for part, prefix in REFERENCE_PREFIXES.items():
        ours = {key: tuple(value.shape) for key, value in modules[part].state_dict().items()}
        theirs = {key[len(prefix) :]: shape for key, shape in reference.items() if key.startswith(prefix)}
        if part == "landmarks":
            alias = {key: shape for key, shape in theirs.items() if key.startswith(LANDMARK_ALIAS)}
            theirs = {key: shape for key, shape in theirs.items() if key not in alias}
            # The alias repeats the features; beyond them it holds only the unused ImageNet classifier.
            for key, shape in alias.items():
                twin = key.replace(LANDMARK_ALIAS + "features.", "backbone.base_net.0.")
                assert key.startswith(LANDMARK_ALIAS + "classifier.") or theirs.get(twin) == shape, key
        assert ours == theirs, part
    leftover = {key for key in reference if key.startswith("encoder.")} - {
        key for key in reference for prefix in REFERENCE_PREFIXES.values() if key.startswith(prefix)
    }
    assert leftover == {"encoder.linear.weight", "encoder.linear.bias"}


def test_state_mismatch_lists_the_offending_names(encoder_states):
    state = dict(encoder_states["landmarks"])
    del state["backbone.linear1.bn.bias"]
    state["backbone.extra.weight"] = torch.zeros(1)
    state["backbone.linear7.conv.weight"] = torch.zeros(3)
    with pytest.raises(StateDictMismatch) as caught:
        build_landmark_net(state)
    message = str(caught.value)
    for name in ("backbone.linear1.bn.bias", "backbone.extra.weight", "backbone.linear7.conv.weight"):
        assert name in message


def test_landmark_alias_must_repeat_the_features(encoder_states):
    state = {f"{LANDMARK_ALIAS}classifier.1.bias": torch.zeros(1000), **encoder_states["landmarks"]}
    state[f"{LANDMARK_ALIAS}features.0.0.weight"] = state["backbone.base_net.0.0.0.weight"].clone()
    assert drop_unused_alias(state).keys() == encoder_states["landmarks"].keys()
    state[f"{LANDMARK_ALIAS}features.0.0.weight"] += 1
    with pytest.raises(ValueError, match="differs"):
        drop_unused_alias(state)


class _FixedClasses(FaceParser):
    """A parser whose 'logits' put class `c` on image column band `c`, to test the mask rules alone."""

    def forward(self, faces: torch.Tensor) -> torch.Tensor:
        columns = torch.arange(512) * 19 // 512
        return torch.nn.functional.one_hot(columns, 19).T[None, :, None, :].float().expand(len(faces), 19, 512, 512)


def test_face_masks_exclude_the_reference_classes():
    band = np.arange(256) * 19 // 256
    masks = {video: _FixedClasses().face_mask(torch.zeros(1, 3, 256, 256), video)[0, 0, 0].numpy() for video in (0, 1)}
    assert set(band[masks[0] == 0]) == {0, 16, 18}
    assert set(band[masks[1] == 0]) == {0, 7, 8, 14, 16, 17, 18}
    crops = np.zeros((3, 64, 64, 3), np.uint8)
    mask = parsing_face_mask(crops, _FixedClasses(), for_video=True)
    assert mask.shape == (3, 64, 64) and mask.dtype == np.float32 and set(np.unique(mask)) == {0.0, 1.0}


def test_parsing_face_mask_on_crops(reference_encoder):
    crops = np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    mask = parsing_face_mask(crops, reference_encoder.parsing, for_video=False)
    assert mask.shape == (2, 64, 64) and mask.dtype == np.float32


def _checkpoint(path: Path, states: dict[str, dict[str, torch.Tensor]], parts: tuple[str, ...]) -> Path:
    tensors = {f"encoders.{part}.{key}": value.contiguous() for part in parts for key, value in states[part].items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({**tensors, "unet.other": torch.zeros(2)}, str(path))
    return path


def test_load_reference_encoders_from_checkpoint(tmp_path, encoder_states):
    path = _checkpoint(tmp_path / "landmarks.safetensors", encoder_states, ("landmarks",))
    encoder = load_reference_encoders(path, ("landmarks",))
    assert encoder.identity is None and encoder.parsing is None
    faces = golden()["input.face_256"]
    with torch.no_grad():
        assert torch.equal(encoder.landmark_features(faces), build_landmark_net(encoder_states["landmarks"])(faces))
    with pytest.raises(InputError, match=r"landmarks\.safetensors.*encoders\.identity\.\*"):
        load_reference_encoders(path, ("identity", "landmarks"))
    broken = dict(encoder_states)
    broken["landmarks"] = {key: value for key, value in encoder_states["landmarks"].items() if "linear1" not in key}
    with pytest.raises(InputError, match="missing"):
        load_reference_encoders(_checkpoint(tmp_path / "broken.safetensors", broken, ("landmarks",)), ("landmarks",))
    not_safetensors = tmp_path / "model.ckpt"
    not_safetensors.write_bytes(b"\x80\x04not a safetensors file")
    with pytest.raises(InputError, match="model.ckpt"):
        load_reference_encoders(not_safetensors, ("landmarks",))


def test_encode_stage_with_reference_backends(tmp_path, monkeypatch, sample_align, encoder_states):
    from pipeline.runs.artifacts import read_features
    from stages.encode import encode_video

    monkeypatch.chdir(tmp_path)
    _checkpoint(tmp_path / "models" / "encoders.safetensors", encoder_states, ("identity", "landmarks"))
    params = EncodeParams(
        backend="irse50",
        identity_weights="models/encoders.safetensors",
        landmark_backend="mobilenet",
        landmark_weights="models/encoders.safetensors",
        device="cpu",
    )
    encode_video(sample_align, tmp_path / "encode", params, progress=False)
    encoded = read_features(tmp_path / "encode")
    status, identities, features = encoded.status, encoded.identities, encoded.landmarks
    video_identity, metadata = encoded.video_identity, encoded.metadata
    ok = np.array([state != NO_FACE for state in status])
    assert identities.shape == (len(status), 512) and features.shape == (len(status), 102)
    np.testing.assert_allclose(np.linalg.norm(identities[ok], axis=1), 1, atol=1e-5)
    assert np.all((features[ok] >= 0) & (features[ok] <= 1))
    assert abs(np.linalg.norm(video_identity) - 1) < 1e-5
    assert metadata["encoder"] == "irse50" and metadata["landmark_feature_backend"] == "mobilenet"
    assert set(metadata["weights_sha256"]) == {"irse50", "mobilenet_gdconv"}


@pytest.mark.parametrize(
    ("changes", "param"),
    [
        ({"backend": "irse50", "identity_weights": "models/absent.safetensors"}, "encode.identity_weights"),
        ({"landmark_backend": "mobilenet"}, "encode.landmark_weights"),
    ],
)
def test_missing_reference_weights_is_a_one_line_error(tmp_path, monkeypatch, sample_align, changes, param):
    from stages.encode import encode_video

    monkeypatch.chdir(tmp_path)
    with pytest.raises(MissingWeightsError, match=param) as caught:
        encode_video(sample_align, tmp_path / "encode", EncodeParams(**changes), progress=False)
    assert "\n" not in str(caught.value)
