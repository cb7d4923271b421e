"""Full-ranking evaluation of a trained model and of the popularity baseline on the leave-one-out split.

Every item 1..N is ranked for every user; the items the user has already seen (``split.history(stage)``: the
training items for ``valid``, plus the valid target for ``test``) are masked, so no sampled negatives are involved.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pipeline.config import IndexConfig
from pipeline.data.cold_start import ColdItems, cold_mask
from pipeline.data.dataset import eval_inputs
from pipeline.data.splits import Stage, UserSplit
from pipeline.evaluation import faiss_index, metrics, retrieval, significance
from pipeline.io import read_parquet
from pipeline.models import contract
from pipeline.serving.inference import item_table, user_queries

log = logging.getLogger(__name__)

STAGES: tuple[Stage, ...] = ("valid", "test")
# Metrics over user subsets (pipeline.data.cold_start): targets no training sequence holds, ranked among all items;
# in the cold-start setting also the other users, and the cold targets ranked among that stage's held-out items.
COLD_START, WARM_START, AMONG_COLD = "cold_start", "warm_start", "cold_among_cold"


def subset_name(stage: str, subset: str) -> str:
    """``test_cold_start``, ``valid_cold_among_cold``, ..."""
    return f"{stage}_{subset}"


@dataclass
class StageResult:
    """One stage's metrics and each user's top-K list (rows in split order)."""

    metrics: dict[str, float]  # "HR@k", "NDCG@k", "MRR@k" for every k
    items: np.ndarray  # (U, K) int64, best first; -1 pads when fewer than K unseen items exist
    scores: np.ndarray  # (U, K) float32; -inf on pads
    targets: np.ndarray  # (U,) int64


@dataclass
class EvaluationResult:
    name: str  # run name in reports ("sasrec", "popularity", ...)
    user_idx: np.ndarray  # (U,) int64, split order
    ks: list[int]
    stages: dict[str, StageResult] = field(default_factory=dict)
    subsets: dict[str, dict[str, float]] = field(default_factory=dict)  # metrics over user subsets (COLD_START)
    # the index that ranked: SearchIndex.describe(), and for approximate kinds "recall_vs_flat"
    # {stage: {"recall@k": ...}} and "exact_fallback_users" {stage: n} (pipeline.evaluation.retrieval.SearchStats)
    index: dict[str, Any] = field(default_factory=dict)

    def metrics(self) -> dict[str, dict[str, float]]:
        """``{stage or subset: {metric: value}}``, the shape every report table reads."""
        return {stage: result.metrics for stage, result in self.stages.items()} | self.subsets


def evaluate_vectors(
    name: str,
    split: UserSplit,
    item_vectors: np.ndarray,
    queries_for: Callable[[Stage], np.ndarray],
    ks: Sequence[int],
    stages: Sequence[Stage] = STAGES,
    index: IndexConfig = faiss_index.FLAT,
    device: torch.device | str = "cpu",
    cold: ColdItems | None = None,
) -> EvaluationResult:
    """Rank with ``queries_for(stage)`` (U, D) against ``item_vectors`` (N+1, D); the core of every evaluation.

    ``index`` picks the FAISS index (:mod:`pipeline.evaluation.faiss_index`, on ``device`` where FAISS can); an
    approximate one is also compared with exact flat search on the same queries (``result.index["recall_vs_flat"]``).
    Per stage, the users whose target no training sequence holds get ``<stage>_cold_start`` metrics; with ``cold``
    (the cold-start setting's held-out items) also ``<stage>_warm_start`` and ``<stage>_cold_among_cold``.
    """
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1:
        raise ValueError(f"evaluate.ks must be a non-empty list of positive integers, got {ks}")
    num_items = len(item_vectors) - 1  # row 0 is padding
    if ks[-1] > num_items:  # a cut-off past the catalogue means nothing (and would size every top-K array)
        raise ValueError(
            f"`evaluate.ks` = {ks}: K = {ks[-1]} is more than the {num_items} items ranked; keep every K <= {num_items}"
        )
    search_index = faiss_index.build_index(item_vectors, index, device)
    flat = None if search_index.exact else faiss_index.build_index(item_vectors, faiss_index.FLAT, device)
    result = EvaluationResult(name=name, user_idx=split.user_idx, ks=ks)
    result.index = search_index.describe()
    log.info(
        "%s: faiss %s on %s built in %.2f s",
        name,
        search_index.factory,
        search_index.device,
        search_index.build_seconds,
    )
    for stage in stages:
        start = time.perf_counter()
        queries = queries_for(stage)  # (U, D)
        history, stats = split.history(stage), retrieval.SearchStats()
        items, scores = retrieval.top_k(queries, item_vectors, history, max(ks), index=search_index, stats=stats)
        if flat is not None:
            exact_items, _ = retrieval.top_k(queries, item_vectors, history, max(ks), index=flat)
            recall = faiss_index.recall_at_k(items, exact_items, ks)
            result.index.setdefault("recall_vs_flat", {})[stage] = recall
            result.index.setdefault("exact_fallback_users", {})[stage] = stats.exact_fallback
            log.info("%s %s: %s recall vs flat %s", name, stage, search_index.factory, _fmt(recall))
        targets = split.target(stage)  # (U,)
        result.stages[stage] = StageResult(metrics.compute(items, targets, ks), items, scores, targets)
        result.subsets |= _subset_metrics(split, stage, result.stages[stage], queries, item_vectors, ks, cold)
        log.info(
            "%s %s: %d users x %d items ranked in %.2f s",
            name,
            stage,
            len(split),
            len(item_vectors) - 1,
            time.perf_counter() - start,
        )
    return result


def _subset_metrics(
    split: UserSplit,
    stage: Stage,
    ranked: StageResult,
    queries: np.ndarray,
    item_vectors: np.ndarray,
    ks: list[int],
    cold: ColdItems | None,
) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    if cold is None and stage != "test":  # normal setting: only the (rare) naturally unseen test targets
        return out
    mask = cold_mask(split, stage)  # (U,)
    if not mask.any():  # never an empty subset: its metrics would be NaN
        return out
    out[subset_name(stage, COLD_START)] = metrics.compute(ranked.items, ranked.targets, ks, mask=mask)
    if cold is None:
        return out
    if (~mask).any():
        out[subset_name(stage, WARM_START)] = metrics.compute(ranked.items, ranked.targets, ks, mask=~mask)
    candidates = cold.for_stage(stage)  # (C,)
    users = np.flatnonzero(mask)
    if len(candidates) and np.isin(ranked.targets[users], candidates).all():
        items = rank_among(queries[users], item_vectors, candidates, max(ks))  # (Uc, K)
        out[subset_name(stage, AMONG_COLD)] = metrics.compute(items, ranked.targets[users], ks)
    return out


def rank_among(queries: np.ndarray, item_vectors: np.ndarray, candidates: np.ndarray, k: int) -> np.ndarray:
    """(U, k) item indices: each query's best ``k`` of ``candidates`` only (same scores and tie order as a full
    ranking restricted to them; -1 pads when there are fewer than ``k``)."""
    table = np.vstack([item_vectors[:1], item_vectors[candidates]])  # (C+1, D): row 0 stays padding
    local, _ = retrieval.top_k(queries, table, [np.zeros(0, dtype=np.int64)] * len(queries), k)  # (U, min(k, C))
    mapped = np.where(local > 0, candidates[np.clip(local - 1, 0, None)], retrieval.PAD_ITEM)
    return retrieval.pad_columns(mapped.astype(np.int64), k)  # (U, k); k <= N (evaluate_vectors)


def _fmt(values: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.4f}" for k, v in values.items())


def evaluate_model(
    model: nn.Module,
    split: UserSplit,
    stages: Sequence[Stage] = STAGES,
    ks: Sequence[int] = (5, 10, 20),
    batch_size: int = 1024,
    max_seq_len: int = 200,
    device: torch.device | str = "cpu",
    name: str = "model",
    index: IndexConfig = faiss_index.FLAT,
    cold: ColdItems | None = None,
) -> EvaluationResult:
    """Score every user's history with ``model.user_vectors`` against ``model.item_vectors`` (full ranking).

    ``max_seq_len`` must be the length the model was trained with (the checkpoint's ``max_seq_len``). Users are
    fed to the model sorted by history length (results do not depend on left padding, see the registry contract).
    ``index`` is the FAISS index that ranks (``evaluate.index``; default exact flat).
    """
    item_vectors = item_table(model)  # (N+1, D)

    def queries_for(stage: Stage) -> np.ndarray:
        return model_queries(model, split, stage, max_seq_len, batch_size, device)

    return evaluate_vectors(name, split, item_vectors, queries_for, ks, stages, index, device, cold=cold)


def model_queries(
    model: nn.Module, split: UserSplit, stage: Stage, max_seq_len: int, batch_size: int, device: torch.device | str
) -> np.ndarray:
    """(U, D) float32 query vectors of every user's ``stage`` input (history before the target), split order."""
    inputs = eval_inputs(split, stage, max_seq_len)  # (U, L)
    # Batch users of similar length: batches are trimmed to their longest row, so less padding is computed.
    order = np.argsort((inputs != 0).sum(axis=1), kind="stable")  # (U,)
    ordered = user_queries(model, inputs[order], batch_size, device)  # (U, D), users in `order`
    queries = np.empty_like(ordered)
    queries[order] = ordered
    return queries


def evaluate_heads(model: nn.Module, split: UserSplit, name: str, **kwargs: Any) -> list[EvaluationResult]:
    """For a model that fuses several heads (ODMT: ``heads`` + ``single_head``), each head ranking alone, as runs
    named ``<name>[<head>]``; ``[]`` for single-head models. ``kwargs`` go to :func:`evaluate_model`."""
    if not contract.is_multi_head(model):
        return []
    results = []
    for head in model.heads:
        with model.single_head(head):
            results.append(evaluate_model(model, split, name=f"{name}[{head}]", **kwargs))
    return results


PAIRED_METRICS = ("NDCG", "HR", "MRR")


def paired_comparison(
    model: EvaluationResult,
    baseline: EvaluationResult,
    resamples: int,
    seed: int,
    keys: Sequence[str] | None = None,
) -> dict[str, dict[str, dict[str, float]]]:
    """``{stage: {"NDCG@k": {model, baseline, diff, ci_low, ci_high, p_value, relative}}}``: model - baseline per
    metric and k (or the metric ``keys`` only), paired over the same users (:mod:`pipeline.evaluation.significance`);
    both must rank the same split."""
    if not np.array_equal(model.user_idx, baseline.user_idx):
        raise ValueError(f"{model.name} and {baseline.name} were evaluated on different users; rerun both")
    keys = list(keys) if keys is not None else [f"{name}@{k}" for k in model.ks for name in PAIRED_METRICS]

    def ranks(result: EvaluationResult) -> dict[str, np.ndarray]:
        return {stage: metrics.target_ranks(r.items, r.targets) for stage, r in result.stages.items()}

    for stage, r in model.stages.items():
        if stage in baseline.stages and not np.array_equal(r.targets, baseline.stages[stage].targets):
            raise ValueError(f"{model.name} and {baseline.name} have different {stage} targets; rerun both")
    return significance.compare_ranks(ranks(model), ranks(baseline), keys, resamples, seed)


def training_counts(split: UserSplit, num_items: int) -> np.ndarray:
    """(N+1,) float32 interaction counts over the training items only (row 0 = 0)."""
    flat = np.concatenate(split.train) if len(split) else np.zeros(0, dtype=np.int64)
    if len(flat) and (flat.min() < 1 or flat.max() > num_items):
        raise ValueError(f"training items must lie in 1..{num_items}; found {flat.min()}..{flat.max()}")
    return np.bincount(flat, minlength=num_items + 1).astype(np.float32)


def evaluate_popularity(
    split: UserSplit,
    num_items: int,
    ks: Sequence[int],
    stages: Sequence[Stage] = STAGES,
    cold: ColdItems | None = None,
) -> EvaluationResult:
    """Most-popular baseline: every user gets the items with the most training interactions, history masked.

    Counts come from ``split.train`` for both stages (the valid targets are not counted for test, just as the
    model is not retrained on them). Ties go to the smaller item index (see :mod:`pipeline.evaluation.retrieval`).
    Always ranked by exact flat search, whatever ``evaluate.index`` says: one-dimensional counts are no ANN workload.
    """
    counts = training_counts(split, num_items)[:, None]  # (N+1, 1)
    queries = np.ones((len(split), 1), dtype=np.float32)  # (U, 1): score = count
    result = evaluate_vectors("popularity", split, counts, lambda stage: queries, ks, stages, cold=cold)
    # Held-out items all have 0 training interactions: among them popularity is one big tie, broken by item index
    # (first appearance in the whole log), which would leak when they were first used. Not reported.
    for stage in stages:
        result.subsets.pop(subset_name(stage, AMONG_COLD), None)
    return result


def load_user_ids(prepared_dir: Path, split: UserSplit) -> np.ndarray:
    """(U,) original user ids in split order, read from ``sequences.parquet`` and checked against the split."""
    path = prepared_dir / "sequences.parquet"
    frame = read_parquet(path, "Run `dvc repro prepare`.", columns=["user_idx", "user_id"])
    if not np.array_equal(frame["user_idx"].to_numpy(), split.user_idx):
        raise ValueError(f"{path}: user_idx order differs from the loaded split; rerun `dvc repro prepare`")
    return frame["user_id"].to_numpy()
