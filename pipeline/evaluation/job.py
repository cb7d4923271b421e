"""The `evaluate` stage's body: every run ranked, compared and written to ``reports/``.

:func:`evaluate_to_dir` ranks the model, the SASRec baseline, popularity, each of a multi-head model's heads alone,
the cold-start references (cold-start setting) and the controls (an ID-only ensemble of ``ensemble_members``, late
fusion of the baseline with content kNN where features exist), compares the model with the baseline (paired
bootstrap) and writes ``metrics.json``, ``report.md``, ``topk.parquet`` and ``plots/``
(:mod:`pipeline.reporting.report`).
"""

from __future__ import annotations

from pathlib import Path

from pipeline.config import EvaluateConfig
from pipeline.data.cold_start import load_cold_items
from pipeline.data.splits import load_split
from pipeline.evaluation.claims import controls_report
from pipeline.evaluation.controls import Member, RankingOptions, check_members, content_tables, evaluation_controls
from pipeline.evaluation.ranking import (
    evaluate_heads,
    evaluate_model,
    evaluate_popularity,
    load_user_ids,
    paired_comparison,
)
from pipeline.evaluation.references import cold_start_references
from pipeline.io import check_disjoint
from pipeline.models import contract
from pipeline.models.registry import spec
from pipeline.reporting.experiments import experiments_sections
from pipeline.reporting.report import paired_text, runs_of, text_table, write_report
from pipeline.serving.inference import load_trained, resolve_device

BASELINE_RUN = "baseline"


def evaluate_to_dir(
    cfg: EvaluateConfig,
    prepared: Path,
    features: Path,
    model: Path,
    baseline: Path,
    out: Path,
    device: str = "auto",
    experiments: Path | None = None,
    ensemble_members: list[Path] | None = None,
) -> str:
    """Evaluate the checkpoint ``model`` against ``baseline`` on ``prepared``'s split; write ``out``.

    ``experiments``: bench.ablations results copied into report.md. ``ensemble_members``: SASRec checkpoints of the
    baseline's recipe at other seeds (the ID-only ensemble control). Returns the text the stage prints: the metric
    tables, the paired comparison and the claim the controls allow.
    """
    files = {"--model": model, "--baseline": baseline, "--model's dvclive": model.parent / "dvclive"}
    check_disjoint({"--out": out}, {"--prepared": prepared, "--features": features}, files)
    torch_device = resolve_device(device, "--device")
    net, checkpoint, catalog = load_trained(model, features, prepared, torch_device)
    base_net, base_checkpoint, _ = load_trained(baseline, features, prepared, torch_device)
    members = ensemble_members or []
    loaded = [load_trained(path, features, prepared, torch_device) for path in members]
    check_members(base_checkpoint, [ckpt for _, ckpt, _ in loaded], [str(p) for p in members])
    split = load_split(prepared)
    cold = load_cold_items(prepared)  # None in the normal setting

    def ranking(ckpt: dict) -> dict:
        return {
            "ks": cfg.ks,
            "batch_size": cfg.batch_size,
            "max_seq_len": ckpt["max_seq_len"],  # the length the model was trained with
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
    if cold is not None:  # training-free references for the cold-start rows (pipeline/evaluation/references.py)
        others += cold_start_references(split, tables, cold, cfg.knn_history, cfg.ks)
    seeds = [Member(f"seed{c['train_config']['seed']}", n, c["max_seq_len"]) for n, c, _ in loaded]
    options = RankingOptions(cfg.ks, cfg.batch_size, torch_device, cold, cfg.index_config)
    base_member = Member(BASELINE_RUN, base_net, base_checkpoint["max_seq_len"])
    controls = evaluation_controls(base_member, seeds, tables, cfg.knn_history, split, options)
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
        extra_sections=experiments_sections(experiments) if experiments is not None else [],
        paired=paired,
        controls=record,
        controls_markdown=controls_md,
    )
    texts = [text_table(runs_of([result, *others, *heads])), paired_text(stages, result.name, BASELINE_RUN)]
    return "\n".join([*texts, record["claim"]])
