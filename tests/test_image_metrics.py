"""MS-SSIM at the demo's crop size and LPIPS from a local network file; both in `dva evaluate`'s metrics.

LPIPS tests use a randomly initialised network written to a file: they prove loading, checking and
wiring, not the figures (those need the published weights, README: reconstruction metrics).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torchmetrics.functional.image import multiscale_structural_similarity_index_measure

from pipeline.core.errors import InputError, MissingWeightsError
from pipeline.evaluation.image_metrics import (
    LPIPS_PARAM,
    MS_SSIM_BETAS,
    load_lpips,
    lpips_network,
    lpips_state_from_published,
    ms_ssim,
    ms_ssim_settings,
    reconstruction_similarity,
    to_unit_images,
)
from pipeline.evaluation.settings import EvaluateParams
from pipeline.faces.settings import EncodeParams
from pipeline.faces.tracking import NO_FACE
from pipeline.runs.artifacts import open_crops, read_features, read_reconstruction

# float32 convolutions over a few thousand pixels: agreement to 1e-5 is rounding, not a difference.
FLOAT_TOLERANCE = 1e-5
C1 = (0.01 * 1.0) ** 2  # SSIM's luminance constant for data range 1


def _network_file(path: Path, net: str = "alex", seed: int = 0) -> Path:
    """A complete LPIPS network with random weights, saved under the published head names only.

    The heads are made non-negative, as LPIPS trains them (so distances are >= 0, as with the real ones).
    """
    torch.manual_seed(seed)
    state = {key: (value.abs() if key.startswith("lin") else value).clone().contiguous()
             for key, value in lpips_network(net).state_dict().items() if not key.startswith("lins.")}
    if path.suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)
    return path


def _pair(size: int, noise: float, seed: int = 0, count: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(count, 3, size, size, generator=generator)
    # Smooth-ish content, so the coarse scales see structure rather than averaged-out noise.
    images = torch.nn.functional.avg_pool2d(images, 5, stride=1, padding=2)
    return images, (images + noise * torch.randn(images.shape, generator=generator)).clamp(0, 1)


def test_ms_ssim_keeps_the_window_and_as_many_of_the_papers_scales_as_fit():
    assert ms_ssim_settings(256).betas == MS_SSIM_BETAS  # the paper's crops: the published exponents
    for size, scales in ((64, 3), (128, 4), (256, 5), (32, 2), (16, 1)):
        settings = ms_ssim_settings(size)
        assert settings.scales == scales and settings.window == 11, size
        assert size // 2 ** (scales - 1) >= settings.window  # the coarsest scale holds the window
        assert sum(settings.betas) == pytest.approx(sum(MS_SSIM_BETAS[:scales]) if scales == 5 else 1.0)
    with pytest.raises(ValueError, match="8 px"):
        ms_ssim_settings(8)


def test_ms_ssim_is_torchmetrics_default_at_the_papers_size():
    images, noisy = _pair(256, 0.1)
    expected = multiscale_structural_similarity_index_measure(noisy, images, data_range=1.0, reduction="none")
    assert ms_ssim(noisy, images) == pytest.approx(expected.numpy(), abs=FLOAT_TOLERANCE)


def test_ms_ssim_of_identical_images_is_one_and_falls_with_noise():
    images, _ = _pair(64, 0.0)
    assert ms_ssim(images, images) == pytest.approx(1.0, abs=FLOAT_TOLERANCE)
    scores = [float(ms_ssim(_pair(64, noise)[1], images).mean()) for noise in (0.02, 0.1, 0.3)]
    assert scores[0] > scores[1] > scores[2]


def test_ms_ssim_of_flat_images_is_the_coarsest_luminance_term():
    # Flat images have no contrast or structure: every contrast-structure term is 1, and the score is the
    # luminance term (2ab + C1) / (a^2 + b^2 + C1) raised to the coarsest scale's exponent.
    a, b = 0.5, 0.6
    settings = ms_ssim_settings(64)
    score = ms_ssim(torch.full((1, 3, 64, 64), a), torch.full((1, 3, 64, 64), b), settings)
    luminance = (2 * a * b + C1) / (a**2 + b**2 + C1)
    assert score[0] == pytest.approx(luminance ** settings.betas[-1], abs=FLOAT_TOLERANCE)
    assert settings.betas[-1] == pytest.approx(0.3001 / (0.0448 + 0.2856 + 0.3001))


def test_lpips_from_a_local_file(tmp_path):
    lpips = load_lpips(_network_file(tmp_path / "lpips.safetensors"), "alex", "cpu")
    images, noisy = _pair(64, 0.1, count=3)
    assert lpips(images, images) == pytest.approx(0.0, abs=FLOAT_TOLERANCE)
    distances = lpips(noisy, images)
    assert distances.shape == (3,) and (distances > 0).all()
    # The same network, unloaded and reloaded from a torch file, gives the same distances.
    again = load_lpips(_network_file(tmp_path / "lpips.pt"), "alex", "cpu")
    assert again(noisy, images) == pytest.approx(distances, abs=FLOAT_TOLERANCE)
    other = load_lpips(_network_file(tmp_path / "other.safetensors", seed=1), "alex", "cpu")
    assert not np.allclose(other(noisy, images), distances)


def test_lpips_file_problems_are_one_line_errors_naming_file_and_parameter(tmp_path):
    with pytest.raises(MissingWeightsError, match=LPIPS_PARAM):
        load_lpips(tmp_path / "absent.safetensors")
    path = _network_file(tmp_path / "alex.safetensors")
    with pytest.raises(InputError, match=r"evaluate.lpips_weights.*lpips_net vgg.*missing") as error:
        load_lpips(path, "vgg")
    assert str(path) in str(error.value) and "\n" not in str(error.value)
    partial = tmp_path / "partial.safetensors"
    state = {key: value.clone().contiguous() for key, value in lpips_network("alex").state_dict().items()
             if key.startswith("net.")}
    save_file(state, str(partial))
    with pytest.raises(InputError, match=r"partial.safetensors.*missing \(lin0.model.1.weight"):
        load_lpips(partial)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a network")
    with pytest.raises(InputError, match=f"garbage.safetensors: {LPIPS_PARAM}: not a readable"):
        load_lpips(garbage)


def test_lpips_file_from_the_published_parts(tmp_path):
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    backbone = torchvision.models.alexnet(weights=None).state_dict()  # stands in for the ImageNet weights
    heads = {f"lin{index}.model.1.weight": torch.rand(1, channels, 1, 1)
             for index, channels in enumerate((64, 192, 384, 256, 256))}
    path = tmp_path / "lpips_alex.safetensors"
    save_file(lpips_state_from_published("alex", backbone, heads), str(path))
    network = load_lpips(path, "alex", "cpu")._network
    loaded = network.state_dict()
    assert torch.equal(loaded["net.slice1.0.weight"], backbone["features.0.weight"])
    assert torch.equal(loaded["net.slice5.10.bias"], backbone["features.10.bias"])
    assert torch.equal(loaded["lins.4.model.1.weight"], heads["lin4.model.1.weight"])


def test_reconstruction_similarity_reads_only_the_listed_frames():
    generator = np.random.default_rng(0)
    source = generator.integers(0, 256, (4, 64, 64, 3), dtype=np.uint8)
    decoded = source.copy()
    decoded[2] = generator.integers(0, 256, (64, 64, 3), dtype=np.uint8)  # a frame that is not listed
    decoded[3] = np.clip(source[3].astype(int) + 20, 0, 255).astype(np.uint8)
    scores = reconstruction_similarity(source, decoded, np.array([0, 1, 3]), batch=2)
    assert list(scores) == ["ms_ssim"]
    assert scores["ms_ssim"][:2] == pytest.approx(1.0, abs=FLOAT_TOLERANCE)
    expected = ms_ssim(to_unit_images(decoded[3:]), to_unit_images(source[3:]))
    assert scores["ms_ssim"][2] == pytest.approx(expected[0]) and expected[0] < 1 - 1e-3


@pytest.mark.slow  # an edit, a render and two evaluations: minutes on a shared CPU
def test_evaluate_reports_reconstruction_ms_ssim_and_lpips_only_when_set(micro_model, micro_inversion, sample_run,
                                                                         tmp_path, monkeypatch):
    from stages.edit import edit_video
    from stages.evaluate import METRICS_FILE, evaluate_edit
    from stages.render import render_video

    params = micro_model.settings(edits={"anon": {"kind": "reference", "away": True, "strength": 1.0}})
    edit_video("anon", params, micro_model.checkpoint, sample_run.align, sample_run.encode, micro_inversion,
               tmp_path / "edit", progress=False)
    render_video(sample_run.extract, sample_run.align, micro_inversion, tmp_path / "edit", tmp_path / "render",
                 params.render, progress=False)
    run = (sample_run.align, sample_run.encode, micro_inversion, tmp_path / "edit", tmp_path / "render")

    evaluate_edit(*run, tmp_path / "plain", EncodeParams(), progress=False)
    plain = json.loads((tmp_path / "plain" / METRICS_FILE).read_text())
    faces = [index for index, state in enumerate(read_features(sample_run.encode).status) if state != NO_FACE]
    crops, recon = open_crops(sample_run.align).crops, read_reconstruction(micro_inversion)
    expected = ms_ssim(to_unit_images(recon[faces]), to_unit_images(crops[faces])).mean()
    assert plain["reconstruction"]["ms_ssim"] == pytest.approx(float(expected), abs=FLOAT_TOLERANCE)
    assert "lpips" not in plain["reconstruction"]  # unset: absent, not zero
    assert plain["ms_ssim_settings"]["scales"] == 3 and plain["ms_ssim_settings"]["window"] == 11

    monkeypatch.chdir(tmp_path)  # weights paths are relative, under models/
    (tmp_path / "models").mkdir()
    _network_file(tmp_path / "models" / "lpips.safetensors")
    settings = EvaluateParams(lpips_weights="models/lpips.safetensors", device="cpu")
    evaluate_edit(*run, tmp_path / "with_lpips", EncodeParams(), progress=False, settings=settings)
    scored = json.loads((tmp_path / "with_lpips" / METRICS_FILE).read_text())
    assert scored["reconstruction"]["lpips"] > 0 and np.isfinite(scored["reconstruction"]["lpips"])
    assert scored["reconstruction"]["ms_ssim"] == plain["reconstruction"]["ms_ssim"]
    lineage = json.loads((tmp_path / "with_lpips" / "lineage.json").read_text())
    assert "lpips" in json.dumps(lineage.get("weights", lineage))
