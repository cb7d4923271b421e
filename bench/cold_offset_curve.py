"""The cold-start calibration trade-off of a trained model: add an offset to the score of every item without
training interactions and print, per offset, valid and test cold-target HR@10 (ranked among all items), warm-target
NDCG@10 and all-user NDCG@10; then the offset that maximises valid NDCG@10 when a cold-target user counts ``w``
times (MP4SR's ``model.cold_offset: validation`` with ``cold_offset_weight: w``, fitted once after training).

    python -m bench.cold_offset_curve --run runs/mp4sr/mp4sr_cold/seed42 \
        --prepared runs/shared/prepared-<key> --features runs/shared/features-<key>

Selection reads validation only; the test columns are reported for the offsets validation picked.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import numpy as np
import torch
import typer

from pipeline.data.cold_start import cold_mask
from pipeline.data.splits import Stage, load_split
from pipeline.evaluation.ranking import model_queries
from pipeline.models.mp4sr import COLD_OFFSET_GRID
from pipeline.serving.inference import item_table, load_trained

app = typer.Typer(add_completion=False)
SHOWN = (-1.0, 0.0, 0.5, 1.0, 1.25, 1.5, 2.0, 3.0, 5.0)


def target_ranks_per_offset(
    scores: torch.Tensor, cold_items: torch.Tensor, targets: torch.Tensor, grid: list[float]
) -> torch.Tensor:
    """(G, U) 0-based rank of each user's target under ``scores + offset * cold_items`` (masked items at -inf)."""
    rows = torch.arange(len(targets))
    out = torch.empty(len(grid), len(targets), dtype=torch.int64)
    for g, offset in enumerate(grid):
        shifted = scores + offset * cold_items  # (U, N+1)
        out[g] = (shifted > shifted[rows, targets][:, None]).sum(dim=1)
    return out


@app.command()
def main(
    run: Annotated[Path, typer.Option(help="a bench.ablations run folder (holds models/model.pt)")],
    prepared: Annotated[Path, typer.Option(help="its prepared data (a cold-start split)")],
    features: Annotated[Path, typer.Option(help="its features")],
    weights: Annotated[str, typer.Option(help="cold-target weights to select an offset for on validation")] = "1,3,10",
) -> None:
    model, checkpoint, catalog = load_trained(run / "models" / "model.pt", features, prepared)
    split = load_split(prepared)
    items = torch.from_numpy(item_table(model))  # (N+1, D)
    cold_items = (catalog.popularity.reshape(-1) == 0).float()  # (N+1,)
    cold_items[0] = 0.0
    grid = sorted(COLD_OFFSET_GRID)
    per_stage: dict[str, dict[str, np.ndarray]] = {}
    stages: tuple[Stage, ...] = ("valid", "test")
    for stage in stages:
        queries = torch.from_numpy(model_queries(model, split, stage, checkpoint["max_seq_len"], 1024, "cpu"))
        scores = queries @ items.T  # (U, N+1)
        scores[:, 0] = -torch.inf
        for user, history in enumerate(split.history(stage)):
            scores[user, torch.from_numpy(np.asarray(history, dtype=np.int64))] = -torch.inf
        ranks = target_ranks_per_offset(scores, cold_items, torch.from_numpy(split.target(stage)), grid).numpy()
        mask = cold_mask(split, stage)  # (U,)
        ndcg = np.where(ranks < 10, 1.0 / np.log2(ranks + 2.0), 0.0)  # (G, U)
        per_stage[stage] = {
            "cold_hr": (ranks[:, mask] < 10).mean(axis=1),
            "cold_ndcg_sum": ndcg[:, mask].sum(axis=1),
            "warm_ndcg": ndcg[:, ~mask].mean(axis=1),
            "warm_ndcg_sum": ndcg[:, ~mask].sum(axis=1),
            "all_ndcg": ndcg.mean(axis=1),
        }
    columns = ["cold HR@10", "warm NDCG@10", "NDCG@10"]
    typer.echo("| offset | " + " | ".join(f"{s} {c}" for s in stages for c in columns) + " |")
    typer.echo("|---:|---:|---:|---:|---:|---:|---:|")
    for offset in SHOWN:
        g = grid.index(offset)
        v, t = per_stage["valid"], per_stage["test"]
        typer.echo(
            f"| {offset:+.2f} | {v['cold_hr'][g]:.4f} | {v['warm_ndcg'][g]:.4f} | {v['all_ndcg'][g]:.4f} | "
            f"{t['cold_hr'][g]:.4f} | {t['warm_ndcg'][g]:.4f} | {t['all_ndcg'][g]:.4f} |"
        )
    typer.echo("\nchosen on validation (cold-target weight w):")
    valid, test = per_stage["valid"], per_stage["test"]
    for weight in (float(w) for w in weights.split(",")):
        objective = weight * valid["cold_ndcg_sum"] + valid["warm_ndcg_sum"]  # (G,)
        g = max(range(len(grid)), key=lambda i: (objective[i], -abs(grid[i])))  # ties: the smaller offset
        typer.echo(
            f"  w {weight:g}: offset {grid[g]:+.2f} -> test cold HR@10 {test['cold_hr'][g]:.4f}, warm NDCG@10 "
            f"{test['warm_ndcg'][g]:.4f}, NDCG@10 {test['all_ndcg'][g]:.4f}"
        )


if __name__ == "__main__":
    app()
