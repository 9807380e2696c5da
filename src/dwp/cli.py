"""The ``dwp`` command line: one sub-command per pipeline step, plus experiments.

Each command lives in ``dwp.commands.<module>``; this file only wires them together and
turns ``DwpError`` (bad user input) into a one-line message with exit code 2.
"""

from __future__ import annotations

import sys

import typer

from dwp import __version__
from dwp.commands import bnn as bnn_cmd
from dwp.commands import data as data_cmd
from dwp.commands import experiment as experiment_cmd
from dwp.commands import kernels as kernels_cmd
from dwp.commands import priors as priors_cmd
from dwp.commands import reproduce as reproduce_cmd
from dwp.commands import source as source_cmd
from dwp.runtime import DwpError

app = typer.Typer(
    name="dwp",
    help="Learned priors over convolution kernels: the Deep Weight Prior and its baselines.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",  # reflow docstring paragraphs to the terminal width
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"dwp {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Learned priors over convolution kernels: the Deep Weight Prior and its baselines."""


# Registered in pipeline order (that is the order `dwp --help` lists them in).
app.add_typer(data_cmd.app, name="data", help="Inspect the datasets dwp reads.")
app.command("train-source", **source_cmd.COMMAND)(source_cmd.train_source)
app.command("collect-kernels", **kernels_cmd.COMMAND)(kernels_cmd.collect_kernels_cmd)
app.command("merge-kernels", **kernels_cmd.MERGE_COMMAND)(kernels_cmd.merge_kernels_cmd)
app.command("train-prior", **priors_cmd.TRAIN_COMMAND)(priors_cmd.train_prior)
app.command("sample-prior", **priors_cmd.SAMPLE_COMMAND)(priors_cmd.sample_prior)
app.command("train-bnn", **bnn_cmd.COMMAND)(bnn_cmd.train_bnn)
app.add_typer(experiment_cmd.app, name="experiment")
experiment_cmd.app.command("classification", **bnn_cmd.EXPERIMENT_COMMAND)(
    bnn_cmd.experiment_classification
)
app.command("reproduce", **reproduce_cmd.COMMAND)(reproduce_cmd.reproduce)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``dwp`` script; returns the exit code."""
    try:
        app(args=argv, standalone_mode=False)
    except DwpError as exc:
        typer.echo(f"dwp: error: {exc}", err=True)
        return 2
    except typer.Exit as exc:
        return exc.exit_code
    except KeyboardInterrupt:
        typer.echo("dwp: interrupted (a rerun of the same command resumes)", err=True)
        return 130
    except Exception as exc:  # click usage errors
        try:
            import click
        except ImportError:  # typer >= 0.16 vendors click as typer._click
            from typer import _click as click

        if isinstance(exc, click.exceptions.ClickException):
            exc.show()
            return exc.exit_code
        # click.exceptions.Abort; typer >= 0.16 without click has typer.Abort instead
        abort = getattr(click.exceptions, "Abort", None) or getattr(typer, "Abort", None)
        if abort is not None and isinstance(exc, abort):
            return 1
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
