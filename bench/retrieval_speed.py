"""Retrieval at scale: flat vs IVF vs HNSW on a synthetic catalog (issue 14), as built by
pipeline.evaluation.faiss_index.

    python -m bench.retrieval_speed                                  # 1M items x 64-d, 10,000 queries, 1 thread
    python -m bench.retrieval_speed --items 100000 --nprobe 4 --nprobe 16 --ef-search 32 --threads 2

Synthetic data (:func:`clustered_items`), chosen so that IVF's lists mean something, as they do for learned item
embeddings (which are clustered by genre, popularity, ...), and uniform noise does not:

- ``--clusters`` centres drawn uniformly on the unit sphere in ``--dim`` dimensions;
- cluster sizes are skewed like item popularity: cluster ``r`` gets a share proportional to ``1 / (r + 10)``;
- an item is its centre plus isotropic Gaussian noise of norm about ``--spread``, times a log-normal scale
  (sigma 0.2), so norms differ and the inner product is not a cosine (maximum inner-product search, as the
  pipeline's scores are);
- a query is a centre drawn with the same skew plus noise of norm about ``--spread``: a user "near" some genres.

Every index is built with :func:`pipeline.evaluation.faiss_index.build_index` (``faiss.index_factory``, inner product)
and searched with ``index.search`` for the top 10, no history (the ANN part; history masking is the same exact
over-fetch for every kind). Build time is timed once per index; IVF and HNSW are built once and searched with each
``--nprobe`` / ``--ef-search``. recall@10 = the share of flat's top 10 that the index's top 10 holds
(:func:`pipeline.evaluation.faiss_index.recall_at_k`). Prints a table; never a timed assertion.
"""

from __future__ import annotations

import platform
import time
from typing import Annotated

import faiss
import numpy as np
import typer

from pipeline.config import HnswConfig, IndexConfig, IvfConfig
from pipeline.evaluation.faiss_index import FLAT, SearchIndex, build_index, recall_at_k

app = typer.Typer(add_completion=False)
K = 10


