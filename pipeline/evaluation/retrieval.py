"""Exact full-ranking top-K retrieval with FAISS, masking each user's history (DESIGN.md: no sampled negatives).

Item vectors are an (N+1, D) table whose row 0 is padding; only items 1..N are indexed, so padding is never
returned. A user's score for item ``i`` is the inner product ``query_u . item_vectors[i]``.

Exactness with masking: for a user with ``h`` history items, the best ``k`` non-history items are always among the
best ``k + h`` items overall, so each user is searched with ``k' = min(N, k + h)`` and the history is dropped
afterwards. Users are sorted by ``h`` and searched in chunks that share one ``k'`` (the chunk's largest), which
keeps the FAISS calls batched.

Tie order (deterministic, independent of FAISS internals): results are sorted by descending score, and equal
scores by ascending item index. FAISS's own choice between tied items at the edge of its ``k'`` list is not
specified, so a user whose ``k``-th kept score equals the lowest score FAISS returned is re-ranked exactly with a
dense numpy product (this happens with integer scores such as popularity counts, almost never with learned vectors).

Tiny catalogs: if a user has fewer than ``k`` items left after masking, the row is padded with item ``-1`` and
score ``-inf``; :func:`pipeline.evaluation.metrics.compute` never counts a padding entry as a hit.

Approximate indexes (IVF, HNSW; :mod:`pipeline.evaluation.faiss_index`) are searched the same way, so the history is
still masked exactly; only the candidates differ from flat. The tie re-ranking above assumes an exact list and is
skipped for them, but a user for whom the index found fewer than ``k`` unseen items although the catalog holds enough
(an IVF probe that mostly hits the history of a heavy user) is re-ranked exactly, and counted
(:attr:`SearchStats.exact_fallback`).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import faiss
import numpy as np
import torch

from pipeline.evaluation.faiss_index import SearchIndex, build_index, check_item_vectors

log = logging.getLogger(__name__)

PAD_ITEM = -1


@dataclass
class SearchStats:
    """What one :func:`top_k` call did besides searching the index (pass one in to have it filled)."""

    exact_fallback: int = 0  # users re-ranked exactly because an approximate index found < k unseen items
    tie_reranked: int = 0  # users re-ranked exactly because of tied scores at the edge of an exact list


def top_k(
    queries: np.ndarray,
    item_vectors: np.ndarray,
    histories: Sequence[np.ndarray],
    k: int,
    *,
    index: SearchIndex | faiss.Index | None = None,
    chunk_size: int = 256,
    num_threads: int | None = None,
    stats: SearchStats | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best items per user by inner product, excluding item 0 and each user's ``histories[u]``.

    ``queries`` (U, D) float32, ``item_vectors`` (N+1, D) float32, ``histories`` U arrays of item indices (1..N;
    0 is ignored as padding). ``index`` is a :func:`pipeline.evaluation.faiss_index.build_index` result (or a FAISS
    index read from disk) over the same ``item_vectors``; None = exact flat. ``num_threads`` sets FAISS's OpenMP threads
    for the call; None = torch's thread count when that is lower than FAISS's (a limit set with ``train.num_threads``
    also holds here), else FAISS's default.

    Returns ``(items, scores)``: (U, k) int64 and (U, k) float32, best first, padded with -1 / -inf when fewer
    than ``k`` items remain (see the module docstring for the tie order); ``k`` above the item count N is N.
    """
    vectors = check_item_vectors(item_vectors)
    num_items = vectors.shape[0] - 1
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    if queries.ndim != 2 or queries.shape[1] != vectors.shape[1]:
        raise ValueError(f"queries must be (users, {vectors.shape[1]}) to match item vectors, got {queries.shape}")
    if not np.isfinite(queries).all():
        raise ValueError("user query vectors contain NaN or inf; the model diverged (check the training log)")
    if len(histories) != len(queries):
        raise ValueError(f"got {len(histories)} histories for {len(queries)} query vectors; expected one per user")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    k = min(k, max(num_items, 1))  # no list is longer than the catalogue: a huge k never allocates (U, k)
    histories = [np.asarray(h, dtype=np.int64).reshape(-1) for h in histories]
    _check_histories(histories, num_items)
    if index is None:
        index = build_index(vectors)
    elif index.ntotal != num_items or index.d != vectors.shape[1]:
        raise ValueError(f"index holds {index.ntotal} x {index.d} vectors; expected {num_items} x {vectors.shape[1]}")
    exact = index.exact if isinstance(index, SearchIndex) else isinstance(index, faiss.IndexFlat)
    stats = stats if stats is not None else SearchStats()
    fallback = 0

    num_users = len(queries)
    out_items = np.full((num_users, k), PAD_ITEM, dtype=np.int64)  # (U, k)
    out_scores = np.full((num_users, k), -np.inf, dtype=np.float32)  # (U, k)
    lengths = np.array([len(h) for h in histories], dtype=np.int64)  # (U,)
    order = np.argsort(lengths, kind="stable")  # users by history length: similar k' per chunk
    with faiss_threads(num_threads):
        for start in range(0, num_users, chunk_size):
            rows = order[start : start + chunk_size]  # (C,)
            k_search = int(min(num_items, k + lengths[rows].max()))
            scores, ids = index.search(queries[rows], k_search)  # (C, k'), (C, k')
            items, kept, ambiguous = _drop_history(ids + 1, scores, [histories[r] for r in rows], k, num_items)
            out_items[rows], out_scores[rows] = items, kept
            if exact:
                redo = ambiguous if k_search < num_items else np.zeros(len(rows), dtype=bool)
                stats.tie_reranked += int(redo.sum())
            else:  # found fewer than k unseen items although the catalog has them
                redo = items[:, -1] == PAD_ITEM  # (C,)
                redo[redo] = [_unseen(histories[r], num_items) >= k for r in rows[redo]]
                fallback += int(redo.sum())
            if redo.any():
                again = rows[redo]
                log.debug("re-ranking %d users exactly (ties at the edge / too few candidates)", len(again))
                out_items[again], out_scores[again] = dense_top_k(
                    queries[again], vectors, [histories[r] for r in again], k
                )
    if fallback:
        log.info("%d users re-ranked exactly: the approximate index found fewer than %d unseen items", fallback, k)
    stats.exact_fallback += fallback
    return out_items, out_scores


