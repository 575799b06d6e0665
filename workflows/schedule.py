"""Serve the batch flow on a schedule, as a deployment on a Prefect server (see `dva server`).

Each scheduled run reads the folder or manifest again, so videos added since the last run are
processed and the others are found cached. Needs PREFECT_API_URL pointing at a running server,
e.g. `export PREFECT_API_URL=http://127.0.0.1:4200/api` after `dva server`. Stops on Ctrl-C.
"""

from __future__ import annotations

from pathlib import Path

import typer

from pipeline.core.errors import DvaError


def serve_schedule(videos: Path, checkpoint: Path, edits: list[str], out: Path, params_file: Path, cron: str,
                   name: str, retries: int, retry_delay: float, evaluate: bool = False) -> None:
    """Register the deployment `dva-batch/<name>` with a cron schedule and run its flow runs here."""
    from prefect.settings import PREFECT_API_URL

    from workflows.batch import check_batch_inputs
    from workflows.flows import batch_flow

    if not PREFECT_API_URL.value():
        raise DvaError("dva schedule needs a Prefect server: start one with `dva server` and set "
                       "PREFECT_API_URL=http://127.0.0.1:4200/api")
    check_batch_inputs(videos, checkpoint, edits, params_file)
    from prefect.schedules import Cron

    try:
        schedule = Cron(cron)
    except ValueError as exc:
        raise DvaError(f"--cron {cron!r}: {exc}") from None
    batch_flow.serve(
        name=name,
        schedules=[schedule],
        parameters={"videos": str(videos.resolve()), "edits": edits, "checkpoint": str(checkpoint.resolve()),
                    "out_root": str(out.resolve()), "params_file": str(params_file.resolve()),
                    "retries": retries, "retry_delay_seconds": retry_delay, "evaluate": evaluate},
    )


def cli(
    videos: Path = typer.Argument(..., help="Folder of videos, or a manifest (.txt/.csv/.yaml) of paths."),
    cron: str = typer.Option(..., "--cron", help='Cron schedule, e.g. "0 2 * * *" (every night at 02:00).'),
    checkpoint: Path = typer.Option(..., "--checkpoint", help="Model file from `dva train`."),
    edit: list[str] = typer.Option(..., "--edit", help="Edit name, spec file or inline JSON; repeatable."),
    out: Path = typer.Option(..., "--out", help="Output folder (reused by every run)."),
    params: Path = typer.Option(Path("params.yaml"), "--params", help="Parameters file."),
    name: str = typer.Option("scheduled", help="Deployment name (shown as dva-batch/NAME)."),
    retries: int = typer.Option(2, min=0, help="Retries of a task after an unexpected error."),
    retry_delay: float = typer.Option(10.0, min=0, help="Seconds before the first retry."),
    evaluate: bool = typer.Option(False, "--evaluate", help="Also score every edit (decodes its per-frame baseline)."),
) -> None:
    serve_schedule(videos, checkpoint, edit, out, params, cron, name, retries, retry_delay, evaluate)
