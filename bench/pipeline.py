"""Benchmark the default pipeline: per-stage wall time, throughput and peak memory.

    python -m bench.pipeline            # runs every stage of dvc.yaml in order, outputs as dvc repro would
    python -m bench.pipeline --stages train evaluate

Stages run exactly as in dvc.yaml (same commands), but outside DVC so each is timed on its own. Run `dvc commit`
afterwards (or `dvc repro`) if you want DVC to adopt the outputs.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from pathlib import Path

import typer
import yaml

from bench.run_stage import StageRun, run_measured

app = typer.Typer(add_completion=False)
ORDER = ("prepare", "embed", "train", "evaluate")


def _throughput(stage: str) -> str:
    """Items/s, sequences/s or users/s read back from the stage's own outputs."""
    try:
        if stage == "prepare":
            stats = json.loads(Path("data/prepared/stats.json").read_text())
            return f"{stats['interactions']:,} interactions, {stats['users']:,} users, {stats['items']:,} items"
        if stage == "embed":
            manifest = json.loads(Path("data/features/manifest.json").read_text())
            return ", ".join(f"{k}: {v}" for k, v in manifest.get("throughput", {}).items()) or "see manifest.json"
        if stage == "train":
            summary = json.loads(Path("models/train_summary.json").read_text())
            return f"{summary.get('sequences_per_second', float('nan')):.0f} sequences/s, " + (
                f"{summary.get('seconds_per_epoch', float('nan')):.1f} s/epoch, {summary.get('epochs_run')} epochs"
            )
        if stage == "evaluate":
            timing = json.loads(Path("reports/metrics.json").read_text()).get("timing", {})
            return ", ".join(f"{k}: {v}" for k, v in timing.items()) or "see reports/metrics.json"
    except (OSError, KeyError, ValueError) as err:
        return f"(not available: {err})"
    return ""


@app.command()
def main(
    stages: list[str] = typer.Option(list(ORDER), help="Stages to run, in order."),  # noqa: B008
    dvc_yaml: Path = Path("dvc.yaml"),
) -> None:
    spec = yaml.safe_load(dvc_yaml.read_text())["stages"]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    runs: list[StageRun] = []
    for stage in stages:
        cmd = shlex.split(spec[stage]["cmd"])
        typer.echo(f"== {stage}: {' '.join(cmd)}", err=True)
        run = run_measured(stage, cmd, env)
        runs.append(run)
        if run.returncode != 0:
            raise typer.Exit(f"stage {stage} failed with exit code {run.returncode}")
    typer.echo(f"\n{'stage':<10} {'wall s':>8} {'peak RSS MB':>12}  throughput")
    for run in runs:
        typer.echo(f"{run.name:<10} {run.seconds:>8.1f} {run.peak_rss_mb:>12.0f}  {_throughput(run.name)}")
    typer.echo(f"{'total':<10} {sum(r.seconds for r in runs):>8.1f}")


if __name__ == "__main__":
    app()
