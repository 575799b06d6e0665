"""Training of the autoencoder: it learns, it resumes bit-for-bit, it refuses stale state, and its
mirroring augmentation keeps the landmark code describing the mirrored image."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.faces.alignment import flip_landmark_feature
from pipeline.model.checkpoint import load_model
from pipeline.model.diffusion import DDIMScheduler, SamplerSettings
from pipeline.model.losses import disentangle_loss
from pipeline.model.settings import ModelParams, TrainParams
from pipeline.model.training import build_config, sample_batch, train
from pipeline.model.unet import DiffusionVideoAutoencoder
from stages.train import load_clip

# Resumption does not depend on model size: a nano UNet keeps these runs at a fraction of a second a step.
NANO_MODEL = ModelParams(
    preset="tiny", base_channels=8, channel_mults=(1, 2, 2), attention_resolutions=(), embed_dim=16
)
NANO_TRAIN = dict(videos_per_batch=1, frames_per_video=2, lr=1e-3, ema_decay=0.9, checkpoint_every=1000,
                  log_every=1, device="cpu")
DATA_HASHES = {"clip": "fixed"}  # stands in for the sha256 of the training files


@pytest.fixture(scope="module")
def clip(sample_run):
    return load_clip(sample_run.align, sample_run.encode)[0]


@pytest.fixture(scope="module")
def nano_config(clip):
    return build_config(NANO_MODEL, id_dim=len(clip.identity))


def _train(clip, config, state: Path, **overrides):
    params = TrainParams(**(NANO_TRAIN | overrides))
    return train([clip], config, SamplerSettings(), params, torch.device("cpu"), state, DATA_HASHES)


@torch.no_grad()
def _loss(model: DiffusionVideoAutoencoder, batch, t, noise1, noise2) -> float:
    model.eval()
    z_face = model.face_code(batch.identity, batch.landmarks)
    return disentangle_loss(model, DDIMScheduler(), batch.images, z_face, batch.masks, t, noise1, noise2).total.item()


def test_training_lowers_the_loss_on_a_fixed_batch(micro_model, clip):
    trained, _ = load_model(micro_model.checkpoint)
    # The weights train() starts from: the same seed, the same architecture.
    torch.manual_seed(micro_model.settings().train.seed)
    initial = DiffusionVideoAutoencoder(trained.config)
    generator = torch.Generator().manual_seed(1234)
    batch = sample_batch([clip], 1, 6, generator, flip=False)
    # Fixed timesteps across the range (not the near-pure-noise end, where L_reg is noise-dominated).
    t = torch.tensor([20, 150, 300, 450, 600, 750])
    noise1 = torch.randn(batch.images.shape, generator=generator)
    noise2 = torch.randn(batch.images.shape, generator=generator)
    before = _loss(initial, batch, t, noise1, noise2)
    after = _loss(trained, batch, t, noise1, noise2)
    assert after < 0.8 * before, (before, after)


def test_interrupted_training_resumes_bit_for_bit(clip, nano_config, tmp_path):
    state = tmp_path / "state.safetensors"
    first = _train(clip, nano_config, state, steps=3)
    assert first.start_step == 0 and state.is_file()  # saved at its last step, whatever checkpoint_every says
    resumed = _train(clip, nano_config, state, steps=6)
    assert resumed.start_step == 3
    # The history carries over the interruption: the curve covers steps 1-6.
    assert [record["step"] for record in resumed.history] == [1, 2, 3, 4, 5, 6]
    straight = _train(clip, nano_config, tmp_path / "other.safetensors", steps=6)
    assert straight.start_step == 0
    expected, actual = straight.model.state_dict(), resumed.model.state_dict()
    assert expected.keys() == actual.keys()
    different = [name for name in expected if not torch.equal(expected[name], actual[name])]
    assert not different, f"resumed EMA weights differ from an uninterrupted run: {different[:5]}"
    # The losses, before and after the resume, are the uninterrupted run's, to the bit.
    assert resumed.history == straight.history


def test_changed_training_params_ignore_existing_state(clip, nano_config, tmp_path):
    state = tmp_path / "state.safetensors"
    _train(clip, nano_config, state, steps=2)
    # Same params: the state is picked up (and nothing is left to do).
    assert _train(clip, nano_config, state, steps=2).start_step == 2
    # Another learning rate: the state belongs to a different run and must not be continued.
    assert _train(clip, nano_config, state, steps=1, lr=5e-4).start_step == 0
    # The run length and logging cadence are not part of a run's identity.
    assert _train(clip, nano_config, state, steps=1, lr=5e-4, log_every=7).start_step == 1


def test_changed_training_data_ignores_existing_state(clip, nano_config, tmp_path):
    state = tmp_path / "state.safetensors"
    _train(clip, nano_config, state, steps=1)
    params = TrainParams(**(NANO_TRAIN | {"steps": 1}))
    result = train([clip], nano_config, SamplerSettings(), params, torch.device("cpu"), state, {"clip": "re-encoded"})
    assert result.start_step == 0


def test_mirrored_samples_carry_mirrored_landmark_features(clip):
    # The same generator seed draws the same frames and coin flips; only the mirroring differs.
    plain = sample_batch([clip], 1, 16, torch.Generator().manual_seed(7), flip=False)
    flipped = sample_batch([clip], 1, 16, torch.Generator().manual_seed(7), flip=True)
    size = plain.images.shape[-1]
    mirrored = [
        index for index in range(len(plain.images))
        if not torch.equal(flipped.images[index], plain.images[index])
    ]
    kept = sorted(set(range(len(plain.images))) - set(mirrored))
    assert mirrored and kept  # 16 coin flips: both outcomes occur with this seed
    for index in mirrored:
        assert torch.equal(flipped.images[index], plain.images[index].flip(-1))
        assert torch.equal(flipped.masks[index], plain.masks[index].flip(-1))
        expected = flip_landmark_feature(plain.landmarks[index].numpy(), size)
        np.testing.assert_allclose(flipped.landmarks[index].numpy(), expected, atol=1e-6)
    for index in kept:
        assert torch.equal(flipped.landmarks[index], plain.landmarks[index])
    assert torch.equal(flipped.identity, plain.identity)  # identity is mirror-invariant
