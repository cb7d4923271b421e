"""What every stage CLI shares (pipeline/cli.py): one log format, and option types that keep each stage's CLI."""

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
