"""Edit every video of a folder or manifest in one Prefect flow run (no server needed).

Each video goes through extract, align, encode, invert, the edits, render and (`--evaluate`) evaluate,
calling the same stage functions as `dvc repro`. Outputs are cached by content under OUT/work, so
running the same command again does no stage work and a new video in the folder processes only that
video. Finished edits land in OUT/results/<video>/<edit>/, with OUT/summary.csv listing every edit
(status, output; TL-ID, TG-ID when evaluated) and OUT/report/index.html the review site of every
published edit (`dva report`). One bad video is reported failed; the others still finish.
"""

from __future__ import annotations

import os
from pathlib import Path

import typer

from pipeline.core.errors import DvaError, InputError
from pipeline.params import load_params, parse_faces
from pipeline.report.site import write_site

RUNNERS = ("threads", "dask")
EPHEMERAL_STARTUP_SECONDS = 120


def make_task_runner(runner: str, address: str | None, workers: int):
    """Prefect task runner: a thread pool here, or a Dask cluster (given by address, or a local one)."""
    if runner == "threads":
        if address:
            raise DvaError("--address needs --runner dask")
        from prefect.task_runners import ThreadPoolTaskRunner

        return ThreadPoolTaskRunner(max_workers=workers)
    if runner == "dask":
        from prefect_dask import DaskTaskRunner

        if address:
            return DaskTaskRunner(address=address)
        # Port 0: any free port for the scheduler's HTTP server (None still binds Dask's default 8787, and a second
        # cluster on the machine then warns on the terminal that the port is taken).
        return DaskTaskRunner(cluster_kwargs={"n_workers": workers, "threads_per_worker": 1, "processes": True,
                                              "dashboard_address": ":0"})
    raise DvaError(f"--runner {runner!r}: choose one of {', '.join(RUNNERS)}")


def check_batch_inputs(videos: Path, checkpoint: Path, edits: list[str], params_file: Path) -> None:
    """Fail before starting Prefect when the inputs cannot work (one-line errors)."""
    from pipeline.video.video_sources import discover_videos
    from workflows.flows import resolve_edits
    resolve_edits(edits, load_params(params_file))
    discover_videos(videos)
    if not checkpoint.is_file():
        raise InputError(checkpoint, "checkpoint not found")


def run_batch(videos: Path, checkpoint: Path, edits: list[str], out: Path, params_file: Path, runner: str = "threads",
              address: str | None = None, workers: int = 2, retries: int = 2, retry_delay: float = 10.0,
              gpu_slots: int | None = None, quiet: bool = False, evaluate: bool = False,
              faces: str | None = None) -> list:
    """Run the batch flow once (ephemeral Prefect server unless PREFECT_API_URL is set); returns its rows.

    `evaluate` also decodes each edit's per-frame baseline and scores the edit; `faces` replaces `align.faces`.
    """
    check_batch_inputs(videos, checkpoint, edits, params_file)
    if faces is not None:
        parse_faces(faces)  # a bad value stops here, before any server starts
    from prefect.settings import (
        PREFECT_LOGGING_LEVEL,
        PREFECT_SERVER_ANALYTICS_ENABLED,
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS,
        temporary_settings,
    )

    from workflows.flows import batch_flow

    task_runner = make_task_runner(runner, address, workers)
    # A busy machine can take longer than Prefect's default 20 s to start its temporary server.
    # No network at run time: the temporary server must not send telemetry, whoever starts it.
    updates = {PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS: max(
        EPHEMERAL_STARTUP_SECONDS, PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value()),
        PREFECT_SERVER_ANALYTICS_ENABLED: False}
    if quiet:
        updates[PREFECT_LOGGING_LEVEL] = "WARNING"
    with temporary_settings(updates=updates):
        try:
            return batch_flow.with_options(task_runner=task_runner)(
                videos=str(videos), edits=edits, checkpoint=str(checkpoint), out_root=str(out),
                params_file=str(params_file), retries=retries, retry_delay_seconds=retry_delay, gpu_slots=gpu_slots,
                evaluate=evaluate, faces=faces,
            )
        except RuntimeError as exc:
            if "Prefect API" not in str(exc):
                raise
            raise DvaError(f"Prefect: {exc} (start one with `dva server` and set PREFECT_API_URL)") from None


def print_summary(rows: list) -> None:
    """The summary as a table on the terminal."""
    from rich.console import Console
    from rich.table import Table

    def number(value: float | None) -> str:
        return "-" if value is None else f"{value:.4f}"

    table = Table("video", "edit", "status", "TL-ID", "TG-ID", "output / error")
    for row in rows:
        table.add_row(row.video, row.edit, row.status, number(row.tl_id), number(row.tg_id), row.output or row.error)
    Console(stderr=False).print(table)


def quiet_logging() -> None:
    """Leave the terminal to the summary: no Prefect or Dask log lines, here or in the Dask workers.

    Set in the environment before Prefect or Dask is imported (both configure their logging on import)
    and inherited by local Dask workers. Prefect still sends every log, task failures included, to its API
    (the UI); failures reach the terminal through the summary, which names the video rather than the work
    folder the step ran in.
    """
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ["PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL"] = "CRITICAL"
    os.environ["DASK_LOGGING__DISTRIBUTED"] = "error"


def cli(
    videos: Path = typer.Argument(..., help="Folder of videos, or a manifest (.txt/.csv/.yaml) of paths."),
    checkpoint: Path = typer.Option(..., "--checkpoint", help="Model file from `dva train`."),
    edit: list[str] = typer.Option(..., "--edit", help="Edit: a name under `edits` in the params, a spec file or "
                                                        "inline JSON. Repeat for several edits."),
    out: Path = typer.Option(..., "--out", help="Output folder (shared by every worker; reused across runs)."),
    params: Path = typer.Option(Path("params.yaml"), "--params", help="Parameters file (must exist)."),
    runner: str = typer.Option("threads", help="Task runner: threads (this machine) or dask."),
    address: str = typer.Option(None, help="Dask scheduler, e.g. tcp://10.0.0.5:8786 (default: a local cluster)."),
    workers: int = typer.Option(2, min=1, help="Threads, or local Dask worker processes."),
    retries: int = typer.Option(2, min=0, help="Retries of a task after an unexpected error (backoff doubles)."),
    retry_delay: float = typer.Option(10.0, min=0, help="Seconds before the first retry."),
    gpu_slots: int = typer.Option(None, min=1, help="Size of the `gpu` concurrency limit when it is created "
                                                    "(default: the number of visible GPUs, at least 1)."),
    evaluate: bool = typer.Option(False, "--evaluate", help="Also score every edit (TL-ID, TG-ID, identity, "
                                  "landmarks): decodes each edit's per-frame baseline, a second decode of every frame."),
    faces: str = typer.Option(None, "--faces", help="Which faces to edit in every video: largest (the params' "
                              "default), all (one track per person), or track ids such as 0,2."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only warnings and the summary."),
) -> None:
    if quiet:
        quiet_logging()
    rows = run_batch(videos, checkpoint, edit, out, params, runner, address, workers, retries, retry_delay,
                     gpu_slots, quiet, evaluate, faces)
    print_summary(rows)
    if any(row.status != "failed" for row in rows):
        write_site(out, out / "report", progress=not quiet)
    failed = [row for row in rows if row.status == "failed"]
    if failed:
        videos_failed = sorted({row.video for row in failed})
        raise DvaError(f"{len(videos_failed)} video(s) failed ({', '.join(videos_failed)}); see {out / 'summary.csv'}")