def clustered_items(
    n: int, dim: int, clusters: int, spread: float, rng: np.random.Generator, chunk: int = 100_000
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(table (n+1, dim) float32 with row 0 = padding, centres (clusters, dim), cluster weights (clusters,))``."""
    centres = rng.normal(size=(clusters, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)  # (C, D) on the unit sphere
    weights = 1.0 / (np.arange(clusters) + 10.0)
    weights /= weights.sum()  # (C,) popularity-like skew
    table = np.zeros((n + 1, dim), dtype=np.float32)
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        which = rng.choice(clusters, size=m, p=weights)  # (m,)
        noise = rng.normal(scale=spread / np.sqrt(dim), size=(m, dim))  # (m, D), norm ~ spread
        scale = rng.lognormal(0.0, 0.2, size=(m, 1))  # (m, 1)
        table[1 + start : 1 + start + m] = (centres[which] + noise) * scale
    return table, centres, weights


def queries_near(
    centres: np.ndarray, weights: np.ndarray, n: int, spread: float, rng: np.random.Generator
) -> np.ndarray:
    which = rng.choice(len(centres), size=n, p=weights)
    noise = rng.normal(scale=spread / np.sqrt(centres.shape[1]), size=(n, centres.shape[1]))
    return np.ascontiguousarray(centres[which] + noise, dtype=np.float32)  # (Q, D)


def timed_search(index: SearchIndex, queries: np.ndarray) -> tuple[np.ndarray, float]:
    start = time.perf_counter()
    _, ids = index.search(queries, K)  # (Q, K)
    return ids + 1, time.perf_counter() - start  # FAISS id j = item j + 1


def set_search_param(index: SearchIndex, faiss_name: str, key: str, value: int) -> None:
    """Change a search-time parameter (``nprobe``, ``efSearch``) of a built index, and its record."""
    faiss.ParameterSpace().set_index_parameter(index.cpu, faiss_name, value)
    index.params[key] = value


@app.command()
def main(
    items: Annotated[int, typer.Option(help="catalog size")] = 1_000_000,
    dim: Annotated[int, typer.Option(help="vector dimension")] = 64,
    queries: Annotated[int, typer.Option(help="queries searched per index")] = 10_000,
    clusters: Annotated[int, typer.Option(help="clusters of the synthetic catalog")] = 2000,
    spread: Annotated[float, typer.Option(help="noise norm around a cluster centre (centres have norm 1)")] = 1.0,
    nlist: Annotated[int, typer.Option(help="IVF lists")] = 1024,
    nprobe: Annotated[list[int] | None, typer.Option(help="IVF lists scanned (repeat for several)")] = None,
    hnsw_m: Annotated[int, typer.Option(help="HNSW neighbours per node")] = 32,
    ef_construction: Annotated[int, typer.Option(help="HNSW build candidate list (FAISS default)")] = 40,
    ef_search: Annotated[list[int] | None, typer.Option(help="HNSW search candidate list (repeat)")] = None,
    threads: Annotated[int, typer.Option(help="FAISS OpenMP threads")] = 1,
    seed: int = 0,
) -> None:
    faiss.omp_set_num_threads(threads)
    nprobes, efs = nprobe or [8, 16, 32], ef_search or [32, 64, 128]
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    table, centres, weights = clustered_items(items, dim, clusters, spread, rng)
    query_vectors = queries_near(centres, weights, queries, spread, rng)
    typer.echo(
        f"{items:,} items x {dim}-d ({clusters} clusters, spread {spread}), {queries:,} queries, top {K}; "
        f"generated in {time.perf_counter() - t0:.1f} s"
    )
    typer.echo(f"faiss {faiss.__version__}, {threads} thread(s), {platform.processor() or platform.machine()}")

    rows: list[tuple[str, str, float, float, float]] = []  # index, search params, build s, queries/s, recall@10
    flat = build_index(table, FLAT)
    truth, seconds = timed_search(flat, query_vectors)
    flat_qps = queries / seconds
    rows.append(("Flat", "exact", flat.build_seconds, flat_qps, 1.0))
    typer.echo(f"  flat: {seconds:.1f} s")

    def measure(index: SearchIndex, label: str) -> None:
        ids, secs = timed_search(index, query_vectors)
        recall = recall_at_k(ids, truth, [K])[f"recall@{K}"]
        rows.append((index.factory, label, index.build_seconds, queries / secs, recall))
        typer.echo(f"  {index.factory} {label}: {secs:.1f} s, recall@{K} {recall:.4f}")

    ivf = build_index(table, IndexConfig("ivf", IvfConfig(nlist, nprobes[0], seed), HnswConfig(32, 40, 16)))
    typer.echo(f"  {ivf.factory}: built in {ivf.build_seconds:.1f} s")
    for n in nprobes:
        set_search_param(ivf, "nprobe", "nprobe", n)
        measure(ivf, f"nprobe={n}")
    del ivf
    hnsw_cfg = HnswConfig(hnsw_m, ef_construction, efs[0])
    hnsw = build_index(table, IndexConfig("hnsw", IvfConfig(nlist, 1, seed), hnsw_cfg))
    typer.echo(f"  {hnsw.factory}: built in {hnsw.build_seconds:.1f} s (efConstruction {ef_construction})")
    for ef in efs:
        set_search_param(hnsw, "efSearch", "ef_search", ef)
        measure(hnsw, f"efSearch={ef}")

    typer.echo(f"\n| index | search | build s | queries/s | x flat | recall@{K} vs flat |")
    typer.echo("|---|---|---:|---:|---:|---:|")
    for name, label, build_s, qps, recall in rows:
        typer.echo(f"| {name} | {label} | {build_s:.1f} | {qps:,.0f} | {qps / flat_qps:.1f} | {recall:.4f} |")
    goal = [r for r in rows[1:] if r[4] >= 0.95 and r[3] >= 10 * flat_qps]
    best = max(goal, key=lambda r: r[3], default=None)
    typer.echo(
        f"\ngoal (recall@{K} >= 0.95 at >= 10x flat's queries/s): "
        + (f"met by {best[0]} {best[1]} ({best[3] / flat_qps:.0f}x, recall {best[4]:.4f})" if best else "not met")
    )


if __name__ == "__main__":
    app()
