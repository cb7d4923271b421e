"""Stage `evaluate`: full-ranking metrics of the model, the SASRec baseline, popularity and the controls (an ID-only
ensemble with `--ensemble-members`, late fusion of the baseline with content kNN where features exist), and the
paired comparisons with a bootstrap CI -> reports/ (metrics.json, report.md, topk.parquet, plots)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pipeline import cli
from pipeline.claims import controls_report
from pipeline.cli import cli_errors, setup_logging
from pipeline.config import EvaluateConfig, load_section
from pipeline.controls import Member, RankingOptions, check_members, content_tables, evaluation_controls
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
from pipeline.inference import load_trained, resolve_device
from pipeline.io import check_disjoint
from pipeline.models import contract
from pipeline.models.registry import spec
from pipeline.references import cold_start_references
from pipeline.report import paired_text, runs_of, text_table, write_report

BASELINE_RUN = "baseline"
app = typer.Typer(add_completion=False)


@app.command()
@cli_errors
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
    ensemble_members: Annotated[
        list[Path] | None,
        typer.Option(
            help="SASRec checkpoints of the baseline's recipe at other seeds (repeat the option): adds the "
            "ID-only ensemble control; give as many as the model has heads, minus one"
        ),
    ] = None,
) -> None:
    """Rank all items for every user (history masked) at valid and test; write reports/ and print the tables."""
    setup_logging()
    cfg: EvaluateConfig = load_section(EvaluateConfig, "evaluate", params)
    files = {"--model": model, "--baseline": baseline, "--model's dvclive": model.parent / "dvclive"}
    check_disjoint({"--out": out}, {"--prepared": prepared, "--features": features}, files)
    torch_device = resolve_device(device)
    net, checkpoint, catalog = load_trained(model, features, prepared, torch_device)
    base_net, base_checkpoint, _ = load_trained(baseline, features, prepared, torch_device)
    loaded = [load_trained(path, features, prepared, torch_device) for path in ensemble_members or []]
    check_members(base_checkpoint, [ckpt for _, ckpt, _ in loaded], [str(p) for p in ensemble_members or []])
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
    tables = content_tables(features, prepared)  # {} when embed wrote no modality
    if cold is not None:  # training-free references for the cold-start rows (pipeline/references.py)
        others += cold_start_references(split, tables, cold, cfg.knn_history, cfg.ks)
    members = [Member(f"seed{c['train_config']['seed']}", n, c["max_seq_len"]) for n, c, _ in loaded]
    options = RankingOptions(cfg.ks, cfg.batch_size, torch_device, cold, cfg.index_config)
    base_member = Member(BASELINE_RUN, base_net, base_checkpoint["max_seq_len"])
    controls = evaluation_controls(base_member, members, tables, cfg.knn_history, split, options)
    others += [c.result for c in controls]
    record, controls_md = controls_report(
        result,
        base,
        controls,
        reads_content=bool(spec(checkpoint["model_name"]).needs_features),
        heads=contract.head_count(net),
        resamples=cfg.bootstrap_resamples,
        seed=cfg.bootstrap_seed,
    )
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
        controls=record,
        controls_markdown=controls_md,
    )
    typer.echo(text_table(runs_of([result, *others, *heads])))
    typer.echo(paired_text(stages, result.name, BASELINE_RUN))
    typer.echo(record["claim"])


if __name__ == "__main__":
    app()
