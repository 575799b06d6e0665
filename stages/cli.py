"""`dva`: one subcommand per pipeline stage (what `dvc.yaml` calls)."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path

import typer

from pipeline.errors import DvaError
from pipeline.params import Params, load_params

app = typer.Typer(
    help="Temporally consistent face video editing with Diffusion Video Autoencoders.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

PARAMS_OPTION = typer.Option(Path("params.yaml"), "--params", help="Validated parameters file.")
QUIET_OPTION = typer.Option(False, "--quiet", "-q", help="No progress bars.")


def stage_params(path: Path | None) -> Params:
    """Parameters for a stage run: the given file, or defaults when it does not exist."""
    if path is not None and Path(path).exists():
        return load_params(path)
    return Params()


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


def register(name: str, function: Callable, help_text: str) -> None:
    """Add a stage's CLI function as `dva NAME`."""
    app.command(name, help=help_text)(one_line_errors(function))


def main() -> None:
    """Console-script entry point."""
    from stages import align, edit, encode, evaluate, extract, fit_classifiers, invert, render, sample, train

    stages = (sample, extract, align, encode, train, fit_classifiers, invert, edit, render, evaluate)
    for module in stages:
        register(module.COMMAND, module.cli, module.__doc__.strip().splitlines()[0])
    app(prog_name="dva")


if __name__ == "__main__":
    sys.exit(main())
