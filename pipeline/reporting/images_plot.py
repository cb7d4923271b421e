"""Does a real poster carry signal that a title card does not? Per-head test NDCG@10, cards against posters.

A suite ``<suite>_posters`` in ``reports/experiments/`` is ``<suite>`` with ``data.posters_dir`` set (real ML-1M
posters instead of the synthetic title cards). For every multi-head row (ODMT) both suites hold, the plot puts the
fused ranking and each head ranked alone side by side, cards against posters; the seeds each bar averages are in
its label. Written by ``python -m bench.ablations`` next to ``reports/experiments.md``.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display: render straight to PNG
import matplotlib.pyplot as plt  # noqa: E402

from pipeline.io import atomic_path  # noqa: E402
from pipeline.reporting.experiments import PLOT_NAME, per_head_metrics  # noqa: E402

POSTERS_SUFFIX = "_posters"


def head_scores(suite_dir: Path, metric: str = "NDCG@10") -> dict[str, tuple[dict[str, float], list[int]]]:
    """``{row: ({"fused" | head: test metric}, seeds)}`` for the rows of a suite whose metrics have per-head rows."""
    out = {}
    for path in sorted(suite_dir.glob("*.json")):
        result = json.loads(path.read_text(encoding="utf-8"))
        model, metrics = result.get("model"), result.get("metrics", {})
        heads = per_head_metrics(result)
        if not heads or model not in metrics:
            continue
        scores = {"fused": metrics[model]["test"][metric]} | {h: v["test"][metric] for h, v in heads.items()}
        out[result["name"]] = (scores, list(result.get("seeds") or []))
    return out


def plot_cards_vs_posters(results_dir: Path, metric: str = "NDCG@10") -> Path | None:
    """Write ``<results_dir>/heads_cards_vs_posters.png`` for every ``<suite>`` / ``<suite>_posters`` pair with a
    multi-head row in both; returns its path, or None (and no file) when no pair has one."""
    panels = []
    for posters in sorted(results_dir.glob(f"*{POSTERS_SUFFIX}")):
        cards = results_dir / posters.name.removesuffix(POSTERS_SUFFIX)
        if not (posters.is_dir() and cards.is_dir()):
            continue
        with_cards, with_posters = head_scores(cards, metric), head_scores(posters, metric)
        panels += [(cards.name, row, with_cards[row], with_posters[row]) for row in with_cards if row in with_posters]
    path = results_dir / PLOT_NAME
    if not panels:
        path.unlink(missing_ok=True)  # no stale plot of rows that are gone
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(5.0 * len(panels), 3.8), squeeze=False)
    for ax, (suite, row, (card, card_seeds), (poster, poster_seeds)) in zip(axes[0], panels, strict=True):
        names = list(card)
        x = range(len(names))
        ax.bar([i - 0.2 for i in x], [card[n] for n in names], 0.4, label=f"title cards (seeds {card_seeds})")
        ax.bar([i + 0.2 for i in x], [poster.get(n, 0.0) for n in names], 0.4, label=f"posters (seeds {poster_seeds})")
        ax.set_xticks(list(x), [n if n == "fused" else f"{n} alone" for n in names])
        ax.set_title(f"{suite}: {row}")
        ax.set_ylabel(f"test {metric}")
        ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path
