"""FAISS top-K with history masking against a brute-force torch reference."""

from __future__ import annotations

import faiss
import numpy as np
import pytest
import torch

from pipeline.config import DEFAULT_HNSW, DEFAULT_IVF, IndexConfig
from pipeline.evaluation import faiss_index, retrieval


def brute_force(queries: np.ndarray, items: np.ndarray, histories: list[np.ndarray], k: int):
    """Full score matrix, padding and history set to -inf, torch.topk (no ties in random float data)."""
    scores = torch.from_numpy(queries) @ torch.from_numpy(items).T  # (U, N+1)
    scores[:, 0] = -torch.inf
    for row, hist in enumerate(histories):
        scores[row, torch.from_numpy(hist)] = -torch.inf
    values, indices = torch.topk(scores, k, dim=1)
    return indices.numpy(), values.numpy()


def random_case(seed: int, num_users: int = 120, num_items: int = 200, dim: int = 16):
    rng = np.random.default_rng(seed)
    items = rng.normal(size=(num_items + 1, dim)).astype(np.float32)
    items[0] = 100.0  # padding row would win every query if it were indexed
    queries = rng.normal(size=(num_users, dim)).astype(np.float32)
    lengths = rng.integers(0, 40, size=num_users)
    lengths[:5] = [num_items - 20, num_items - 15, num_items - 12, num_items - 30, 0]  # nearly everything seen
    histories = [rng.choice(np.arange(1, num_items + 1), size=n, replace=False) for n in lengths]
    return queries, items, histories


@pytest.mark.parametrize("chunk_size", [7, 1024])
def test_matches_brute_force(chunk_size: int) -> None:
    queries, items, histories = random_case(0)
    got_items, got_scores = retrieval.top_k(queries, items, histories, k=10, chunk_size=chunk_size)
    want_items, want_scores = brute_force(queries, items, histories, k=10)
    assert got_items.dtype == np.int64 and got_scores.dtype == np.float32
    assert got_items.shape == got_scores.shape == (120, 10)
    np.testing.assert_array_equal(got_items, want_items)
    np.testing.assert_allclose(got_scores, want_scores, rtol=1e-5, atol=1e-5)


def test_history_and_padding_never_returned() -> None:
    queries, items, histories = random_case(1)
    # Give every user's first history item the highest score of all.
    for row, hist in enumerate(histories):
        if len(hist):
            items[hist[0]] = queries[row] * 50.0
    got, _ = retrieval.top_k(queries, items, histories, k=15)
    assert (got != 0).all()
    for row, hist in enumerate(histories):
        assert not np.isin(got[row], hist).any()


def test_tiny_catalog_pads_with_minus_one_and_neg_inf() -> None:
    items = np.arange(5 * 2, dtype=np.float32).reshape(5, 2)  # items 1..4
    queries = np.ones((2, 2), dtype=np.float32)
    got_items, got_scores = retrieval.top_k(queries, items, [np.array([4, 2]), np.array([], dtype=np.int64)], k=3)
    assert got_items.tolist() == [[3, 1, -1], [4, 3, 2]]
    assert np.isneginf(got_scores[0, 2]) and np.isfinite(got_scores[1]).all()


@pytest.mark.parametrize(("high", "k"), [(2, 50), (3, 50), (4, 20)])
def test_ties_break_by_ascending_item_index(high: int, k: int) -> None:
    # Popularity-style integer scores with many ties: score desc, then item index asc, also where a tie group
    # crosses the end of FAISS's k' list (FAISS alone keeps other tied items there for (2, 50) and (3, 50)).
    rng = np.random.default_rng(2)
    counts = rng.integers(0, high, size=(301, 1)).astype(np.float32)
    queries = np.ones((50, 1), dtype=np.float32)
    histories = [rng.choice(np.arange(1, 301), size=rng.integers(0, 250), replace=False) for _ in range(50)]
    got, got_scores = retrieval.top_k(queries, counts, histories, k=k, chunk_size=8)
    for row, hist in enumerate(histories):
        allowed = np.setdiff1d(np.arange(1, 301), hist)
        want = allowed[np.lexsort((allowed, -counts[allowed, 0]))][:k]
        np.testing.assert_array_equal(got[row], want)
        np.testing.assert_array_equal(got_scores[row], counts[want, 0])


def test_dense_reference_agrees() -> None:
    queries, items, histories = random_case(3)
    a = retrieval.top_k(queries, items, histories, k=12)
    b = retrieval.dense_top_k(queries, items, histories, k=12)
    np.testing.assert_array_equal(a[0], b[0])


def test_reuses_index_and_restores_faiss_threads() -> None:
    queries, items, histories = random_case(4)
    before = faiss.omp_get_max_threads()
    index = faiss_index.build_index(items)
    got, _ = retrieval.top_k(queries, items, histories, k=5, index=index, num_threads=1)
    np.testing.assert_array_equal(got, brute_force(queries, items, histories, 5)[0])
    assert faiss.omp_get_max_threads() == before


def test_bad_inputs_raise_clear_errors() -> None:
    queries, items, histories = random_case(5)
    with pytest.raises(ValueError, match="outside 1..200"):
        retrieval.top_k(queries, items, [np.array([201])] + histories[1:], k=5)
    with pytest.raises(ValueError, match="one per user"):
        retrieval.top_k(queries, items, histories[:-1], k=5)
    with pytest.raises(ValueError, match="queries must be"):
        retrieval.top_k(queries[:, :3], items, histories, k=5)
    bad = items.copy()
    bad[3, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        retrieval.top_k(queries, bad, histories, k=5)
    with pytest.raises(ValueError, match="not supported; must be one of: flat, ivf, hnsw"):
        faiss_index.build_index(items, IndexConfig("annoy", DEFAULT_IVF, DEFAULT_HNSW))  # type: ignore[arg-type]
