"""CLIP as the reference runs it: tokens, preprocessing, features, text direction and loss against goldens.

`fixtures/clip_reference/` is a copy of `shared/golden/clip_reference/`: outputs of the reference's
`losses/clip_loss.py` on OpenAI's ViT-B/16 layout with formula weights (its README). The weights are rebuilt
from each tensor's name with the formula of `reference_fixture.py`, written as the file users download from
OpenAI (a TorchScript archive) and as plain state dicts, and loaded through `load_clip`. Inputs, texts and
expected values all come from the fixture, so a fixture regenerated with other ones is checked unchanged.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from pipeline.core.errors import InputError
from pipeline.editing.text_edit import (
    PROMPT_TEMPLATES,
    _clip_edit_term,
    _clip_image_features,
    _clip_input,
    _direction_loss,
    load_clip,
    read_clip_state,
    text_direction,
)
from tests.reference_fixture import formula_tensor, max_abs_difference

FIXTURE = Path(__file__).parent / "fixtures" / "clip_reference"
# open_clip's GELU name: OpenAI's own archive must still give the reference's QuickGELU network under it.
DEFAULT_NAME = "ViT-B-16"
REFERENCE_NAME = "ViT-B-16-quickgelu"


def tolerance(expected: torch.Tensor) -> float:
    """The fixture README's bound: 1e-3 x (1 + max |golden|) (float32 round-off through 12 layers)."""
    return 1e-3 * (1 + float(expected.double().abs().max()))


