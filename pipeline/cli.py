"""What every stage CLI shares: ``@cli.command(app)`` on its typer command, and option types.

``@cli.command(app)`` registers the command with logging set up once (``setup_logging()``: one log format) and one
error line instead of a traceback (``@cli_errors``). A stage that fails prints ``error: <what, where, fix>`` on stderr
and exits with status 1; ``MMREC_DEBUG=1`` in the environment re-raises instead, so the full traceback is shown.
Errors of the tool's own kinds (``ConfigError``, ``DataFormatError``, and ``ValueError``/``OSError`` which the library
raises with a full message) print their message alone; any other exception is printed with its type, as it is most
likely a bug to report.

Typer option types for the options that several stages declare alike are used as ``prepared: cli.Prepared =
Path("data/prepared")`` or ``params: cli.params("only `evaluate`") = DEFAULT_PARAMS``. Defaults stay in each stage,
beside its dvc.yaml path.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import click
import typer
from typer.core import TyperGroup

DEBUG_ENV = "MMREC_DEBUG"
F = TypeVar("F", bound=Callable[..., Any])
_EXPECTED = (ValueError, OSError, KeyError, LookupError)  # ConfigError and DataFormatError are ValueErrors
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
QUIET_FORMAT = "%(levelname)s %(message)s"  # a query printed to the terminal: warnings only, no timestamps

Prepared = Annotated[Path, typer.Option(help="prepare stage output")]
Features = Annotated[Path, typer.Option(help="embed stage output")]
Model = Annotated[Path, typer.Option(help="train stage checkpoint")]
Baseline = Annotated[Path, typer.Option(help="baseline stage checkpoint")]
Device = Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N")]


def params(reads: str) -> Any:
    """The ``--params`` option of a stage that reads the sections ``reads`` of the params file."""
    return Annotated[Path, typer.Option(help=f"params file; reads {reads}")]


def out(writes: str) -> Any:
    """The ``--out`` option of a stage that writes ``writes`` there."""
    return Annotated[Path, typer.Option(help=f"output directory: {writes}")]


def implied_command(route: Callable[[set[str]], str]) -> type[TyperGroup]:
    """A typer group class (``typer.Typer(cls=...)``) for a stage split into subcommands: a command line that names
    none (the form from before the split) runs the one ``route`` names from the set of option names given
    (``--k=3`` counts as ``--k``)."""

    class Group(TyperGroup):
        def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
            if not args or (args[0] not in self.commands and args[0] not in ctx.help_option_names):
                args = [route({arg.split("=")[0] for arg in args}), *args]
            return super().parse_args(ctx, args)

    return Group


def command(app: typer.Typer, name: str | None = None, quiet: bool = False) -> Callable[[F], F]:
    """Register the decorated function as ``app``'s command ``name`` the way every stage's is: logging set up first
    (:func:`setup_logging`; ``quiet`` for a query printed to the terminal) and errors as one line (:func:`cli_errors`).
    """

    def register(function: F) -> F:
        @functools.wraps(function)
        def logged(*args: Any, **kwargs: Any) -> Any:
            setup_logging(quiet)
            return function(*args, **kwargs)

        return app.command(name)(cli_errors(logged))  # type: ignore[arg-type]

    return register


def setup_logging(quiet: bool = False) -> None:
    """Configure the root logger once per stage: INFO with timestamps, or WARNING alone for a terminal query.

    Like ``logging.basicConfig`` it leaves a logger that already has handlers (pytest's capture) as it is.
    """
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format=QUIET_FORMAT if quiet else LOG_FORMAT)


def debug_enabled() -> bool:
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


def error_line(error: BaseException) -> str:
    """``error`` as one line: its message (whitespace runs, newlines included, folded to one space)."""
    message = " ".join(str(error).split()) or type(error).__name__
    if isinstance(error, _EXPECTED):
        return f"error: {message}"
    return f"error: {type(error).__name__}: {message} (unexpected; rerun with {DEBUG_ENV}=1 for the traceback)"


def cli_errors(command: F) -> F:
    """Decorate a typer command so that an exception ends the process with one line on stderr and exit code 1."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        previous = _exit_on_sigterm()
        try:
            return command(*args, **kwargs)
        except (click.exceptions.Exit, typer.Exit, click.ClickException, click.Abort):  # typer.Exit: own class
            raise
        except Terminated as e:  # SIGTERM: cleanup ran (staging folders removed, previous outputs kept)
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(code=128 + signal.SIGTERM) from e
        except Exception as e:
            if debug_enabled():
                raise
            typer.echo(error_line(e), err=True)
            raise typer.Exit(code=1) from e
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)

    return wrapper  # type: ignore[return-value]


class Terminated(BaseException):
    """SIGTERM arrived: raised in the main thread so every ``finally`` (staging cleanup) runs before exiting."""


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated("terminated by SIGTERM; the previous outputs are kept")


def _exit_on_sigterm() -> Any:
    """Turn SIGTERM into :class:`Terminated` for the command's duration (main thread only); the old handler."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, _raise_terminated)
