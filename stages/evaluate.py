"""Stage `evaluate`: full-ranking metrics of the model, the SASRec baseline and popularity, and the paired
comparison model - baseline with a bootstrap CI -> reports/ (metrics.json, report.md, topk.parquet, plots)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from pipeline.cli import cli_errors
from pipeline.config import EvaluateConfig, load_section
from pipeline.data.cold_start import load_cold_items
from pipeline.data.splits import load_split
from pipeline.evaluation import (
    evaluate_heads,
    evaluate_model,
    evaluate_popularity,
    load_user_ids,
    paired_comparison,
)
from pipeline.experiments import experiments_sections
from pipeline.features.store import load_catalog
from pipeline.inference import load_trained, resolve_device
from pipeline.io import check_disjoint
from pipeline.references import cold_start_references
from pipeline.report import paired_text, runs_of, text_table, write_report

BASELINE_RUN = "baseline"
app = typer.Typer(add_completion=False)


@app.command()
@cli_errors
def main(
    params: Annotated[Path, typer.Option(help="params file; reads only `evaluate`")] = Path("params.yaml"),
    prepared: Annotated[Path, typer.Option(help="prepare stage output")] = Path("data/prepared"),
    features: Annotated[Path, typer.Option(help="embed stage output")] = Path("data/features"),
    model: Annotated[Path, typer.Option(help="train stage checkpoint")] = Path("models/model.pt"),
    baseline: Annotated[Path, typer.Option(help="baseline stage checkpoint")] = Path("models/baseline/model.pt"),
    out: Annotated[Path, typer.Option(help="metrics.json, report.md, topk.parquet, plots/")] = Path("reports"),
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N, for the user vectors")] = "auto",
    experiments: Annotated[Path, typer.Option(help="bench.ablations results copied into report.md")] = Path(
        "reports/experiments"
    ),
) -> None:
    """Rank all items for every user (history masked) at valid and test; write reports/ and print the tables."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    cfg: EvaluateConfig = load_section(EvaluateConfig, "evaluate", params)
    files = {"--model": model, "--baseline": baseline, "--model's dvclive": model.parent / "dvclive"}
    check_disjoint({"--out": out}, {"--prepared": prepared, "--features": features}, files)
    torch_device = resolve_device(device)
    net, checkpoint, catalog = load_trained(model, features, prepared, torch_device)
    base_net, base_checkpoint, _ = load_trained(baseline, features, prepared, torch_device)
    split = load_split(prepared)
    cold = load_cold_items(prepared)  # None in the normal setting

    def ranking(ckpt: dict) -> dict:
        return {
            "ks": cfg.ks,
            "batch_size": cfg.batch_size,
            "max_seq_len": ckpt["max_seq_len"],
            "device": torch_device,
            "cold": cold,
            "index": cfg.index_config,
        }

    result = evaluate_model(net, split, name=checkpoint["model_name"], **ranking(checkpoint))
    base = evaluate_model(base_net, split, name=BASELINE_RUN, **ranking(base_checkpoint))
    heads = evaluate_heads(net, split, checkpoint["model_name"], **ranking(checkpoint))  # ODMT: each head alone
    others = [base]
    if cfg.popularity_baseline:
        others.append(evaluate_popularity(split, catalog.num_items, cfg.ks, cold=cold))
    if cold is not None:  # training-free references for the cold-start rows (pipeline/references.py)
        content = load_catalog(features, prepared, ("text", "image"), all_modalities_required=False)
        tables = {m: t.numpy() for m, t in content.features.items()}
        others += cold_start_references(split, tables, cold, cfg.knn_history, cfg.ks)
    stages = paired_comparison(result, base, cfg.bootstrap_resamples, cfg.bootstrap_seed)
    paired = {"model": result.name, "baseline": BASELINE_RUN, "resamples": cfg.bootstrap_resamples}
    paired |= {"seed": cfg.bootstrap_seed, "stages": stages}
    write_report(
        out,
        result,
        others + heads,
        user_ids=load_user_ids(prepared, split),
        num_items=catalog.num_items,
        checkpoint=checkpoint,
        stats_path=prepared / "stats.json",
        train_summary_path=model.parent / "train_summary.json",
        dvclive_dir=model.parent / "dvclive",
        extra_sections=experiments_sections(experiments),
        paired=paired,
    )
    typer.echo(text_table(runs_of([result, *others, *heads])))
    typer.echo(paired_text(stages, result.name, BASELINE_RUN))


if __name__ == "__main__":
    app()
