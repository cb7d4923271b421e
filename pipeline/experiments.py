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
    peak = max((s.get("peak_rss_mb", 0) for s in result.get("stages", {}).values()), default=0)
    cells += [
        _fmt(train.get("seconds_per_epoch"), 1),
        str(train.get("epochs_run", "–")),
        _fmt(pretrain.get("seconds_per_epoch"), 1) if pretrain else "–",
        f"{peak:.0f}",
    ]
    return cells


def experiments_table(paths: list[Path]) -> str:
    """Markdown table of every result file; cold-start columns show "–" for runs without a cold-start split."""
    header = ["run"]
    for stage in ("valid", "test", "cold test"):
        header += [f"{stage} {m}" for m in METRICS]
    header += ["train s/epoch", "epochs", "pretrain s/epoch", "peak RSS MB"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for path in paths:
        lines.append("| " + " | ".join(_row(json.loads(path.read_text()))) + " |")
    return "\n".join(lines) + "\n"


def experiments_sections(results_dir: Path) -> list[str]:
    """The "Experiments" section of report.md: the table of every ``<results_dir>/*.json``; none when empty."""
    paths = sorted(Path(results_dir).glob("*.json"))
    if not paths:
        return []
    intro = (
        "Runs of `python -m bench.ablations` (each variant = params.yaml plus the overrides in "
        "bench/experiments.yaml; same split, seed and budget). Metrics @10; cold test = users whose test target "
        "is a held-out item (cold-start setting only).\n\n"
    )
    return ["## Experiments\n\n" + intro + experiments_table(paths)]
