"""What every stage CLI shares (pipeline/cli.py): `@cli.command` (one log format, one error line), and option types
that keep each stage's CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from stages.evaluate import app as evaluate_app
from stages.recommend import app as recommend_app

REPO = Path(__file__).resolve().parents[1]
LOG_TWICE = (
    "import logging, sys; from pipeline.cli import setup_logging; setup_logging(quiet=sys.argv[1] == 'quiet');"
    "setup_logging(); log = logging.getLogger('stages.x'); log.info('info line'); log.warning('warning line')"
)

COMMAND = """
import logging, sys, typer
from pipeline import cli
app = typer.Typer(add_completion=False)
@cli.command(app, "go", quiet=sys.argv[1] == "quiet")
def go(name: str = "x") -> None:
    log = logging.getLogger("stages.x")
    log.info("info line")
    log.warning("warning line")
    raise ValueError(f"{name}: bad value; fix it")
@cli.command(app, "other")
def other() -> None:
    pass
app(sys.argv[2:])  # argv[1] is the logging mode
"""


def logged(mode: str) -> list[str]:
    """stderr of a fresh interpreter (pytest's own log capture would hide the root configuration)."""
    run = subprocess.run([sys.executable, "-c", LOG_TWICE, mode], cwd=REPO, capture_output=True, text=True, check=True)
    return run.stderr.splitlines()


def test_setup_logging_is_info_with_time_and_logger_name_and_the_first_call_wins() -> None:
    lines = logged("stage")
    assert [line.split(" ", 2)[2] for line in lines] == ["INFO stages.x: info line", "WARNING stages.x: warning line"]
    assert all(line[:4].isdigit() for line in lines)  # asctime first


def test_quiet_logging_is_warnings_alone_without_timestamps() -> None:
    assert logged("quiet") == ["WARNING warning line"]  # the second, louder call changed nothing


def test_shared_options_keep_the_names_and_defaults() -> None:
    apps = ((evaluate_app, [], "only `evaluate`"), (recommend_app, ["export"], "only `recommend`"))
    for app, args, stage_help in apps:
        out = CliRunner().invoke(app, [*args, "--help"], env={"COLUMNS": "200"}).output
        for option in ("--params", "--prepared", "--features", "--model", "--baseline", "--out", "--device"):
            assert option in out
        assert f"params file; reads {stage_help}" in out
        assert "[default: data/prepared]" in out and "[default: auto]" in out


def run_command(mode: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", COMMAND, mode, *args], cwd=REPO, capture_output=True, text=True)


def test_a_stage_command_sets_up_logging_and_ends_an_error_with_one_line_and_status_1() -> None:
    run = run_command("stage", "go", "--name", "params.yaml")
    *logs, error = run.stderr.splitlines()
    assert run.returncode == 1 and run.stdout == ""
    assert [line.split(" ", 2)[2] for line in logs] == ["INFO stages.x: info line", "WARNING stages.x: warning line"]
    assert all(line[:4].isdigit() for line in logs)  # asctime first: setup_logging() ran before the command
    assert error == "error: params.yaml: bad value; fix it"


def test_a_quiet_command_logs_warnings_alone_and_keeps_its_name_and_options() -> None:
    run = run_command("quiet", "go")
    assert run.returncode == 1 and run.stderr.splitlines() == ["WARNING warning line", "error: x: bad value; fix it"]
    usage = run_command("quiet", "go", "--help")
    assert usage.returncode == 0 and "--name" in usage.stdout and "[default: x]" in usage.stdout
