"""How work runs on a device: the precision rule, channels-last, batch sizes from free memory, the GPU bench."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from pipeline.core.device import (
    CPU_BATCH_SIZE,
    GPU_MEMORY_FRACTION,
    MAX_AUTO_BATCH,
    channels_last,
    precision_dtype,
    resolve_batch_size,
    use_channels_last,
)
from pipeline.editing.settings import EditParams
from pipeline.model.inversion import (
    InvertParams,
    denoiser,
    inference_batch_size,
    inference_bytes_per_frame,
    prepare_model,
)
from pipeline.model.settings import InferenceSettings
from pipeline.model.unet import DiffusionVideoAutoencoder, paper, tiny

REPO = Path(__file__).resolve().parents[1]
CPU, CUDA = torch.device("cpu"), torch.device("cuda")
GIB = 2**30


@pytest.mark.parametrize("bf16", [True, False])
def test_auto_precision_is_half_on_cuda_and_full_on_the_cpu(monkeypatch, bf16):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: bf16)
    assert precision_dtype("auto", CUDA) == (torch.bfloat16 if bf16 else torch.float16)
    assert precision_dtype("auto", CPU) is None


def test_an_explicit_precision_is_used_as_asked_on_any_device():
    assert precision_dtype("float32", CUDA) is None
    assert precision_dtype("bfloat16", CPU) == torch.bfloat16
    assert precision_dtype("float16", CUDA) == torch.float16


def test_channels_last_auto_means_cuda_only():
    assert use_channels_last("auto", CUDA) and not use_channels_last("auto", CPU)
    assert use_channels_last(True, CPU) and not use_channels_last(False, CUDA)
    x = torch.randn(2, 3, 8, 8)
    assert channels_last(x, True).is_contiguous(memory_format=torch.channels_last)
    assert channels_last(x, False) is x
    assert channels_last(torch.randn(2, 3), True).shape == (2, 3)  # not an image batch: left alone


def test_a_fixed_batch_size_is_kept_and_auto_is_the_old_default_on_the_cpu():
    assert resolve_batch_size(5, CUDA, bytes_per_item=GIB) == 5
    assert resolve_batch_size("auto", CPU, bytes_per_item=GIB) == CPU_BATCH_SIZE == 32


@pytest.mark.parametrize(("free", "per_item", "expected"), [
    (10 * GIB, 100 * 2**20, int(10 * GIB * GPU_MEMORY_FRACTION) // (100 * 2**20)),  # 71: what fits
    (GIB, 2 * GIB, 1),  # not even one item fits: still one, the GPU's error will say why
    (1000 * GIB, 2**20, MAX_AUTO_BATCH),  # capped
])
def test_auto_batch_size_fills_the_free_gpu_memory(monkeypatch, free, per_item, expected):
    asked = []
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: asked.append(device) or (free, 2 * free))
    assert resolve_batch_size("auto", CUDA, bytes_per_item=per_item) == expected
    assert asked == [CUDA]


def test_the_stages_resolve_their_batch_from_the_model_estimate(monkeypatch):
    model = DiffusionVideoAutoencoder(tiny())
    assert inference_batch_size(InvertParams(), model) == CPU_BATCH_SIZE
    assert inference_batch_size(EditParams(batch_size=6), model) == 6
    seen = []

    def resolve(setting, device, bytes_per_item):
        seen.append((setting, device, bytes_per_item))
        return 7

    monkeypatch.setattr("pipeline.model.inversion.resolve_batch_size", resolve)
    assert inference_batch_size(InvertParams(), model) == 7
    assert seen == [("auto", CPU, inference_bytes_per_frame(model.config))]


def test_the_memory_estimate_covers_the_measured_cpu_peak():
    # 445 MB: the resident memory one more frame of the paper preset's forward took on the CPU (float32),
    # measured by benchmarks/gpu_bench.py's probe; the estimate must not plan with less.
    paper_bytes = inference_bytes_per_frame(paper())
    assert 445e6 <= paper_bytes <= 1.5 * 445e6
    assert inference_bytes_per_frame(tiny()) < paper_bytes / 30  # 16x the pixels, 4x the width


@pytest.mark.parametrize("section", [InvertParams, EditParams])
def test_settings_accept_auto_and_refuse_nonsense(section):
    assert section().batch_size == "auto" and section().precision == "auto" and section().channels_last == "auto"
    assert section(batch_size=3, channels_last=True, precision="bfloat16").batch_size == 3
    for bad in ({"batch_size": 0}, {"batch_size": "big"}, {"channels_last": "sometimes"}, {"precision": "fp8"}):
        with pytest.raises(ValidationError):
            section(**bad)


def test_auto_settings_on_the_cpu_are_bit_identical_to_plain_float32():
    torch.manual_seed(0)
    model = DiffusionVideoAutoencoder(tiny()).eval()
    with torch.no_grad():  # the output layers start at zero: perturb them, or every setting gives zeros
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.02)
    x, z = torch.randn(2, 3, 64, 64), torch.randn(2, model.config.embed_dim)
    t = torch.tensor([10, 900])
    with torch.inference_mode():
        plain = model(x, t, z)
        prepared = prepare_model(model, InferenceSettings())
        auto = denoiser(prepared, z, InferenceSettings())(x, t)
    assert all(p.is_contiguous() for p in prepared.parameters())
    assert plain.abs().max() > 0.01 and torch.equal(auto, plain)


@pytest.mark.slow
def test_gpu_bench_runs_on_the_cpu_and_writes_its_figures(tmp_path):
    out = tmp_path / "gpu.json"
    command = [sys.executable, str(REPO / "benchmarks" / "gpu_bench.py"), "--presets", "tiny", "--batches", "1", "2",
               "auto", "--iterations", "1", "--steps", "2", "--frames", "2", "--train-steps", "1", "--out", str(out)]
    run = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=900)
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["device"]["type"] == "cpu" and result["settings"]["autocast_dtype"] == "None"
    assert result["matmul_ceiling"]["float32_tflops"] > 0 and "bfloat16_tflops" not in result["matmul_ceiling"]
    tiny_result = result["presets"]["tiny"]
    assert tiny_result["unet_parameters"] == DiffusionVideoAutoencoder(tiny()).unet_parameters()
    assert tiny_result["auto_batch_size"] == CPU_BATCH_SIZE
    assert [row["batch"] for row in tiny_result["forwards"]] == [1, 2, CPU_BATCH_SIZE]
    assert all(row["forwards_per_s"] > 0 and row["achieved_tflops"] > 0 for row in tiny_result["forwards"])
    memory = tiny_result["memory_per_frame_mib"]
    assert memory["estimate"] == pytest.approx(inference_bytes_per_frame(tiny()) / 2**20)
    assert isinstance(memory["measured"], float) and memory["measured_by"].startswith("cpu")
    stages = tiny_result["stages"]
    # BDIA at S=2: 3 forwards to invert and re-decode a frame, 1 per decode, an edit and its baseline: 2.
    assert stages["invert"]["unet_forwards_per_frame"] == 3 and stages["edit_decode"]["unet_forwards_per_frame"] == 2
    assert all(stages[name]["frames_per_s"] > 0 for name in ("invert", "edit_decode", "train_step"))
    assert stages["train_step"]["frames_per_step"] == 8