def assert_matches(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """``actual`` equals the golden ``expected`` (same number of elements) within :func:`tolerance`."""
    actual = actual.detach().reshape(expected.shape)
    difference, bound = max_abs_difference(actual, expected), tolerance(expected)
    assert difference <= bound, f"max |difference| {difference:.3g} > bound {bound:.3g}"


class _Holder(nn.Module):
    """A module that only holds tensors: the tree of an OpenAI archive, without its code."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def write_openai_archive(path: Path, state: dict[str, torch.Tensor]) -> Path:
    """Save ``state`` as a TorchScript archive with OpenAI's tensor names, as in OpenAI's ``ViT-B-16.pt``."""
    root = _Holder()
    for name, value in state.items():
        *parents, leaf = name.split(".")
        module = root
        for part in parents:
            if not hasattr(module, part):
                module.add_module(part, _Holder())
            module = getattr(module, part)
        module.register_parameter(leaf, nn.Parameter(value, requires_grad=False))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch marks TorchScript deprecated
        torch.jit.script(root).save(str(path))
    return path


@pytest.fixture(scope="module")
def golden() -> dict[str, torch.Tensor]:
    return load_file(str(FIXTURE / "golden.safetensors"))


@pytest.fixture(scope="module")
def meta() -> dict:
    return json.loads((FIXTURE / "meta.json").read_text())


@pytest.fixture(scope="module")
def openai_state() -> dict[str, torch.Tensor]:
    """OpenAI's ViT-B/16 state dict with the fixture's formula weights (names as they are, no prefix)."""
    keys = json.loads((FIXTURE / "keys_openai_vit_b16.json").read_text())
    return {name: formula_tensor(name, shape) for name, shape in keys.items()}


@pytest.fixture(scope="module")
def weight_files(tmp_path_factory, openai_state) -> dict[str, Path]:
    """The formula weights as OpenAI's archive, as safetensors and as a plain (weights-only) PyTorch file."""
    folder = tmp_path_factory.mktemp("clip")
    save_file(openai_state, str(folder / "vit_b_16.safetensors"))
    torch.save(openai_state, folder / "vit_b_16.bin")
    return {
        "archive": write_openai_archive(folder / "ViT-B-16.pt", openai_state),
        "safetensors": folder / "vit_b_16.safetensors",
        "torch": folder / "vit_b_16.bin",
    }


@pytest.fixture(scope="module")
def clip(weight_files):
    """The file users download from OpenAI, loaded under the default model name."""
    return load_clip(DEFAULT_NAME, weight_files["archive"])


def _texts(meta: dict) -> dict[str, str]:
    """Golden key suffix -> text: ``tokens.face_templates`` holds the templates filled with "face"."""
    return {text.replace(" ", "_"): text for text in (meta["source_text"], meta["target_text"])}


def _per_text(golden: dict, meta: dict, prefix: str, suffix: str = "") -> list[tuple[str, torch.Tensor]]:
    """(text, golden value) for every golden ``prefix + <text> + suffix`` entry; at least one must exist."""
    texts = _texts(meta)
    found = [(texts[key[len(prefix) : len(key) - len(suffix)]], value) for key, value in golden.items()
             if key.startswith(prefix) and key.endswith(suffix)]
    assert found, f"the fixture has no {prefix}*{suffix} entry"
    return found


def test_prompt_templates_tokenise_as_the_references(clip, golden, meta):
    _, tokenizer = clip
    assert len(PROMPT_TEMPLATES) == meta["templates"]
    for text, expected in _per_text(golden, meta, "tokens.", "_templates"):
        tokens = tokenizer([template.format(text) for template in PROMPT_TEMPLATES])
        assert torch.equal(tokens.to(expected.dtype), expected), text


def test_preprocessing_matches_the_reference(clip, golden):
    model, _ = clip
    for key, expected in golden.items():
        if key.startswith("clip.preprocessed_"):
            with torch.no_grad():
                assert_matches(_clip_input(model, golden["input." + key.removeprefix("clip.preprocessed_") + "_img"]),
                               expected)


def test_image_features_match_the_reference(clip, golden):
    model, _ = clip
    with torch.no_grad():
        features = model.encode_image(_clip_input(model, golden["input.src_img"]))
    assert_matches(features, golden["clip.image_features_raw"])


def test_text_features_match_the_reference(clip, golden, meta):
    model, tokenizer = clip
    for text, expected in _per_text(golden, meta, "clip.text_features_raw_"):
        with torch.no_grad():
            features = model.encode_text(tokenizer([template.format(text) for template in PROMPT_TEMPLATES]))
        assert_matches(features, expected)


def test_text_direction_and_losses_match_the_reference(clip, golden, meta):
    model, tokenizer = clip
    with torch.no_grad():
        direction = text_direction(model, tokenizer, meta["source_text"], meta["target_text"])
        assert_matches(direction, golden["clip.text_direction"])
        source = _clip_image_features(model, golden["input.src_img"])
        target = _clip_image_features(model, golden["input.target_img"])
        loss = _direction_loss(target, source, direction, no_change=torch.equal(target, source))
    assert_matches(loss, golden["clip.directional_loss"])
    assert_matches(torch.tensor(_clip_edit_term(float(loss))), golden["clip.edit_loss_term"])


@pytest.mark.parametrize("kind", ["safetensors", "torch"])
def test_plain_state_dicts_load_the_same_network(clip, weight_files, golden, kind):
    """A state dict in OpenAI's layout gives the archive's network under the QuickGELU name."""
    model, _ = load_clip(REFERENCE_NAME, weight_files[kind])
    reference, _ = clip
    assert all(torch.equal(value, reference.state_dict()[name]) for name, value in model.state_dict().items())
    pixels = golden["clip.preprocessed_src"][:1]
    with torch.no_grad():
        torch.testing.assert_close(model.encode_image(pixels), reference.encode_image(pixels), rtol=0, atol=0)


def test_the_gelu_network_is_not_the_reference(weight_files, golden):
    """open_clip's `ViT-B-16` (GELU) with the same weights is far outside the bound: the name matters."""
    model, _ = load_clip(DEFAULT_NAME, weight_files["safetensors"])
    expected = golden["clip.image_features_raw"][:1]
    with torch.no_grad():
        features = model.encode_image(golden["clip.preprocessed_src"][:1])
    assert max_abs_difference(features, expected) > 10 * tolerance(expected)


def test_wrong_or_unsafe_files_are_refused(tmp_path):
    mismatched = tmp_path / "other.safetensors"
    save_file({"visual.proj": torch.zeros(2, 2)}, str(mismatched))
    with pytest.raises(InputError, match="not weights of the CLIP model 'ViT-B-16-quickgelu'") as info:
        load_clip(REFERENCE_NAME, mismatched)
    assert str(mismatched) in str(info.value) and "\n" not in str(info.value)

    class Payload:
        def __reduce__(self):
            return (print, ("ran",))

    unsafe = tmp_path / "unsafe.pt"
    torch.save({"visual.proj": Payload()}, unsafe)
    with pytest.raises(InputError, match="refused"):
        read_clip_state(unsafe)
