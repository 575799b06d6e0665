"""Faults: every stage killed with SIGKILL mid-run leaves no partial artifact under its final name,
and rerunning it gives outputs identical to an uninterrupted run (stale temporaries are removed);
training killed after a checkpoint resumes from it and ends with the uninterrupted run's weights;
two `dva batch` runs over one output folder at once neither corrupt nor duplicate outputs.
"""

from __future__ import annotations

import copy
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from pipeline.runs.lineage import LINEAGE_FILES, folder_files
from stages.edit import edit_video

from .conftest import MICRO_PARAMS, SAMPLE_FRAMES
from .test_flows import batch_setup, prefect_home  # noqa: F401 - shared fixtures

EDITS = {"anon": {"kind": "reference", "away": True, "strength": 1.0}}
SOCKET_GUARD = """
import os
import socket

_LOG = os.environ.get("DVA_NETWORK_LOG")


def _remote(host):
    return host not in (None, "", "localhost", "::1", "0.0.0.0") and not str(host).startswith("127.")


def _note(what):
    with open(_LOG, "a") as log:
        log.write(f"{os.getpid()} {what}\\n")


if _LOG:
    _connect, _connect_ex, _getaddrinfo = socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo

    def connect(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6) and _remote(address[0]):
            _note(f"connect {address}")
        return _connect(self, address)

    def connect_ex(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6) and _remote(address[0]):
            _note(f"connect {address}")
        return _connect_ex(self, address)

    def getaddrinfo(host, *args, **kwargs):
        if _remote(host):
            _note(f"lookup {host}")
        return _getaddrinfo(host, *args, **kwargs)

    socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo = connect, connect_ex, getaddrinfo
"""