def _unseen(history: np.ndarray, num_items: int) -> int:
    return num_items - len(np.unique(history[history > 0]))


def pad_columns(items: np.ndarray, k: int) -> np.ndarray:
    """(U, k) items: ``items`` (U, k') with ``PAD_ITEM`` columns added when the catalogue had fewer than k items."""
    if items.shape[1] >= k:
        return items
    return np.hstack([items, np.full((len(items), k - items.shape[1]), PAD_ITEM, dtype=items.dtype)])  # (U, k)


def dense_top_k(
    queries: np.ndarray, item_vectors: np.ndarray, histories: Sequence[np.ndarray], k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Reference top-K by a dense (U, N) score matrix, same contract and tie order as :func:`top_k`."""
    num_items = item_vectors.shape[0] - 1
    scores = queries.astype(np.float32) @ item_vectors[1:].astype(np.float32).T  # (U, N); column j = item j+1
    for row, hist in enumerate(histories):
        hist = hist[hist > 0]
        scores[row, hist - 1] = -np.inf
    item_ids = np.broadcast_to(np.arange(1, num_items + 1), scores.shape)  # (U, N)
    order = np.lexsort((item_ids, -scores), axis=-1)[:, :k]  # (U, min(k, N))
    kept_scores = np.take_along_axis(scores, order, 1)
    kept_items = np.where(np.isneginf(kept_scores), PAD_ITEM, np.take_along_axis(item_ids, order, 1))
    return _pad(kept_items, kept_scores, k)


def _drop_history(
    items: np.ndarray, scores: np.ndarray, histories: list[np.ndarray], k: int, num_items: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Remove history items from FAISS candidates (C, k') and keep the best ``k`` per row.

    Returns items (C, k), scores (C, k), and (C,) bool flags for rows whose ``k``-th kept score ties with the
    lowest candidate score (an item FAISS left out could tie with it).
    """
    num_rows = len(items)
    width = num_items + 1
    row_of = np.repeat(np.arange(num_rows, dtype=np.int64), [len(h) for h in histories])  # (sum h,)
    flat = np.concatenate(histories) if histories else np.zeros(0, dtype=np.int64)
    history_keys = row_of * width + flat  # one key per (row, history item)
    candidate_keys = np.arange(num_rows, dtype=np.int64)[:, None] * width + items  # (C, k')
    drop = np.isin(candidate_keys, history_keys) | (items <= 0)  # (C, k'); FAISS's -1 ids became 0
    floor = scores.min(axis=1)  # (C,) lowest score FAISS returned; every item it left out scores <= this
    masked = np.where(drop, -np.inf, scores).astype(np.float32)  # (C, k')
    sort_items = np.where(drop, np.iinfo(np.int64).max, items)
    order = np.lexsort((sort_items, -masked), axis=-1)[:, :k]  # (C, min(k, k')): score desc, item asc
    kept_items = np.take_along_axis(items, order, 1)
    kept_scores = np.take_along_axis(masked, order, 1)
    kept_items = np.where(np.isneginf(kept_scores), PAD_ITEM, kept_items)
    kept_items, kept_scores = _pad(kept_items, kept_scores, k)
    ambiguous = kept_scores[:, -1] <= floor  # (C,)
    return kept_items, kept_scores, ambiguous


def _pad(items: np.ndarray, scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    missing = k - items.shape[1]
    if missing > 0:
        items = np.pad(items, ((0, 0), (0, missing)), constant_values=PAD_ITEM)
        scores = np.pad(scores, ((0, 0), (0, missing)), constant_values=-np.inf)
    return items.astype(np.int64), scores.astype(np.float32)


@contextlib.contextmanager
def faiss_threads(num_threads: int | None) -> Iterator[None]:
    """Run FAISS with ``num_threads`` OpenMP threads (None: at most torch's thread count), then restore."""
    before = faiss.omp_get_max_threads()
    wanted = num_threads if num_threads is not None else min(before, torch.get_num_threads())
    faiss.omp_set_num_threads(max(1, int(wanted)))
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def _check_histories(histories: list[np.ndarray], num_items: int) -> None:
    for user, hist in enumerate(histories):
        if len(hist) and (hist.min() < 0 or hist.max() > num_items):
            bad = int(hist[(hist < 0) | (hist > num_items)][0])
            raise ValueError(
                f"history of user position {user} holds item {bad}, outside 1..{num_items}; the split and the "
                "model's item table disagree (rerun `dvc repro` so prepare, train and evaluate share one catalog)"
            )
