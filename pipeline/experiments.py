"""The experiments table: one row per named run (``reports/experiments/<name>.json`` from ``bench.ablations``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipeline.evaluation import COLD_START

METRICS = ("HR@10", "NDCG@10", "MRR@10")


def _fmt(value: Any, digits: int = 4) -> str:
    return f"{value:.{digits}f}" if isinstance(value, int | float) else "–"


def _row(result: dict[str, Any]) -> list[str]:
    metrics = result["metrics"].get(result["model"], {})
    cells = [result["name"]]
    for stage in ("valid", "test", COLD_START):
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
    return cells


def experiments_table(paths: list[Path]) -> str:
    """Markdown table of every result file, in suite order; cold-start columns show "–" without a cold-start split."""
    results = sorted((json.loads(path.read_text()) for path in paths), key=lambda r: (r.get("order", 0), r["name"]))
    header = ["run"]
    for stage in ("valid", "test", "cold test"):
        header += [f"{stage} {m}" for m in METRICS]
    header += [
        "train s/epoch",
        "epochs",
        "train peak RSS MB",
        "pretrain s/epoch",
        "pretrain epochs",
        "pretrain peak RSS MB",
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


def heads_table(paths: list[Path], metric: str = "NDCG@10") -> str:
    """Per-head test ``metric`` of the runs whose metrics hold ``<model>[<head>]`` rows (ODMT); "" when none do."""
    results = sorted((json.loads(path.read_text()) for path in paths), key=lambda r: (r.get("order", 0), r["name"]))
    rows, heads = [], []
    for result in results:
        model, metrics = result["model"], result["metrics"]
        per_head = {k[len(model) + 1 : -1]: v for k, v in metrics.items() if k.startswith(f"{model}[") and k[-1] == "]"}
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


def experiments_markdown(results_dir: Path) -> str:
    """One table per suite (``<results_dir>/<suite>/*.json``), plus a per-head table where runs have heads; empty
    when there are no results."""
    parts = []
    for suite_dir in sorted(p for p in Path(results_dir).glob("*") if p.is_dir()):
        paths = sorted(suite_dir.glob("*.json"))
        if paths:
            heads = heads_table(paths)
            table = experiments_table(paths) + ("\n" + heads if heads else "")
            parts.append(f"### Suite `{suite_dir.name}`\n\n" + _budget_line(paths) + table)
    return "\n".join(parts)


def experiments_sections(results_dir: Path) -> list[str]:
    """The "Experiments" section of report.md: a table per suite of ``bench.ablations`` results; none when empty."""
    tables = experiments_markdown(results_dir)
    if not tables:
        return []
    intro = (
        "Runs of `python -m bench.ablations --suite <suite>` (each variant = params.yaml plus the shared budget and "
        "its overrides in bench/experiments.yaml; same split, seed and budget within a table). Metrics @10, full "
        "ranking; cold test = users whose test target is a held-out item (cold-start setting only); s/epoch = "
        "training part of an epoch (validation excluded); peak RSS = the stage process's peak resident memory.\n\n"
    )
    return ["## Experiments\n\n" + intro + tables]
