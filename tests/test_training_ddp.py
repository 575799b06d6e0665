"""Data-parallel training: two processes train the run one process trains, rank 0 alone writes, and a
worker's failure ends the stage with a one-line error instead of a hang."""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
import yaml
from safetensors.torch import load_file, save_file

from pipeline.core.errors import DvaError
from pipeline.model.diffusion import SamplerSettings
from pipeline.model.settings import TrainParams
from pipeline.model.training import batch_share, build_config, learning_rate, train, training_landmarks
from pipeline.model.unet import DiffusionVideoAutoencoder
from pipeline.params import parse_params
from stages.train import load_clip, train_autoencoder
from tests.conftest import MICRO_PARAMS
from tests.test_training import DATA_HASHES, NANO_MODEL, NANO_TRAIN

# A global batch of 3 frames splits 2 + 1 over two processes: uneven shares test the gradient weighting.
DDP_TRAIN = NANO_TRAIN | dict(frames_per_video=3, steps=3)
# Float summation order differs between one and two processes; Adam turns a near-zero gradient's rounding
# into up to lr-sized updates of single weights, so weights are compared as a whole: the distance between
# the runs as a share of the distance training moved them (measured 0.2% after 3 steps).
RELATIVE_TOLERANCE = 0.01
LOSS_TOLERANCE = 1e-4


def _distance(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return sum((a[name].double() - b[name].double()).pow(2).sum() for name in b).sqrt().item()


def _initial(clip, config) -> dict[str, torch.Tensor]:
    # The weights train() starts from: the same seed, architecture and landmark statistics.
    torch.manual_seed(TrainParams(**DDP_TRAIN).seed)
    model = DiffusionVideoAutoencoder(config, SamplerSettings())
    model.standardise_landmarks(training_landmarks([clip]))
    return model.state_dict()


def _rank(rank: int, store: str, clip, config, folder: Path) -> None:
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=store, rank=rank, world_size=2)
    logged = []
    result = train([clip], config, SamplerSettings(), TrainParams(**DDP_TRAIN), torch.device("cpu"),
                   folder / f"state{rank}.safetensors", DATA_HASHES, log=lambda step, record: logged.append(step),
                   distributed=(rank, 2))
    torch.distributed.destroy_process_group()
    save_file(result.model.state_dict(), str(folder / f"ema{rank}.safetensors"))
    (folder / f"run{rank}.json").write_text(json.dumps({"logged": logged, "history": result.history}))


@pytest.fixture(scope="module")
def clip(sample_run):
    return load_clip(sample_run.align, sample_run.encode)[0]


def test_two_processes_train_as_one_process_does(clip, tmp_path):
    config = build_config(NANO_MODEL, id_dim=len(clip.identity))
    with tempfile.TemporaryDirectory() as rendezvous:
        mp.spawn(_rank, args=(f"file://{rendezvous}/store", clip, config, tmp_path), nprocs=2, join=True)
    single = train([clip], config, SamplerSettings(), TrainParams(**DDP_TRAIN), torch.device("cpu"),
                   tmp_path / "single.safetensors", DATA_HASHES)
    ranks = [load_file(str(tmp_path / f"ema{rank}.safetensors")) for rank in (0, 1)]
    runs = [json.loads((tmp_path / f"run{rank}.json").read_text()) for rank in (0, 1)]
    # The EMA weights are the same on both ranks, to the bit, and one process's within the tolerance.
    assert all(torch.equal(ranks[0][name], ranks[1][name]) for name in ranks[0])
    expected = single.model.state_dict()
    moved = _distance(expected, _initial(clip, config))
    assert _distance(ranks[0], expected) < RELATIVE_TOLERANCE * moved, (_distance(ranks[0], expected), moved)
    # The logged losses are the global batch's, not rank 0's share's.
    losses = [[record[key] for key in ("loss", "l_simple", "l_reg")] for record in runs[0]["history"]]
    reference = [[record[key] for key in ("loss", "l_simple", "l_reg")] for record in single.history]
    assert torch.allclose(torch.tensor(losses), torch.tensor(reference), atol=LOSS_TOLERANCE, rtol=0)
    # Rank 0 alone checkpoints and logs.
    assert (tmp_path / "state0.safetensors").is_file() and not (tmp_path / "state1.safetensors").exists()
    assert runs[0]["logged"] == [1, 2, 3] and runs[1]["logged"] == [] and runs[1]["history"] == []
    # Its checkpoint resumes in one process: two more steps end where five steps of one process do.
    resumed = train([clip], config, SamplerSettings(), TrainParams(**DDP_TRAIN | {"steps": 5}),
                    torch.device("cpu"), tmp_path / "state0.safetensors", DATA_HASHES)
    straight = train([clip], config, SamplerSettings(), TrainParams(**DDP_TRAIN | {"steps": 5}),
                     torch.device("cpu"), tmp_path / "straight.safetensors", DATA_HASHES)
    assert resumed.start_step == 3
    gap = _distance(resumed.model.state_dict(), straight.model.state_dict())
    assert gap < RELATIVE_TOLERANCE * _distance(straight.model.state_dict(), _initial(clip, config)), gap