@pytest.fixture(scope="module")
def fault_setup(micro_model, micro_inversion, sample_run, sample_clip, tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    params = copy.deepcopy(MICRO_PARAMS) | {"edits": EDITS, "extract": {"max_frames": SAMPLE_FRAMES}}
    params_file = root / "params.yaml"
    params_file.write_text(yaml.safe_dump(params))
    edit = root / "edit"
    edit_video("anon", micro_model.settings(edits=EDITS), micro_model.checkpoint, sample_run.align, sample_run.encode,
               micro_inversion, edit, progress=False)
    from stages.render import render_video

    render = root / "render"
    render_video(sample_run.extract, sample_run.align, micro_inversion, edit, render,
                 micro_model.settings().render, progress=False)
    checkpoint, run, inversion = str(micro_model.checkpoint), sample_run, str(micro_inversion)
    commands = {
        "extract": ["extract", str(sample_clip)],
        "align": ["align", str(run.extract)],
        "encode": ["encode", str(run.align)],
        "invert": ["invert", checkpoint, str(run.align), str(run.encode)],
        "edit-frames": ["edit-frames", "anon", checkpoint, str(run.align), str(run.encode), inversion],
        "render": ["render", str(run.extract), str(run.align), inversion, str(edit)],
        "evaluate": ["evaluate", str(run.align), str(run.encode), inversion, str(edit), str(render)],
    }
    return root, params_file, commands


def _contents(folder: Path) -> dict[str, bytes]:
    """Every output file but the lineage record (which holds run ids and times)."""
    return {path.relative_to(folder).as_posix(): path.read_bytes() for path in folder_files(folder)
            if path.name not in LINEAGE_FILES}


def _temporaries(out: Path) -> list[Path]:
    return list(out.parent.glob(f".{out.name}.tmp-*"))


def _kill_mid_run(command: list[str], out: Path, attempts: int = 5) -> None:
    """Start `command`, SIGKILL it once its temporary output exists, before it is renamed into place."""
    for _ in range(attempts):
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 300
        while process.poll() is None and not _temporaries(out) and time.monotonic() < deadline:
            time.sleep(0.005)
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        if process.returncode == -signal.SIGKILL and not out.exists():
            return
        if out.exists():
            shutil.rmtree(out)
    pytest.fail(f"could not catch {command[1]} mid-run in {attempts} attempts")


@pytest.mark.parametrize("stage", ["extract", "align", "encode", "invert", "edit-frames", "render", "evaluate"])
def test_killed_stage_reruns_to_identical_outputs(fault_setup, dva_executable, stage):
    root, params_file, commands = fault_setup
    reference, out = root / f"{stage}-reference", root / f"{stage}-killed"
    options = ["--params", str(params_file), "--quiet"]
    subprocess.run([dva_executable, *commands[stage], str(reference), *options], check=True, timeout=600)

    _kill_mid_run([dva_executable, *commands[stage], str(out), *options], out)
    assert not out.exists(), "a partial artifact is visible under the final name"
    assert _temporaries(out), "the killed run left no temporary: it was not caught mid-run"

    subprocess.run([dva_executable, *commands[stage], str(out), *options], check=True, timeout=600)
    assert _contents(out) == _contents(reference)
    assert not _temporaries(out), "the rerun did not remove the killed run's temporary"


def test_killed_training_resumes_from_its_checkpoint(micro_model, dva_executable, tmp_path):
    params = copy.deepcopy(MICRO_PARAMS)
    params["train"] |= {"steps": 8, "checkpoint_every": 2}
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(params))
    train = [dva_executable, "train", "--data-root", str(micro_model.data_root), "--params", str(params_file),
             "--quiet"]
    subprocess.run([*train, str(tmp_path / "straight"), "--state-file", str(tmp_path / "straight.safetensors")],
                   check=True, timeout=600)

    state = tmp_path / "state.safetensors"
    process = subprocess.Popen([*train, str(tmp_path / "killed"), "--state-file", str(state)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while process.poll() is None and not state.exists():
        time.sleep(0.01)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "training finished before it could be killed"
    assert not (tmp_path / "killed").exists()

    resumed = subprocess.run([*train, str(tmp_path / "killed"), "--state-file", str(state)], check=True,
                             capture_output=True, text=True, timeout=600)
    summary = yaml.safe_load((tmp_path / "killed" / "summary.json").read_text())
    assert summary["start_step"] > 0, resumed.stdout
    straight = load_file(tmp_path / "straight" / "model.safetensors")
    killed = load_file(tmp_path / "killed" / "model.safetensors")
    assert straight.keys() == killed.keys()
    assert all((straight[name] == killed[name]).all() for name in straight)


def test_two_batches_over_one_output_folder_at_once(batch_setup, dva_executable, tmp_path):  # noqa: F811
    _, videos, params_file, checkpoint = batch_setup
    one = tmp_path / "videos"
    one.mkdir()
    shutil.copyfile(videos / "clip 1.mp4", one / "clip 1.mp4")
    out = tmp_path / "out"
    # A socket guard in every Python process of the runs (theirs and their Prefect servers'): it notes any
    # connection or name lookup that leaves the machine. Analytics are not switched off here: the
    # project must do it itself, whoever starts it.
    guard = tmp_path / "guard"
    guard.mkdir()
    (guard / "sitecustomize.py").write_text(SOCKET_GUARD)
    network_log = tmp_path / "network.log"
    processes = []
    for run in range(2):
        # Each run its own Prefect database: this is about the output folder they share.
        env = os.environ | {"PREFECT_HOME": str(tmp_path / f"prefect-{run}"), "PREFECT_LOGGING_LEVEL": "WARNING",
                            "PYTHONPATH": str(guard), "DVA_NETWORK_LOG": str(network_log)}
        env.pop("PREFECT_API_URL", None)
        env.pop("PREFECT_SERVER_ANALYTICS_ENABLED", None)
        processes.append(subprocess.Popen(
            [dva_executable, "batch", str(one), "--checkpoint", str(checkpoint), "--edit", "anonymise", "--edit",
             "nudge", "--out", str(out), "--params", str(params_file), "--retries", "0", "--evaluate", "--quiet"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        ))
    outputs = [process.communicate(timeout=900)[0] for process in processes]
    assert [process.returncode for process in processes] == [0, 0], outputs
    assert not network_log.exists(), network_log.read_text()
    for stage in ("extract", "align", "encode", "invert", "edit", "render", "evaluate"):
        built = [path for path in (out / "work" / stage).iterdir() if path.is_dir()]
        assert len(built) == (2 if stage in ("edit", "render", "evaluate") else 1), (stage, built)
    assert not [path for path in out.rglob("*") if ".tmp-" in path.name]
    for edit in ("anonymise", "nudge"):
        target = out / "results" / "clip_1" / edit / "edited.mp4"
        audit = subprocess.run([dva_executable, "audit", str(target)], capture_output=True, text=True, timeout=300)
        assert audit.returncode == 0, audit.stderr
