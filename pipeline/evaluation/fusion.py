"""Score fusion with weights chosen on validation: ODMT's head weights and the controls' ensembles share it.

A *scorer* ranks items by an inner product, ``queries[stage] (U, D) @ items.T (D, N+1)``. A weighted sum of
scorers is again one: ``concat(w_h * q_h) @ concat(v_h).T``, so a fused ranking goes through the same FAISS search
as any model. The weights are the simplex point (grid step :data:`WEIGHT_GRID_STEP`) with the best VALID NDCG@10:
full ranking, each user's valid history masked; the first maximum wins ties. Selection takes the valid targets
and histories only, so it cannot read a test target.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from pipeline.evaluation.metrics import per_user_values

WEIGHT_GRID_STEP = 0.05  # every fusion searches the simplex on this grid
SELECTION_METRIC = "NDCG@10"
SELECTION_K = int(SELECTION_METRIC.partition("@")[2])  # a user with this many items ahead in every head scores 0


@dataclass(frozen=True)
class Scorer:
    """One ranker as vectors: ``queries[stage] @ items.T`` are its scores (row 0 of ``items`` = padding)."""

    name: str
    items: np.ndarray  # (N+1, D) float32
    queries: dict[str, np.ndarray]  # stage -> (U, D) float32, users in split order


def simplex_grid(heads: int, step: float) -> torch.Tensor:
    """(G, H) every weight vector with entries in {0, step, 2 step, ..., 1} summing to 1 (the fusion-weight grid)."""
    ticks = round(1.0 / step)

    def compositions(parts: int, total: int) -> list[list[int]]:
        if parts == 1:
            return [[total]]
        return [[k, *rest] for k in range(total, -1, -1) for rest in compositions(parts - 1, total - k)]

    return torch.tensor(compositions(heads, ticks), dtype=torch.float64) / ticks  # (G, H)


def ndcg_at_10_per_weight(
    scores: list[torch.Tensor], targets: torch.Tensor, exclude: torch.Tensor, grid: torch.Tensor
) -> torch.Tensor:
    """Summed NDCG@10 of the fused score ``sum_h w_h scores[h]`` for every weight vector w of ``grid`` (G, H).

    ``scores`` H x (U, N+1) per-head scores, ``targets`` (U,) item ids, ``exclude`` (U, N+1) bool items not ranked
    (the target is never excluded). The target's 1-based rank is 1 + the number of ranked items scoring strictly
    higher (ties favour the target); its NDCG@10 is :func:`pipeline.evaluation.metrics.per_user_values`'. Returns (G,)
    float64.

    Exact shortcuts (the weights are convex: w >= 0, sum 1): an item whose margin over the target is positive in
    every head outranks it under every w, and one whose margin is positive in no head never does. So a user with
    10 or more of the first kind scores 0 at every grid point and is dropped, and for the others only the items in
    between ("contested") are fused, gathered into a (U', K) block (K = the most contested items of any user kept).
    """
    rows = torch.arange(len(targets), device=targets.device)  # (U,)
    excluded = exclude.clone()  # (U, N+1)
    excluded[rows, targets] = False
    # margin over the target per head; excluded items get -1 in every head so any convex weighting keeps them < 0
    margins = torch.stack([(s - s[rows, targets][:, None]).float().masked_fill_(excluded, -1.0) for s in scores])
    above = margins > 0  # (H, U, N+1)
    always = above.all(dim=0)  # (U, N+1): outranks the target whatever the weights
    contested = above.any(dim=0) & ~always  # (U, N+1)
    base = always.sum(dim=1)  # (U,)
    live = base < SELECTION_K  # (U,): users whose NDCG@10 can be > 0 at some grid point
    base, contested, margins = base[live], contested[live], margins[:, live]  # (U',), (U', N+1), (H, U', N+1)
    width = int(contested.sum(dim=1).max()) if len(base) else 0
    order = torch.argsort(contested.to(torch.int8), dim=1, descending=True, stable=True)[:, :width]  # (U', K)
    kept = torch.gather(contested, 1, order)  # (U', K): False in the padding of users with fewer contested items
    block = torch.gather(margins, 2, order.expand(len(margins), -1, -1)).masked_fill_(~kept, -1.0)  # (H, U', K)
    above_target = [
        base + (sum(w * m for w, m in zip(weights, block, strict=True) if w > 0) > 0).sum(dim=1)  # (U',)
        for weights in grid.tolist()
    ]
    if not above_target or len(base) == 0:
        return torch.zeros(len(grid), dtype=torch.float64)  # every user misses the top 10 at every grid point
    ranks = torch.stack(above_target).cpu().numpy() + 1  # (G, U') 1-based
    return torch.from_numpy(per_user_values(ranks, SELECTION_METRIC).sum(axis=1))  # (G,)


def _valid_batches(
    scorers: Sequence[Scorer], targets: np.ndarray, histories: Sequence[np.ndarray], batch_size: int
) -> Iterator[tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]]:
    """Per user batch: H x (b, N+1) scores, (b,) targets and (b, N+1) excluded items (history and padding)."""
    num_rows = scorers[0].items.shape[0]
    for start in range(0, len(targets), batch_size):
        stop = min(start + batch_size, len(targets))
        scores = [torch.from_numpy(s.queries["valid"][start:stop]) @ torch.from_numpy(s.items).T for s in scorers]
        exclude = torch.zeros(stop - start, num_rows, dtype=torch.bool)  # (b, N+1)
        for row, seen in enumerate(histories[start:stop]):
            exclude[row, torch.from_numpy(np.asarray(seen, dtype=np.int64))] = True
        exclude[:, 0] = True  # padding is never recommended
        yield scores, torch.from_numpy(np.asarray(targets[start:stop], dtype=np.int64)), exclude


def score_scales(scorers: Sequence[Scorer], histories: Sequence[np.ndarray], batch_size: int = 1024) -> np.ndarray:
    """(H,) each scorer's standard deviation over the valid scores of the items it ranks (history, padding out)."""
    sums = np.zeros((len(scorers), 3))  # count, sum, sum of squares
    dummy = np.zeros(len(histories), dtype=np.int64)
    for scores, _, exclude in _valid_batches(scorers, dummy, histories, batch_size):
        for h, s in enumerate(scores):
            ranked = s[~exclude].double()  # (R,)
            sums[h] += (ranked.numel(), float(ranked.sum()), float((ranked * ranked).sum()))
    mean = sums[:, 1] / np.maximum(sums[:, 0], 1)
    std = np.sqrt(np.maximum(sums[:, 2] / np.maximum(sums[:, 0], 1) - mean * mean, 0.0))
    return np.where(std > 0, std, 1.0)  # a constant scorer keeps scale 1


def select_weights(
    scorers: Sequence[Scorer],
    valid_targets: np.ndarray,
    valid_histories: Sequence[np.ndarray],
    step: float = WEIGHT_GRID_STEP,
    batch_size: int = 1024,
) -> tuple[np.ndarray, float]:
    """(H,) the simplex-grid weights with the best valid NDCG@10 of ``sum_h w_h scores_h``, and that NDCG@10.

    Reads each scorer's ``queries["valid"]`` and the valid targets and histories only.
    """
    if not scorers:
        raise ValueError("fusion needs at least one scorer")
    grid = simplex_grid(len(scorers), step)  # (G, H)
    gains = torch.zeros(len(grid), dtype=torch.float64)  # (G,)
    for scores, targets, exclude in _valid_batches(scorers, valid_targets, valid_histories, batch_size):
        gains += ndcg_at_10_per_weight(scores, targets, exclude, grid)
    best = int(torch.argmax(gains))  # first maximum: ties go to the earlier grid point
    return grid[best].numpy().astype(np.float32), float(gains[best]) / max(len(valid_targets), 1)


def fuse(name: str, scorers: Sequence[Scorer], weights: Sequence[float]) -> Scorer:
    """The scorer of ``sum_h weights[h] * scores_h``: weighted queries and items side by side."""
    if len(weights) != len(scorers):
        raise ValueError(f"{len(weights)} weights for {len(scorers)} scorers")
    items = np.concatenate([s.items for s in scorers], axis=1).astype(np.float32)  # (N+1, sum D)
    stages = set.intersection(*(set(s.queries) for s in scorers))
    queries = {
        stage: np.concatenate([w * s.queries[stage] for w, s in zip(weights, scorers, strict=True)], axis=1)
        for stage in sorted(stages)
    }  # stage -> (U, sum D)
    return Scorer(name, items, {k: v.astype(np.float32) for k, v in queries.items()})


def scaled(scorer: Scorer, factor: float) -> Scorer:
    """``scorer`` with every score multiplied by ``factor`` (queries scaled, items unchanged)."""
    return Scorer(scorer.name, scorer.items, {k: (factor * v).astype(np.float32) for k, v in scorer.queries.items()})


@torch.no_grad()
def best_head_weights(
    head_queries: Callable[[torch.Tensor], dict[str, torch.Tensor]],
    tables: dict[str, torch.Tensor],
    input_ids: torch.Tensor,
    targets: torch.Tensor,
    exclude: torch.Tensor,
    batch_size: int,
) -> torch.Tensor:
    """(H,) the simplex point (step :data:`WEIGHT_GRID_STEP`) whose fused score has the best summed valid NDCG@10.

    ``head_queries`` maps (b, L) left-padded histories to {head: (b, D)} queries, ``tables`` {head: (N+1, D)} item
    vectors (the heads in fusion order), ``input_ids`` (U, L) the valid inputs, ``targets`` (U,) the VALID targets,
    ``exclude`` (U, N+1) bool the items each user may not be recommended. Ties go to the earlier grid point. ODMT's
    ``head_weights: validation``.
    """
    heads = list(tables)
    like = next(iter(tables.values()))
    grid = simplex_grid(len(heads), WEIGHT_GRID_STEP).to(like)  # (G, H)
    gains = torch.zeros(len(grid), dtype=torch.float64)  # (G,): summed NDCG@10
    for start in range(0, len(input_ids), batch_size):
        ids = input_ids[start : start + batch_size]  # (b, L)
        keep = ids.ne(0).any(dim=0)  # (L,): trim columns that are padding in every row
        queries = head_queries(ids[:, keep.cumsum(0) > 0])  # {head: (b, D)}
        gains += ndcg_at_10_per_weight(
            [queries[h] @ tables[h].T for h in heads],  # H x (b, N+1)
            targets[start : start + batch_size],
            exclude[start : start + batch_size],
            grid,
        )
    return grid[int(torch.argmax(gains))]  # (H,): first maximum