def test_the_stage_spawns_processes_and_a_failing_worker_is_one_error(sample_run, tmp_path):
    data = tmp_path / "data"
    for stage, folder in (("align", sample_run.align), ("encode", sample_run.encode)):
        (data / stage).mkdir(parents=True)
        (data / stage / "sample").symlink_to(folder, target_is_directory=True)
    settings = parse_params(copy.deepcopy(MICRO_PARAMS) | {"model": NANO_MODEL.model_dump(),
                                                           "train": DDP_TRAIN | {"steps": 2, "processes": 2}})
    out = tmp_path / "train"
    summary = train_autoencoder(settings, data, out, tmp_path / "state.safetensors",
                                progress=False, quiet=True)
    assert summary["processes"] == 2 and summary["steps"] == 2
    assert {path.name for path in out.iterdir()} >= {"model.safetensors", "summary.json", "lineage.json", "live"}
    # Rank 0 cannot write its checkpoint (the state file's folder is a file): the stage stops with the
    # worker's error, removes its partial output and keeps the previous one.
    blocker = tmp_path / "blocker"
    blocker.write_text("not a folder")
    with pytest.raises(DvaError) as failure:
        train_autoencoder(settings, data, out, blocker / "state.safetensors",
                          progress=False, quiet=True)
    message = str(failure.value)
    assert message.startswith("training process 0 failed: ") and "\n" not in message, message
    assert json.loads((out / "summary.json").read_text())["steps"] == 2


def _state_and_parent(pid: int) -> tuple[str, int] | None:
    """The process state letter and parent pid of `pid` from /proc (they follow the parenthesised name)."""
    try:
        state, ppid = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[:2]
    except (OSError, IndexError):
        return None
    return state, int(ppid)


def _running(pid: int) -> bool:
    """`pid` exists and is not a zombie."""
    found = _state_and_parent(pid)
    return found is not None and found[0] != "Z"


def _running_children(pid: int) -> list[int]:
    """Live (not zombie) processes whose parent is `pid`."""
    children = []
    for entry in Path("/proc").iterdir():
        found = _state_and_parent(int(entry.name)) if entry.name.isdigit() else None
        if found is not None and found[1] == pid and found[0] != "Z":
            children.append(int(entry.name))
    return children


def _wait_until(predicate, seconds: float):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if result := predicate():
            return result
        time.sleep(0.2)
    return predicate()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="workers follow their parent through Linux's prctl")
def test_killing_the_stage_stops_its_training_processes(sample_run, tmp_path, dva_executable):
    data = tmp_path / "data"
    for stage, folder in (("align", sample_run.align), ("encode", sample_run.encode)):
        (data / stage).mkdir(parents=True)
        (data / stage / "sample").symlink_to(folder, target_is_directory=True)
    params = copy.deepcopy(MICRO_PARAMS) | {"model": NANO_MODEL.model_dump(exclude_none=True),
                                            "train": DDP_TRAIN | {"steps": 100_000, "processes": 2,
                                                                  "checkpoint_every": 1}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    stage = subprocess.Popen([dva_executable, "train", str(tmp_path / "train"), "--data-root", str(data),
                              "--state-file", str(tmp_path / "state.safetensors"),
                              "--params", str(tmp_path / "params.yaml"), "--quiet"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             # As a background job of a script starts it (`dva train &`): SIGINT ignored.
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    workers: list[int] = []
    try:
        # Two spawned trainers (multiprocessing's resource tracker is a third child).
        def trainers():
            found = [pid for pid in _running_children(stage.pid)
                     if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()]
            return found if len(found) == 2 else None

        workers = _wait_until(trainers, 120) or []
        assert len(workers) == 2, "the stage did not start two training processes"
        # Killed while still starting, a worker would die anyway (its start-up data comes through a pipe from the
        # parent): wait for the first checkpoint, so that both are in the training loop.
        assert _wait_until((tmp_path / "state.safetensors").is_file, 120), "training never reached a checkpoint"
        # A plain kill of the stage: its workers must not train on alone.
        stage.send_signal(signal.SIGTERM)
        stage.wait(timeout=30)
        stopped = _wait_until(lambda: not any(_running(pid) for pid in workers), 30)
        assert stopped, "training processes outlived the stage"
    finally:
        stage.kill()
        for pid in workers:
            if _running(pid):
                os.kill(pid, signal.SIGKILL)


def test_batch_shares_cover_the_batch_once():
    for size in range(1, 9):
        for world in range(1, size + 1):
            rows = [batch_share(size, rank, world) for rank in range(world)]
            covered = [index for share in rows for index in range(size)[share]]
            assert covered == list(range(size))
            assert max(s.stop - s.start for s in rows) - min(s.stop - s.start for s in rows) <= 1


def test_learning_rate_schedules():
    constant = TrainParams(lr=1e-3, steps=100)
    assert [learning_rate(constant, step) for step in (0, 50, 99)] == [1e-3] * 3
    cosine = TrainParams(lr=1e-3, steps=110, lr_schedule="cosine", warmup_steps=10)
    assert learning_rate(cosine, 0) == pytest.approx(1e-4)  # the first of 10 warm-up steps
    assert learning_rate(cosine, 9) == pytest.approx(1e-3)
    assert learning_rate(cosine, 60) == pytest.approx(5e-4)  # half way through the decay
    assert learning_rate(cosine, 109) < 1e-6
