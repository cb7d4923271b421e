"""Top-K ranking metrics for one held-out target per user, as pure numpy functions.

With a single relevant item per user (leave-one-out), for a 1-based rank ``r`` of the target in the top-K list:

- ``HR@k`` (= Recall@k) is 1 if ``r <= k`` else 0;
- ``NDCG@k`` is ``1 / log2(r + 1)`` if ``r <= k`` else 0 (the ideal DCG is 1);
- ``MRR@k`` is ``1 / r`` if ``r <= k`` else 0.

Each metric is the mean over users (or over the users selected by ``mask``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

METRIC_NAMES: tuple[str, ...] = ("HR", "NDCG", "MRR")


def target_ranks(topk: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """1-based rank of each user's target in its top-K row, 0 where the target is not in the row.

    ``topk`` is (U, K) item indices (padding entries, e.g. -1, never match a real target); ``targets`` is (U,).
    Returns (U,) int64.
    """
    topk = np.asarray(topk)
    targets = np.asarray(targets)
    if topk.ndim != 2:
        raise ValueError(f"topk must be a (users, K) array, got shape {topk.shape}")
    if targets.shape != (topk.shape[0],):
        raise ValueError(f"targets must have shape ({topk.shape[0]},) to match topk {topk.shape}, got {targets.shape}")
    hits = topk == targets[:, None]  # (U, K)
    found = hits.any(axis=1)  # (U,)
    first = hits.argmax(axis=1)  # (U,) 0-based position of the first hit (0 when none)
    return np.where(found, first + 1, 0).astype(np.int64)


def metrics_from_ranks(ranks: np.ndarray, ks: Sequence[int], mask: np.ndarray | None = None) -> dict[str, float]:
    """HR/NDCG/MRR@k for every k from 1-based ``ranks`` (0 = miss); ``mask`` (U,) bool selects users."""
    ranks = np.asarray(ranks, dtype=np.int64)
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != ranks.shape:
            raise ValueError(f"mask must have shape {ranks.shape} (one flag per user), got {mask.shape}")
        ranks = ranks[mask]
    out: dict[str, float] = {}
    for k in _check_ks(ks):
        hit = (ranks >= 1) & (ranks <= k)  # (U,)
        safe = np.where(hit, ranks, 1).astype(np.float64)  # avoid log/div of 0 for misses
        if len(ranks) == 0:
            hr = ndcg = mrr = float("nan")
        else:
            hr = float(hit.mean())
            ndcg = float(np.where(hit, 1.0 / np.log2(safe + 1.0), 0.0).mean())
            mrr = float(np.where(hit, 1.0 / safe, 0.0).mean())
        out[f"HR@{k}"] = hr
        out[f"NDCG@{k}"] = ndcg
        out[f"MRR@{k}"] = mrr
    return out


def per_user_values(ranks: np.ndarray, metric: str) -> np.ndarray:
    """(U,) 1-based ranks (0 = miss) and a key such as ``"NDCG@10"`` -> (U,) float64 per-user metric values.

    Their mean is the metric of :func:`metrics_from_ranks`; paired comparisons (:mod:`pipeline.evaluation.significance`)
    resample them.
    """
    name, _, k_text = metric.partition("@")
    if name not in METRIC_NAMES or not k_text.isdigit() or int(k_text) < 1:
        raise ValueError(f"metric {metric!r} must be one of {', '.join(METRIC_NAMES)} followed by @k, e.g. NDCG@10")
    ranks = np.asarray(ranks, dtype=np.int64)
    hit = (ranks >= 1) & (ranks <= int(k_text))  # (U,)
    safe = np.where(hit, ranks, 1).astype(np.float64)
    if name == "HR":
        return hit.astype(np.float64)
    if name == "NDCG":
        return np.where(hit, 1.0 / np.log2(safe + 1.0), 0.0)
    return np.where(hit, 1.0 / safe, 0.0)


def compute(
    topk: np.ndarray, targets: np.ndarray, ks: Sequence[int], mask: np.ndarray | None = None
) -> dict[str, float]:
    """Mean ``HR@k``, ``NDCG@k``, ``MRR@k`` for each ``k`` in ``ks``.

    ``topk`` is (U, K) int64 item indices best first, with ``K >= max(ks)``; ``targets`` is (U,) int64;
    ``mask`` is an optional (U,) bool array selecting the users to average over (e.g. cold-start targets).
    An empty selection gives NaN for every metric.
    """
    ks = _check_ks(ks)
    topk = np.asarray(topk)
    if topk.ndim == 2 and topk.shape[1] < max(ks):
        raise ValueError(f"topk holds {topk.shape[1]} items per user but metrics ask for k = {max(ks)}")
    return metrics_from_ranks(target_ranks(topk, targets), ks, mask)


def _check_ks(ks: Sequence[int]) -> list[int]:
    ks = [int(k) for k in ks]
    if not ks or any(k < 1 for k in ks):
        raise ValueError(f"evaluate.ks must be a non-empty list of positive integers, got {ks}")
    return ks
