"""Model files: what `load_model` accepts, what it refuses (with the file named), and the CLI's
one-line answer to a file that is not a model."""

from __future__ import annotations

import dataclasses
import json
import subprocess

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from pipeline.core.errors import InputError
from pipeline.model.checkpoint import FORMAT, config_to_json, load_model, save_model
from pipeline.model.unet import DiffusionVideoAutoencoder, UNetConfig

CONFIG = UNetConfig(
    resolution=16, base_channels=8, channel_mults=(1, 2), num_res_blocks=1, attention_resolutions=(8,),
    embed_dim=16, dropout=0.0, id_dim=4,
)


def _model(seed: int = 0) -> DiffusionVideoAutoencoder:
    torch.manual_seed(seed)
    model = DiffusionVideoAutoencoder(CONFIG)
    with torch.no_grad():  # zero-initialised layers would make a weight mix-up invisible
        for parameter in model.parameters():
            parameter.normal_()
    return model


def test_save_load_round_trip_keeps_weights_config_and_metadata(tmp_path):
    model = _model()
    path = tmp_path / "model.safetensors"
    save_model(path, model, {"identity_encoder": "dlib-resnet-128", "steps": "12"})
    loaded, metadata = load_model(path)
    assert loaded.config == CONFIG
    assert not loaded.training  # ready for inference
    saved, restored = model.state_dict(), loaded.state_dict()
    assert saved.keys() == restored.keys()
    assert all(torch.equal(saved[name], restored[name]) for name in saved)
    assert metadata["identity_encoder"] == "dlib-resnet-128" and metadata["steps"] == "12"
    assert metadata["format"] == FORMAT


def test_landmark_standardisation_is_saved_and_older_files_load_without_it(tmp_path):
    model = _model()
    model.standardise_landmarks(0.5 + 0.02 * torch.randn(30, CONFIG.lnd_dim))
    path = tmp_path / "model.safetensors"
    save_model(path, model, {})
    loaded = load_model(path)[0]
    assert torch.equal(loaded.landmark_center, model.landmark_center)
    assert torch.equal(loaded.landmark_scale, model.landmark_scale)
    older = tmp_path / "older.safetensors"
    weights = {k: v for k, v in model.state_dict().items() if not k.startswith("landmark_")}
    save_file(weights, str(older), metadata={"format": FORMAT, "config": config_to_json(CONFIG),
                                             "sampler": model.sampler.to_json()})
    loaded = load_model(older)[0]  # ran without standardisation: identity
    assert not loaded.landmark_center.any() and float(loaded.landmark_scale) == 1.0


def _refusals(tmp_path) -> dict:
    text = tmp_path / "notes.safetensors"
    text.write_text("these are my notes, not a model\n")
    random_bytes = tmp_path / "random.safetensors"
    random_bytes.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    foreign = tmp_path / "foreign.safetensors"
    # A perfectly valid safetensors file of someone else's model: right weights even, but no format tag.
    save_file(_model().state_dict(), str(foreign), metadata={"config": config_to_json(CONFIG)})
    mismatched = tmp_path / "mismatched.safetensors"
    wider = dataclasses.replace(CONFIG, base_channels=16)
    save_file(_model().state_dict(), str(mismatched), metadata={"format": FORMAT, "config": config_to_json(wider)})
    truncated = tmp_path / "truncated.safetensors"
    save_model(truncated, _model(), {})
    truncated.write_bytes(truncated.read_bytes()[:-1000])
    no_config = tmp_path / "no_config.safetensors"
    save_file(_model().state_dict(), str(no_config), metadata={"format": FORMAT})
    return {
        "text file": text, "random bytes": random_bytes, "no format tag": foreign,
        "weights do not match config": mismatched, "truncated": truncated, "no config": no_config,
        "missing": tmp_path / "missing.safetensors",
    }


@pytest.mark.parametrize(
    "case", ["text file", "random bytes", "no format tag", "weights do not match config", "truncated",
             "no config", "missing"]
)
def test_load_model_refuses_files_that_are_not_our_models(tmp_path, case):
    path = _refusals(tmp_path)[case]
    with pytest.raises(InputError) as error:
        load_model(path)
    assert error.value.path == path
    message = str(error.value)
    assert str(path) in message and "\n" not in message


def test_cli_refuses_a_non_checkpoint_in_one_line(tmp_path, sample_run, dva_executable):
    bogus = tmp_path / "not_a_checkpoint"
    bogus.write_text(json.dumps({"weights": [1, 2, 3]}))
    out = tmp_path / "invert"
    (tmp_path / "params.yaml").write_text("{}\n")  # defaults, so the checkpoint is what fails
    result = subprocess.run(
        [dva_executable, "invert", str(bogus), str(sample_run.align), str(sample_run.encode), str(out), "--quiet"],
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "not_a_checkpoint" in lines[0] and "Traceback" not in result.stderr
    assert not out.exists()  # nothing half-written for DVC to cache
