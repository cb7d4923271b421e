"""FAISS inner-product indexes over a model's item vectors: flat (exact), IVF and HNSW (approximate), GPU when present.

One module builds every index the pipeline searches or exports (``evaluate``, ``recommend``, the benchmarks), all
through ``faiss.index_factory`` with ``METRIC_INNER_PRODUCT``:

============  ===================  ===============================================================================
kind          factory string       parameters (``evaluate.ivf`` / ``evaluate.hnsw``, same under ``recommend``)
============  ===================  ===============================================================================
``flat``      ``Flat``             none: exact
``ivf``       ``IVF<nlist>,Flat``  ``nlist`` k-means lists, ``nprobe`` scanned per query, ``seed`` of the k-means
``hnsw``      ``HNSW<m>,Flat``     ``m`` neighbours per node, ``ef_construction``, ``ef_search``
============  ===================  ===============================================================================

Item vectors are an (N+1, D) table whose row 0 is padding; only items 1..N are indexed, so FAISS id ``j`` is item
``j + 1`` and padding is never returned.

IVF is trained on the items themselves (FAISS samples at most 256 points per list, seeded by ``ivf.seed``, so the
same vectors and seed give the same index). On a small catalog ``nlist`` is clamped to ``N // 39`` (FAISS wants at
least 39 training points per list) and ``nprobe`` to ``nlist``, with a log line; :meth:`SearchIndex.describe`
records the values actually used.

GPU: on a CUDA device, flat and IVF indexes are copied to the GPU through FAISS's GPU API when the installed faiss
has it (the faiss-gpu wheels: ``faiss.StandardGpuResources``); otherwise, and always for HNSW (FAISS has no GPU
HNSW), they are searched on the CPU and a log line says why. The index is always built on the CPU (deterministic,
and the CPU copy is what ``recommend`` writes); searches asking for more than :data:`GPU_MAX_K` neighbours (long
histories are over-fetched) run on the CPU copy, since FAISS's GPU search returns at most that many.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import faiss
import numpy as np
import torch

from pipeline.config import DEFAULT_HNSW, DEFAULT_IVF, IndexConfig

log = logging.getLogger(__name__)

INDEX_KINDS: tuple[str, ...] = ("flat", "ivf", "hnsw")
GPU_KINDS: tuple[str, ...] = ("flat", "ivf")
MIN_POINTS_PER_LIST = 39  # below this FAISS warns that k-means has too few training points per centroid
GPU_MAX_K = 2048  # FAISS GPU search (k and nprobe) is limited to this many
FLAT = IndexConfig("flat", DEFAULT_IVF, DEFAULT_HNSW)
_FACTORY = {"flat": "Flat", "ivf": "IVF{nlist},Flat", "hnsw": "HNSW{m},Flat"}


@dataclass
class SearchIndex:
    """A built index: the CPU FAISS index (what is saved), an optional GPU copy that answers searches, and what it is.

    Has what :func:`pipeline.evaluation.retrieval.top_k` needs of an index: ``search``, ``ntotal``, ``d`` and ``exact``.
    """

    cpu: faiss.Index
    kind: str
    factory: str
    params: dict[str, Any] = field(default_factory=dict)  # the parameters actually used (after clamping)
    gpu: faiss.Index | None = None
    build_seconds: float = 0.0
    _resources: Any = None  # faiss.StandardGpuResources kept alive as long as the GPU index

    @property
    def ntotal(self) -> int:
        return int(self.cpu.ntotal)

    @property
    def d(self) -> int:
        return int(self.cpu.d)

    @property
    def exact(self) -> bool:
        return self.kind == "flat"

    @property
    def device(self) -> str:
        return "cuda" if self.gpu is not None else "cpu"

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(Q, D) float32 -> scores (Q, k) float32, FAISS ids (Q, k) int64 (-1 where fewer than k were found)."""
        if self.gpu is not None and k <= GPU_MAX_K:
            return self.gpu.search(queries, k)
        return self.cpu.search(queries, k)

    def describe(self) -> dict[str, Any]:
        """What produced a ranking, for metrics.json and manifests: kind, factory string, parameters, device."""
        return {"kind": self.kind, "factory": self.factory, "params": dict(self.params), "device": self.device}


def build_index(
    item_vectors: np.ndarray, config: IndexConfig = FLAT, device: torch.device | str = "cpu"
) -> SearchIndex:
    """An inner-product index of ``config.kind`` over rows 1..N of ``item_vectors`` (N+1, D); see the module doc."""
    if config.kind not in INDEX_KINDS:
        raise ValueError(f"index kind {config.kind!r} is not supported; must be one of: {', '.join(INDEX_KINDS)}")
    vectors = check_item_vectors(item_vectors)
    items = np.ascontiguousarray(vectors[1:])  # (N, D): padding row 0 is never indexed
    start = time.perf_counter()
    factory, params = _factory(config, len(items))
    index = faiss.index_factory(items.shape[1], factory, faiss.METRIC_INNER_PRODUCT)
    if config.kind == "ivf":
        ivf = faiss.extract_index_ivf(index)
        ivf.cp.seed = int(config.ivf.seed)
        index.train(items)
        ivf.nprobe = params["nprobe"]
        ivf.make_direct_map()  # reconstruct(): the recommend artifact reads its vectors back from the index
    elif config.kind == "hnsw":
        index.hnsw.efConstruction = params["ef_construction"]
        index.hnsw.efSearch = params["ef_search"]
    index.add(items)
    built = SearchIndex(index, config.kind, factory, params, build_seconds=time.perf_counter() - start)
    _place_on_gpu(built, device)
    return built


