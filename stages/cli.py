"""`dva`: one subcommand per pipeline stage (what `dvc.yaml` calls)."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable

import typer

from pipeline.core.errors import DvaError


def one_line_errors(function: Callable) -> Callable:
    """Turn expected failures into one line on stderr and exit status 1, without a traceback."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except DvaError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            typer.echo("error: interrupted", err=True)
            raise typer.Exit(130) from None

    return wrapper


# Command name -> module; only the module a command needs is imported (torch costs seconds).
STAGE_MODULES = {
    "edit": "workflows.one_off",
    "sample": "stages.sample",
    "extract": "stages.extract",
    "align": "stages.align",
    "encode": "stages.encode",
    "train": "stages.train",
    "import-reference": "stages.import_reference",
    "fit-classifiers": "stages.fit_classifiers",
    "invert": "stages.invert",
    "edit-frames": "stages.edit",
    "render": "stages.render",
    "evaluate": "stages.evaluate",
    "audit": "stages.audit",
    "report": "stages.report",
    "batch": "workflows.batch",
    "schedule": "workflows.schedule",
    "server": "stages.server",
}


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    import importlib
    import os

    # No network at run time: Prefect servers this process starts (or execs) send no telemetry.
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"

    arguments = sys.argv[1:] if argv is None else argv
    wanted = [arguments[0]] if arguments and arguments[0] in STAGE_MODULES else list(STAGE_MODULES)
    app = typer.Typer(
        help="Temporally consistent face video editing with Diffusion Video Autoencoders.",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
    )
    for name in wanted:
        module = importlib.import_module(STAGE_MODULES[name])
        app.command(name, help=module.__doc__.strip().splitlines()[0])(one_line_errors(module.cli))
    if len(wanted) == 1:
        # A Typer app with a single command would otherwise take the command name as an argument.
        app.command("help", hidden=True)(lambda: None)
    app(args=arguments, prog_name="dva")


if __name__ == "__main__":
    main()
