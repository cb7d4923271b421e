"""Time ODMT's head-weight search on validation (``head_weights: validation``), pruned against exhaustive.

    python -m bench.head_weight_search --model runs/odmt_last15/odmt/seed42/models/model.pt \
        --prepared runs/shared/prepared-<key> --features runs/shared/features-<key> --threads 1

Loads a trained ODMT, computes every valid user's per-head scores once, then runs the grid search over the simplex
(:func:`pipeline.evaluation.fusion.ndcg_at_10_per_weight`, which drops users that cannot reach the top 10 and fuses only
the contested items) and the exhaustive version (every user, every item, every grid point) on the same scores. Prints
both CPU times and the largest difference of their summed gains (0 up to float64 summation order; exit 1 if not).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import numpy as np
import torch
import typer

from pipeline.data.dataset import eval_inputs
from pipeline.data.splits import load_split
from pipeline.evaluation.fusion import WEIGHT_GRID_STEP, ndcg_at_10_per_weight, simplex_grid
from pipeline.models.odmt import ODMT
from pipeline.serving.inference import load_trained

app = typer.Typer(add_completion=False)


def exhaustive_gains(
    scores: list[torch.Tensor], targets: torch.Tensor, exclude: torch.Tensor, grid: torch.Tensor
) -> torch.Tensor:
    """The search without shortcuts: fused margins of every user and item at every grid point."""
    rows = torch.arange(len(targets))  # (U,)
    excluded = exclude.clone()  # (U, N+1)
    excluded[rows, targets] = False
    margins = [(s - s[rows, targets][:, None]).float().masked_fill_(excluded, -1.0) for s in scores]  # H x (U, N+1)
    out = torch.zeros(len(grid), dtype=torch.float64)  # (G,)
    for g, weights in enumerate(grid.tolist()):
        fused = sum(w * m for w, m in zip(weights, margins, strict=True) if w > 0)  # (U, N+1)
        rank = (fused > 0).sum(dim=1)  # (U,)
        out[g] = torch.where(rank < 10, 1.0 / torch.log2(rank.double() + 2.0), 0.0).sum()
    return out


@app.command()
def main(
    model: Annotated[Path, typer.Option(help="a trained ODMT checkpoint")],
    prepared: Annotated[Path, typer.Option(help="its prepare stage output")] = Path("data/prepared"),
    features: Annotated[Path, typer.Option(help="its embed stage output")] = Path("data/features"),
    batch_size: Annotated[int, typer.Option(help="valid users per block, as train.batch_size in fit")] = 128,
    threads: Annotated[int, typer.Option(help="torch threads")] = 1,
) -> None:
    torch.set_num_threads(threads)
    net, checkpoint, _ = load_trained(model, features, prepared)
    if not isinstance(net, ODMT):
        raise typer.BadParameter(f"{model}: a {checkpoint.get('model_name')} checkpoint; this times ODMT's search")
    split = load_split(prepared)
    inputs = torch.from_numpy(np.ascontiguousarray(eval_inputs(split, "valid", int(checkpoint["max_seq_len"]))))
    targets = torch.from_numpy(split.target("valid").astype(np.int64))  # (U,)
    histories = split.history("valid")
    grid = simplex_grid(len(net.heads), WEIGHT_GRID_STEP)  # (G, H)
    table = net.ranking_table()  # {head: (N+1, D)}
    seconds = {"pruned": 0.0, "exhaustive": 0.0}
    gains = {name: torch.zeros(len(grid), dtype=torch.float64) for name in seconds}  # (G,) summed NDCG@10
    with torch.no_grad():
        for start in range(0, len(targets), batch_size):
            stop = min(start + batch_size, len(targets))
            queries = net.head_user_vectors(inputs[start:stop])  # {head: (b, D)}
            scores = [queries[h] @ table[h].T for h in net.heads]  # H x (b, N+1)
            exclude = torch.zeros(stop - start, table[net.heads[0]].shape[0], dtype=torch.bool)  # (b, N+1)
            for row, seen in enumerate(histories[start:stop]):
                exclude[row, torch.from_numpy(np.asarray(seen, dtype=np.int64))] = True
            exclude[:, 0] = True
            for name, search in (("pruned", ndcg_at_10_per_weight), ("exhaustive", exhaustive_gains)):
                clock = time.process_time()
                gains[name] += search(scores, targets[start:stop], exclude, grid)
                seconds[name] += time.process_time() - clock
    gap = float((gains["pruned"] - gains["exhaustive"]).abs().max())
    same = gap < 1e-9 * len(targets)
    best = grid[int(torch.argmax(gains["pruned"]))].tolist()
    report = {
        "model": str(model),
        "users": len(targets),
        "items": int(table[net.heads[0]].shape[0] - 1),
        "grid_points": len(grid),
        "cpu_seconds": {k: round(v, 2) for k, v in seconds.items()},
        "speedup": round(seconds["exhaustive"] / max(seconds["pruned"], 1e-9), 1),
        "max_gain_difference": gap,
        "best_weights": dict(zip(net.heads, [round(w, 2) for w in best], strict=True)),
        "best_valid_ndcg10": round(float(gains["pruned"].max()) / len(targets), 4),
    }
    typer.echo(json.dumps(report, indent=2))
    if not same:
        raise typer.Exit(1)


if __name__ == "__main__":
    app()
