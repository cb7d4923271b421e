"""The experiments table: one row per named run (``reports/experiments/<name>.json`` from ``bench.ablations``)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from pipeline.evaluation.metrics import per_user_values, target_ranks
from pipeline.evaluation.ranking import AMONG_COLD, COLD_START, subset_name
from pipeline.evaluation.significance import paired_difference

METRICS = ("HR@10", "NDCG@10", "MRR@10")
PLOT_NAME = "heads_cards_vs_posters.png"  # pipeline.reporting.images_plot writes it beside the suites' folders
PAIRED_METRIC = "NDCG@10"  # the column of the paired comparison with the suite's SASRec row
# (stage or subset in metrics.json, column label): test over every user, then the cold-start views
TABLE_STAGES: tuple[tuple[str, str], ...] = (
    ("valid", "valid"),
    ("test", "test"),
    (subset_name("test", COLD_START), "cold test (all items)"),
    (subset_name("test", AMONG_COLD), "cold test (among cold)"),
)


def per_user_from_topk(path: Path, stage: str, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """``(user_idx, values)`` (U,) each: per-user ``metric`` of one run from its ``topk.parquet``, sorted by user."""
    rows = pl.read_parquet(path).filter(pl.col("stage") == stage).sort("user_idx")
    if rows.height == 0:
        raise ValueError(f"{path}: no {stage} rows; rerun that variant's evaluate stage")
    items = np.array(rows["items"].to_list(), dtype=np.int64)  # (U, K)
    ranks = target_ranks(items, rows["target"].to_numpy())  # (U,)
    return rows["user_idx"].to_numpy(), per_user_values(ranks, metric)


def seed_averaged_paired(
    model_topks: Sequence[Path],
    reference_topks: Sequence[Path],
    stages: Sequence[str] = ("valid", "test"),
    metrics: Sequence[str] = (PAIRED_METRIC,),
    resamples: int = 2000,
    seed: int = 0,
) -> dict[str, dict[str, dict[str, float]]]:
    """Paired model - reference over users, each user's metric averaged over the runs' seeds first.

    ``model_topks[i]`` and ``reference_topks[i]`` are the ``topk.parquet`` of the same seed; the CI is over users
    (:func:`pipeline.evaluation.significance.paired_difference`), so it covers user sampling of the seed-averaged
    models.
    """
    if not model_topks or len(model_topks) != len(reference_topks):
        raise ValueError(f"need one reference run per model run, got {len(model_topks)} and {len(reference_topks)}")
    out: dict[str, dict[str, dict[str, float]]] = {}
    for stage in stages:
        out[stage] = {}
        for metric in metrics:
            sides = []
            for paths in (model_topks, reference_topks):
                users, total = per_user_from_topk(paths[0], stage, metric)
                for path in paths[1:]:
                    other_users, values = per_user_from_topk(path, stage, metric)
                    if not np.array_equal(users, other_users):
                        raise ValueError(f"{path}: other users than {paths[0]}; the runs do not share a split")
                    total = total + values
                sides.append((users, total / len(paths)))
            if not np.array_equal(sides[0][0], sides[1][0]):
                raise ValueError(f"{model_topks[0]} and {reference_topks[0]} rank different users")
            out[stage][metric] = asdict(paired_difference(sides[0][1], sides[1][1], resamples, seed))
    return out


def _fmt(value: Any, digits: int = 4) -> str:
    return f"{value:.{digits}f}" if isinstance(value, int | float) else "–"


def _row(result: dict[str, Any]) -> list[str]:
    metrics = result["metrics"].get(result["model"], {})
    cells = [result["name"]]
    for stage, _ in TABLE_STAGES:
        cells += [_fmt(metrics.get(stage, {}).get(m)) for m in METRICS]
    train = result.get("train") or {}
    pretrain = result.get("pretrain") or {}
    pretrained = "epochs_run" in pretrain  # a "no pre-training" marker's summary has no epochs
    stages = result.get("stages", {})

    def peak(stage: str) -> str:
        return f"{stages[stage]['peak_rss_mb']:.0f}" if stage in stages else "–"

    cells += [
        _fmt(train.get("seconds_per_epoch"), 1),
        str(train.get("epochs_run", "–")),
        peak("train"),
        _fmt(pretrain.get("seconds_per_epoch"), 1) if pretrained else "–",
        str(pretrain.get("epochs_run", "–")) if pretrained else "–",
        peak("pretrain") if pretrained else "–",
    ]
    return cells + _seed_and_paired_cells(result)


def _paired_cell(paired: dict[str, Any] | None) -> str:
    if paired is None:
        return "–"
    rel = f" ({100 * paired['relative']:+.1f}%)" if paired.get("relative") == paired.get("relative") else ""
    return f"{paired['diff']:+.4f} [{paired['ci_low']:+.4f}, {paired['ci_high']:+.4f}]{rel}, p={paired['p_value']:.3f}"


def multimodal_value(result: dict[str, Any]) -> str:
    """ "yes" only for a row that reads content and whose paired CI against the ID-only ensemble lies above 0;
    "no" for such a row otherwise; "–" for ID-only rows and rows compared with no ensemble."""
    paired = (result.get("paired_vs_ensemble") or {}).get("test", {}).get(PAIRED_METRIC)
    if not result.get("reads_content") or paired is None:
        return "–"
    return "yes" if paired["ci_low"] > 0 else "no"


def architecture_value(result: dict[str, Any]) -> str:
    """ "yes" only for a row with multimodal value (:func:`multimodal_value`) whose paired CI against the simplest
    multimodal model (the suite's ``sasrec_fusion`` row: SASRec with projected content features) also lies above 0;
    "no" for a content row compared with both otherwise; "–" where either comparison is missing."""
    paired = (result.get("paired_vs_early_fusion") or {}).get("test", {}).get(PAIRED_METRIC)
    if multimodal_value(result) == "–" or paired is None:
        return "–"
    return "yes" if multimodal_value(result) == "yes" and paired["ci_low"] > 0 else "no"


def _seed_and_paired_cells(result: dict[str, Any]) -> list[str]:
    """Seeds, the std of test NDCG@10 across them, the paired differences vs the suite's SASRec row and vs its
    ID-only ensemble row, and whether the row claims multimodal value."""
    seeds = result.get("seeds") or []
    std = (result.get("metrics_std") or {}).get("test", {}).get(PAIRED_METRIC)
    paired = (result.get("paired") or {}).get("test", {}).get(PAIRED_METRIC)
    vs_ensemble = (result.get("paired_vs_ensemble") or {}).get("test", {}).get(PAIRED_METRIC)
    vs_early = (result.get("paired_vs_early_fusion") or {}).get("test", {}).get(PAIRED_METRIC)
    own = result.get("reference") == result.get("name")
    cells = [str(len(seeds)) if seeds else "1", _fmt(std) if std is not None else "–"]
    cells += [_paired_cell(None if own else paired), _paired_cell(vs_ensemble), multimodal_value(result)]
    return cells + [_paired_cell(vs_early), architecture_value(result)]


def suite_results(paths: list[Path]) -> list[dict[str, Any]]:
    """The result files ``paths`` read, in suite order (the row's ``order``, then its name)."""
    return sorted((json.loads(path.read_text()) for path in paths), key=lambda r: (r.get("order", 0), r["name"]))


def experiments_table(paths: list[Path]) -> str:
    """Markdown table of every result file, in suite order; cold-start columns show "–" without a cold-start split."""
    results = suite_results(paths)
    header = ["run"]
    for _, label in TABLE_STAGES:
        header += [f"{label} {m}" for m in METRICS]
    header += [
        "train s/epoch",
        "epochs",
        "train peak RSS MB",
        "pretrain s/epoch",
        "pretrain epochs",
        "pretrain peak RSS MB",
        "seeds",
        f"test {PAIRED_METRIC} std",
        f"test {PAIRED_METRIC} vs SASRec row: diff [95% CI], p",
        f"test {PAIRED_METRIC} vs ID-only ensemble: diff [95% CI], p",
        "multimodal value",
        f"test {PAIRED_METRIC} vs sasrec_fusion (early fusion): diff [95% CI], p",
        "architecture value",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for result in results:
        lines.append("| " + " | ".join(_row(result)) + " |")
    return "\n".join(lines) + "\n"


def _budget_line(paths: list[Path]) -> str:
    budgets = {json.dumps(json.loads(p.read_text()).get("budget") or {}, sort_keys=True) for p in paths}
    if len(budgets) != 1:
        return "Budget: differs between rows (see each result file).\n\n"
    budget = json.loads(budgets.pop())
    if not budget:
        return "Budget: params.yaml as committed.\n\n"
    return "Budget (every row): params.yaml with " + ", ".join(f"`{k}={v}`" for k, v in budget.items()) + ".\n\n"


def per_head_metrics(result: dict[str, Any]) -> dict[str, dict[str, dict[str, float]]]:
    """``{head: {stage: metrics}}`` of a result whose metrics hold ``<model>[<head>]`` rows (evaluate's per-head
    rankings of a multi-head model); empty for a one-head model."""
    model, metrics = result.get("model"), result.get("metrics", {})
    return {k[len(model) + 1 : -1]: v for k, v in metrics.items() if k.startswith(f"{model}[") and k[-1] == "]"}


def heads_table(paths: list[Path], metric: str = "NDCG@10") -> str:
    """Per-head test ``metric`` of the runs whose metrics hold ``<model>[<head>]`` rows (ODMT); "" when none do."""
    results = suite_results(paths)
    rows, heads = [], []
    for result in results:
        model, metrics = result["model"], result["metrics"]
        per_head = per_head_metrics(result)
        if not per_head:
            continue
        heads += [h for h in per_head if h not in heads]
        rows.append((result["name"], metrics.get(model, {}), per_head))
    if not rows:
        return ""
    header = ["run", "fused", *(f"{h} alone" for h in heads)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, fused, per_head in rows:
        cells = [_fmt(fused.get("test", {}).get(metric))]
        cells += [_fmt(per_head[h].get("test", {}).get(metric)) if h in per_head else "–" for h in heads]
        lines.append("| " + " | ".join([name, *cells]) + " |")
    intro = f"Test {metric} of the fused ranking and of each head ranking alone (`evaluate`'s per-head rows):\n\n"
    return intro + "\n".join(lines) + "\n"


def cards_table(paths: list[Path], metric: str = PAIRED_METRIC) -> str:
    """Rows of a posters suite against the same rows with synthetic title cards (``paired_vs_cards``, written by
    ``bench.ablations``); "" when no row has the comparison."""
    results = suite_results(paths)
    lines = []
    for result in results:
        paired = result.get("paired_vs_cards")
        if not paired:
            continue
        seeds = ", ".join(str(s) for s in paired.get("seeds", []))
        test, valid = (paired.get(stage, {}).get(metric) for stage in ("test", "valid"))
        lines.append(f"| {result['name']} | {seeds} | {_paired_cell(test)} | {_paired_cell(valid)} |")
    if not lines:
        return ""
    intro = (
        "Real posters against synthetic title cards: each row minus the same row of the title-card suite, paired "
        "over users at the seeds both ran (seed-averaged), 95% bootstrap CI:\n\n"
    )
    header = f"| run | seeds | posters - cards, test {metric} | valid {metric} |\n|---|---|---|---|\n"
    return intro + header + "\n".join(lines) + "\n"


def experiments_markdown(results_dir: Path) -> str:
    """One table per suite (``<results_dir>/<suite>/*.json``), plus a per-head table where runs have heads and a
    posters - title cards table where rows have that comparison; empty when there are no results."""
    parts = []
    for suite_dir in sorted(p for p in Path(results_dir).glob("*") if p.is_dir()):
        paths = sorted(suite_dir.glob("*.json"))
        if paths:
            extra = [part for part in (heads_table(paths), cards_table(paths)) if part]
            table = experiments_table(paths) + "".join("\n" + part for part in extra)
            parts.append(f"### Suite `{suite_dir.name}`\n\n" + _budget_line(paths) + table)
    if parts and (Path(results_dir) / PLOT_NAME).exists():  # written by bench.ablations where both suites ran
        link = f"{Path(results_dir).name}/{PLOT_NAME}"  # relative to reports/ (report.md, experiments.md)
        parts.append(f"### Title cards against real posters, per head\n\n![per-head test NDCG@10]({link})\n")
    return "\n".join(parts)


def experiments_sections(results_dir: Path) -> list[str]:
    """The "Experiments" section of report.md: a table per suite of ``bench.ablations`` results; none when empty."""
    tables = experiments_markdown(results_dir)
    if not tables:
        return []
    intro = (
        "Runs of `python -m bench.ablations --suite <suite>` (each variant = params.yaml plus the shared budget and "
        "its overrides in bench/experiments.yaml; same split, seeds and budget within a table). Metrics @10, full "
        "ranking; with several seeds, metrics are the mean over seeds and `std` their standard deviation; cold "
        "test = users whose test target is a held-out item (cold-start setting only, pipeline/data/cold_start.py), "
        "ranked among all items or among the held-out test items only; `*_cold` rows without training "
        "(content_knn_*, popularity, random_among_cold) are evaluate's reference rows on the cold split; "
        "s/epoch = training part of an epoch (validation excluded); peak RSS = the stage process's peak resident "
        "memory. The two `vs` "
        "columns compare each row with the suite's SASRec row and with its ID-only ensemble row (`id_ensemble`: the "
        "SASRec row's first seed runs fused with weights chosen on valid, as ODMT fuses its heads) on the same "
        "split: paired over users, each user's NDCG@10 averaged over the seeds both rows share (the ensemble, one "
        "run over several seeds, is paired with every seed), 95% bootstrap CI and randomization p "
        "(pipeline/evaluation/significance.py). `late_fusion_knn` fuses each SASRec seed run with content kNN "
        "(weight chosen on valid); `sasrec_fusion` is SASRec with projected text/image features added to its item "
        "embedding. "
        "**multimodal value** is `yes` only for a row that reads content and whose CI against the ID-only "
        "ensemble lies above 0; a gain over the SASRec row alone can be an ensemble gain. **architecture value** "
        "is `yes` only where, in addition, the CI against the suite's `sasrec_fusion` row (the simplest multimodal "
        "model) lies above 0.\n\n"
    )
    return ["## Experiments\n\n" + intro + tables]