def wrap_loaded(index: faiss.Index, kind: str, device: torch.device | str = "cpu") -> SearchIndex:
    """A :class:`SearchIndex` around an index read from disk (``faiss.read_index``) that ``kind`` built."""
    if kind == "flat":
        factory, params = "Flat", {}
    elif kind == "ivf":
        ivf = faiss.extract_index_ivf(index)
        params = {"nlist": int(ivf.nlist), "nprobe": int(ivf.nprobe)}
        factory = f"IVF{params['nlist']},Flat"
    elif kind == "hnsw":
        params = {"m": int(index.hnsw.nb_neighbors(1)), "ef_search": int(index.hnsw.efSearch)}
        factory = f"HNSW{params['m']},Flat"
    else:
        raise ValueError(f"index kind {kind!r} is not supported; must be one of: {', '.join(INDEX_KINDS)}")
    loaded = SearchIndex(index, kind, factory, params)
    _place_on_gpu(loaded, device)
    return loaded


def _factory(config: IndexConfig, num_items: int) -> tuple[str, dict[str, Any]]:
    """The factory string and effective parameters of ``config`` for ``num_items`` items (IVF clamped)."""
    if config.kind == "flat":
        return "Flat", {}
    if config.kind == "hnsw":
        h = config.hnsw
        params = {"m": int(h.m), "ef_construction": int(h.ef_construction), "ef_search": int(h.ef_search)}
        return _FACTORY["hnsw"].format(**params), params
    nlist = min(int(config.ivf.nlist), max(1, num_items // MIN_POINTS_PER_LIST))
    if nlist < config.ivf.nlist:
        log.warning(
            "ivf.nlist = %d is too many lists for %d items (FAISS wants >= %d training points per list); using %d",
            config.ivf.nlist,
            num_items,
            MIN_POINTS_PER_LIST,
            nlist,
        )
    nprobe = min(int(config.ivf.nprobe), nlist)
    if nprobe < config.ivf.nprobe:
        log.warning("ivf.nprobe = %d exceeds the %d lists; scanning all %d (exact)", config.ivf.nprobe, nlist, nlist)
    params = {"nlist": nlist, "nprobe": nprobe, "seed": int(config.ivf.seed)}
    if nlist != config.ivf.nlist:
        params["nlist_requested"] = int(config.ivf.nlist)
    return _FACTORY["ivf"].format(nlist=nlist), params


def gpu_faiss_available() -> bool:
    """Whether the installed faiss has the GPU API and sees a GPU (faiss-gpu wheels; faiss-cpu has neither)."""
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def _place_on_gpu(index: SearchIndex, device: torch.device | str) -> None:
    """Copy a flat/IVF index to ``device`` when it is CUDA and faiss can; otherwise log why it stays on the CPU."""
    device = torch.device(device)
    if device.type != "cuda":
        return
    if index.kind not in GPU_KINDS:
        log.info("faiss index %s: FAISS has no GPU version of %s; searching on the CPU", index.factory, index.kind)
        return
    if not gpu_faiss_available():
        log.info(
            "faiss index %s: the installed faiss has no GPU support (faiss-cpu) or sees no GPU; searching on the CPU "
            "(install a faiss-gpu wheel to search on %s)",
            index.factory,
            device,
        )
        return
    resources = faiss.StandardGpuResources()
    index.gpu = faiss.index_cpu_to_gpu(resources, device.index or 0, index.cpu)
    index._resources = resources
    if index.kind == "ivf":
        faiss.GpuParameterSpace().set_index_parameter(index.gpu, "nprobe", min(index.params["nprobe"], GPU_MAX_K))
    log.info("faiss index %s: searching on %s", index.factory, device)


def recall_at_k(approx: np.ndarray, exact: np.ndarray, ks: Sequence[int]) -> dict[str, float]:
    """``{"recall@k": mean over users of |approx top-k & exact top-k| / |exact top-k|}`` for every ``k``.

    ``approx`` and ``exact`` are (U, K) item lists, best first, padded with -1 (never counted); a user whose exact
    top-k is empty (nothing left to rank) is left out of the mean.
    """
    out: dict[str, float] = {}
    for k in sorted({int(k) for k in ks}):
        a, e = approx[:, :k], exact[:, :k]  # (U, k)
        found = ((a[:, :, None] == e[:, None, :]) & (e[:, None, :] >= 0)).any(axis=1).sum(axis=1)  # (U,)
        size = (e >= 0).sum(axis=1)  # (U,)
        keep = size > 0
        out[f"recall@{k}"] = float((found[keep] / size[keep]).mean()) if keep.any() else float("nan")
    return out


def check_item_vectors(item_vectors: np.ndarray) -> np.ndarray:
    """``item_vectors`` as a contiguous float32 (N+1, D) table with finite rows 1..N, else a clear error."""
    vectors = np.ascontiguousarray(item_vectors, dtype=np.float32)
    if vectors.ndim != 2 or vectors.shape[0] < 2:
        raise ValueError(
            f"item vectors must be (N+1, D) with row 0 = padding and at least one item, got {vectors.shape}"
        )
    if not np.isfinite(vectors[1:]).all():
        raise ValueError("item vectors contain NaN or inf; the model diverged (check the training log)")
    return vectors
