"""Run one command as a child process and measure its wall time and peak RSS (its own, via wait4)."""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class StageRun:
    name: str
    seconds: float
    peak_rss_mb: float
    returncode: int


def run_measured(name: str, cmd: list[str], env: dict[str, str] | None = None) -> StageRun:
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    return StageRun(name, seconds, usage.ru_maxrss / 1024, proc.returncode)
