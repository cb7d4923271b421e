"""Stage `evaluate`: full-ranking metrics of the model, the SASRec baseline, popularity and the controls (an ID-only
ensemble with `--ensemble-members`, late fusion of the baseline with content kNN where features exist), and the
paired comparisons with a bootstrap CI -> reports/ (metrics.json, report.md, topk.parquet, plots)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pipeline import cli
from pipeline.config import EvaluateConfig, load_section
from pipeline.evaluation.job import evaluate_to_dir

app = typer.Typer(add_completion=False)
MEMBERS_HELP = (
    "SASRec checkpoints of the baseline's recipe at other seeds (repeat the option): adds the ID-only ensemble "
    "control; give as many as the model has heads, minus one"
)


@cli.command(app)
def main(
    params: cli.params("only `evaluate`") = Path("params.yaml"),
    prepared: cli.Prepared = Path("data/prepared"),
    features: cli.Features = Path("data/features"),
    model: cli.Model = Path("models/model.pt"),
    baseline: cli.Baseline = Path("models/baseline/model.pt"),
    out: cli.out("metrics.json, report.md, topk.parquet, plots/") = Path("reports"),
    device: cli.Device = "auto",
    experiments: Annotated[Path, typer.Option(help="bench.ablations results copied into report.md")] = Path(
        "reports/experiments"
    ),
    ensemble_members: Annotated[list[Path] | None, typer.Option(help=MEMBERS_HELP)] = None,
) -> None:
    """Rank all items for every user (history masked) at valid and test; write reports/ and print the tables."""
    cfg: EvaluateConfig = load_section(EvaluateConfig, "evaluate", params)
    typer.echo(evaluate_to_dir(cfg, prepared, features, model, baseline, out, device, experiments, ensemble_members))


if __name__ == "__main__":
    app()
