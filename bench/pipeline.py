"""Benchmark the default pipeline: per-stage wall time, throughput and peak memory.

    python -m bench.pipeline            # every stage of dvc.yaml in its order, outputs as dvc repro would
    python -m bench.pipeline --stages train --stages evaluate
    make bench                          # the same, in the project's venv

Stages run exactly as in dvc.yaml (same commands, in the file's order, which is a valid order of its graph), but
outside DVC so each is timed on its own; the table lists each stage's wall time, peak RSS and throughput, and the
total: from a fresh clone, the per-stage cost of the default `dvc repro`. `--json FILE` also writes them. Run
`dvc commit` afterwards (or `dvc repro`) if you want DVC to adopt the outputs.
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


def _throughput(stage: str) -> str:
    """Items/s, sequences/s or users/s read back from the stage's own outputs."""
    try:
        if stage == "prepare":
            stats = json.loads(Path("data/prepared/stats.json").read_text())
            return f"{stats['interactions']:,} interactions, {stats['users']:,} users, {stats['items']:,} items"
        if stage == "embed":
            manifest = json.loads(Path("data/features/manifest.json").read_text())
            return ", ".join(f"{k}: {v}" for k, v in manifest.get("throughput", {}).items()) or "see manifest.json"
        if stage in ("train", "baseline"):
            folder = Path("models/baseline" if stage == "baseline" else "models")
            summary = json.loads((folder / "train_summary.json").read_text())
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
    stages: list[str] = typer.Option([], help="Stages to run, in order (default: every stage of dvc.yaml)."),  # noqa: B008
    dvc_yaml: Path = Path("dvc.yaml"),
    json_path: Path | None = typer.Option(None, "--json", help="also write the per-stage figures here"),  # noqa: B008
) -> None:
    spec = yaml.safe_load(dvc_yaml.read_text())["stages"]
    unknown = [s for s in stages if s not in spec]
    if unknown:
        raise typer.BadParameter(f"{', '.join(unknown)}: no such stage in {dvc_yaml} (stages: {', '.join(spec)})")
    stages = stages or list(spec)
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
    if json_path is not None:
        rows = {r.name: {"seconds": round(r.seconds, 1), "peak_rss_mb": round(r.peak_rss_mb)} for r in runs}
        total = round(sum(r.seconds for r in runs), 1)
        json_path.write_text(json.dumps({"stages": rows, "total_seconds": total}, indent=2) + "\n")


if __name__ == "__main__":
    app()
