"""`dva schedule` registers the batch flow as a cron deployment on a Prefect server bound to
127.0.0.1 (`dva server`), and refuses to start without a server."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from stages.server import server_command

from .test_flows import EDITS, batch_setup  # noqa: F401 - shared fixture


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _get(url: str):
    """GET a JSON document from the test's own loopback server."""
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def _wait_for(predicate, timeout: float, what: str, process: subprocess.Popen):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"{what}: process exited with {process.returncode}: {process.stdout.read()[-2000:]}")
        try:
            result = predicate()
        except OSError:
            result = None
        if result:
            return result
        time.sleep(0.5)
    pytest.fail(f"timed out waiting for {what}")


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_server_binds_to_loopback_by_default():
    import inspect

    import stages.server

    assert inspect.signature(stages.server.cli).parameters["host"].default.default == "127.0.0.1"
    assert server_command("127.0.0.1", 4200) == [
        sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", "4200"
    ]


def test_schedule_without_a_server_is_a_one_line_error(batch_setup, dva_executable, tmp_path):  # noqa: F811
    _, videos, params_file, checkpoint = batch_setup
    env = {key: value for key, value in os.environ.items() if key != "PREFECT_API_URL"}
    result = subprocess.run([dva_executable, "schedule", str(videos), "--cron", "0 3 * * *", "--checkpoint",
                             str(checkpoint), "--edit", "anonymise", "--out", str(tmp_path / "out"), "--params",
                             str(params_file)], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip().startswith("error: dva schedule needs a Prefect server")
    assert "Traceback" not in result.stderr


def test_schedule_registers_a_cron_deployment(batch_setup, dva_executable, tmp_path):  # noqa: F811
    _, videos, params_file, checkpoint = batch_setup
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = os.environ | {"PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_API_URL": api,
                        "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_LOGGING_LEVEL": "WARNING"}
    server = subprocess.Popen([sys.executable, "-m", "stages.cli", "server", "--port", str(port)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    serving = None
    try:
        _wait_for(lambda: _get(f"{api}/health"), 120, "the Prefect server", server)
        serving = subprocess.Popen(
            [dva_executable, "schedule", str(videos), "--cron", "0 3 * * *", "--checkpoint", str(checkpoint),
             "--edit", "anonymise", "--edit", "nudge", "--out", str(tmp_path / "out"), "--params", str(params_file),
             "--name", "nightly"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        deployment = _wait_for(lambda: _get(f"{api}/deployments/name/dva-batch/nightly"), 120, "the deployment",
                               serving)
        assert [item["schedule"]["cron"] for item in deployment["schedules"]] == ["0 3 * * *"]
        assert deployment["parameters"]["edits"] == ["anonymise", "nudge"]
        assert deployment["parameters"]["videos"] == str(Path(videos).resolve())
        if shutil.which("ss"):
            connections = subprocess.run(["ss", "-ltn"], capture_output=True, text=True).stdout
            assert f"127.0.0.1:{port}" in connections and f"0.0.0.0:{port}" not in connections
    finally:
        if serving is not None:
            _stop(serving)
        _stop(server)
