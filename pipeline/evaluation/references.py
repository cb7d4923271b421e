"""Training-free reference rows for the cold-start setting (pipeline.data.cold_start), written like any run.

- ``content_knn_text`` / ``content_knn_image`` / ``content_knn_text_image``: the score of item ``i`` for a user is
  the cosine between ``i``'s frozen feature and the mean (L2-normalised) feature of the user's last
  ``evaluate.knn_history`` history items, per modality; with both modalities the two cosines are added. Items
  without a modality score 0 on it. History is masked as for every run.
- ``random_among_cold``: the exact expected metrics of a uniformly random order of that stage's held-out items,
  ``HR@k = min(k, C) / C``, ``NDCG@k = (1/C) sum_{r<=min(k,C)} 1/log2(r+1)``, ``MRR@k = (1/C) sum 1/r`` over the
  ``C`` candidates (only in the ``*_cold_among_cold`` columns, the only ones where "random among cold" is defined).

Popularity (:func:`pipeline.evaluation.ranking.evaluate_popularity`) is the third reference: held-out items have no
training interactions, so it never ranks a cold target above a warm item, and among the held-out items alone it is
one tie (not reported: the tie order would be the item index, i.e. first appearance in the whole log).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from pipeline.data.cold_start import ColdItems, cold_mask
from pipeline.data.splits import Stage, UserSplit
from pipeline.evaluation.ranking import AMONG_COLD, STAGES, EvaluationResult, evaluate_vectors, subset_name

KNN_MODALITIES: tuple[tuple[str, ...], ...] = (("text",), ("image",), ("text", "image"))
RANDOM_AMONG_COLD = "random_among_cold"


def knn_name(modalities: Sequence[str]) -> str:
    return "content_knn_" + "_".join(modalities)


def normalized_rows(features: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm; all-zero rows (padding, missing modality) stay zero."""
    features = np.asarray(features, dtype=np.float32)
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    return np.divide(features, norms, out=np.zeros_like(features), where=norms > 0)


def history_means(item_vectors: np.ndarray, histories: Sequence[np.ndarray], last: int) -> np.ndarray:
    """(U, D): the unit-normalised mean of ``item_vectors`` rows over each history's last ``last`` items."""
    out = np.zeros((len(histories), item_vectors.shape[1]), dtype=np.float32)
    for u, history in enumerate(histories):
        recent = np.asarray(history, dtype=np.int64)[-last:]
        if len(recent):
            out[u] = item_vectors[recent].mean(axis=0)
    return normalized_rows(out)


def content_knn(
    split: UserSplit,
    features: Mapping[str, np.ndarray],
    modalities: Sequence[str],
    last: int,
    ks: Sequence[int],
    cold: ColdItems | None,
    stages: Sequence[Stage] = STAGES,
) -> EvaluationResult:
    """Content kNN over ``modalities`` (each an (N+1, d) feature table in ``features``; row 0 padding)."""
    if last < 1:
        raise ValueError(f"evaluate.knn_history = {last} must be >= 1")
    tables = [normalized_rows(features[m]) for m in modalities]  # per modality (N+1, d_m)
    item_vectors = np.concatenate(tables, axis=1)  # (N+1, sum d): inner product = sum of the cosines

    def queries_for(stage: Stage) -> np.ndarray:
        histories = split.history(stage)
        return np.concatenate([history_means(t, histories, last) for t in tables], axis=1)  # (U, sum d)

    return evaluate_vectors(knn_name(modalities), split, item_vectors, queries_for, ks, stages, cold=cold)


def random_among_cold_metrics(num_candidates: int, ks: Sequence[int]) -> dict[str, float]:
    """Expected HR/NDCG/MRR@k of one target placed uniformly at random among ``num_candidates`` items."""
    out: dict[str, float] = {}
    for k in sorted({int(k) for k in ks}):
        ranks = np.arange(1, min(k, num_candidates) + 1, dtype=np.float64)
        out[f"HR@{k}"] = len(ranks) / num_candidates
        out[f"NDCG@{k}"] = float((1.0 / np.log2(ranks + 1.0)).sum() / num_candidates)
        out[f"MRR@{k}"] = float((1.0 / ranks).sum() / num_candidates)
    return out


def random_among_cold(split: UserSplit, cold: ColdItems, ks: Sequence[int]) -> EvaluationResult:
    result = EvaluationResult(name=RANDOM_AMONG_COLD, user_idx=split.user_idx, ks=sorted({int(k) for k in ks}))
    for stage in STAGES:
        if cold_mask(split, stage).any() and len(cold.for_stage(stage)):
            metrics = random_among_cold_metrics(len(cold.for_stage(stage)), ks)
            result.subsets[subset_name(stage, AMONG_COLD)] = metrics
    return result


def cold_start_references(
    split: UserSplit, features: Mapping[str, np.ndarray], cold: ColdItems, last: int, ks: Sequence[int]
) -> list[EvaluationResult]:
    """Every reference row whose inputs exist (a content kNN needs its modalities embedded)."""
    rows = [content_knn(split, features, m, last, ks, cold) for m in KNN_MODALITIES if all(x in features for x in m)]
    return [*rows, random_among_cold(split, cold, ks)]
