"""Time one full-ranking top-K pass (FAISS exact inner product + history masking) at MovieLens-1M scale.

    python -m bench.eval_speed            # 6,040 users x 3,706 items, 64-d, K = 20

Random vectors; history lengths are drawn log-normal around ML-1M's (min 20, median ~96, max 2,314).
Prints seconds and users/s for retrieval alone and for retrieval + metrics. Never a timed assertion.
"""

from __future__ import annotations

import time

import faiss
import numpy as np
import torch
import typer

from pipeline.evaluation import metrics, retrieval

app = typer.Typer(add_completion=False)


def ml1m_like_histories(rng: np.random.Generator, num_users: int, num_items: int, max_len: int) -> list[np.ndarray]:
    lengths = np.exp(rng.normal(np.log(96), 0.95, size=num_users)).astype(np.int64)  # median ~96
    lengths = np.clip(lengths, 20, max_len)
    lengths[0] = max_len  # the heaviest ML-1M user
    return [rng.choice(np.arange(1, num_items + 1), size=n, replace=False) for n in lengths]


@app.command()
def main(
    users: int = typer.Option(6040, help="number of users"),
    items: int = typer.Option(3706, help="number of items"),
    dim: int = typer.Option(64, help="vector dimension"),
    k: int = typer.Option(20, help="top-K list length (max of evaluate.ks)"),
    max_len: int = typer.Option(2314, help="longest history"),
    repeats: int = typer.Option(3, help="timed repeats (the best is reported)"),
    seed: int = typer.Option(0),
) -> None:
    rng = np.random.default_rng(seed)
    item_vectors = rng.normal(size=(items + 1, dim)).astype(np.float32)  # (N+1, D)
    queries = rng.normal(size=(users, dim)).astype(np.float32)  # (U, D)
    histories = ml1m_like_histories(rng, users, items, min(max_len, items - k))
    targets = rng.integers(1, items + 1, size=users)
    lengths = np.array([len(h) for h in histories])
    typer.echo(
        f"{users} users x {items} items, d={dim}, K={k}; history length median {np.median(lengths):.0f}, "
        f"max {lengths.max()}; torch threads {torch.get_num_threads()}, faiss threads {faiss.omp_get_max_threads()}"
    )
    retrieval.top_k(queries[:64], item_vectors, histories[:64], k)  # warm-up
    best_search = best_total = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        topk, _ = retrieval.top_k(queries, item_vectors, histories, k)
        searched = time.perf_counter()
        metrics.compute(topk, targets, ks=[5, 10, 20] if k >= 20 else [k])
        done = time.perf_counter()
        best_search = min(best_search, searched - start)
        best_total = min(best_total, done - start)
    typer.echo(f"top_k:            {best_search:.3f} s  ({users / best_search:,.0f} users/s)")
    typer.echo(f"top_k + metrics:  {best_total:.3f} s  ({users / best_total:,.0f} users/s)")


if __name__ == "__main__":
    app()
