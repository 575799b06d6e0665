"""Start a Prefect server for `dva schedule`, bound to 127.0.0.1 unless told otherwise.

Equivalent to `prefect server start --host 127.0.0.1 --port 4200`; then
`export PREFECT_API_URL=http://127.0.0.1:4200/api` in the shell that runs `dva schedule`.
"""

from __future__ import annotations

import os
import sys

import typer


def server_command(host: str, port: int) -> list[str]:
    """The argument list that starts the server (never a shell string)."""
    return [sys.executable, "-m", "prefect", "server", "start", "--host", host, "--port", str(port)]


def cli(
    host: str = typer.Option("127.0.0.1", help="Address to bind; anything but loopback exposes the API."),
    port: int = typer.Option(4200, min=1, max=65535, help="Port."),
) -> None:
    command = server_command(host, port)
    os.execv(command[0], command)
