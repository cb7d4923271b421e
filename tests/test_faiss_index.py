"""FAISS indexes (issue 14): flat / IVF / HNSW through index_factory, exact history masking with approximate
indexes, recall against flat, seeded IVF, small-catalog clamping, the GPU path (faked) and its CPU fallback."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import faiss
import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from pipeline.config import ConfigError, EvaluateConfig, HnswConfig, IndexConfig, IvfConfig, load_section
from pipeline.data.splits import UserSplit
from pipeline.evaluation import faiss_index, retrieval
from pipeline.evaluation.ranking import evaluate_vectors
from pipeline.reporting.report import index_section
from pipeline.serving import recommend
from tests.helpers.projects import RECOMMEND, query_args, recommend_args, write_project

IVF = IndexConfig("ivf", IvfConfig(nlist=16, nprobe=4, seed=0), HnswConfig(m=16, ef_construction=64, ef_search=64))
HNSW = IndexConfig("hnsw", IVF.ivf, IVF.hnsw)


def clustered(num_items: int = 2000, dim: int = 16, clusters: int = 20, seed: int = 0) -> np.ndarray:
    """(N+1, D) item table, row 0 padding: points around random centres (IVF's lists mean something)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim))
    items = centres[rng.integers(0, clusters, num_items)] + 0.3 * rng.normal(size=(num_items, dim))
    return np.vstack([np.zeros((1, dim)), items]).astype(np.float32)


def queries_near(items: np.ndarray, n: int, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (items[rng.integers(1, len(items), n)] + 0.1 * rng.normal(size=(n, items.shape[1]))).astype(np.float32)


def test_every_kind_is_built_by_the_factory_and_approximate_kinds_have_high_recall() -> None:
    items = clustered()
    queries = queries_near(items, 200)
    histories = [np.random.default_rng(u).choice(np.arange(1, 2001), 30, replace=False) for u in range(200)]
    exact, _ = retrieval.dense_top_k(queries, items, histories, 10)
    for config, factory in ((faiss_index.FLAT, "Flat"), (IVF, "IVF16,Flat"), (HNSW, "HNSW16,Flat")):
        index = faiss_index.build_index(items, config)
        assert index.factory == factory and index.ntotal == 2000 and index.d == 16 and index.device == "cpu"
        assert index.cpu.metric_type == faiss.METRIC_INNER_PRODUCT
        got, scores = retrieval.top_k(queries, items, histories, 10, index=index)
        for row, hist in enumerate(histories):
            assert not np.isin(got[row], hist).any() and 0 not in got[row]  # masking stays exact
        assert (np.diff(scores, axis=1) <= 0).all()
        recall = faiss_index.recall_at_k(got, exact, [1, 10])["recall@10"]
        assert recall == 1.0 if config.kind == "flat" else recall >= 0.9
    assert faiss_index.build_index(items, IVF).params == {"nlist": 16, "nprobe": 4, "seed": 0}
    assert faiss_index.build_index(items, HNSW).params == {"m": 16, "ef_construction": 64, "ef_search": 64}


def test_ivf_is_seeded_and_exhaustive_probing_is_exact() -> None:
    items = clustered(seed=3)
    queries = queries_near(items, 100)
    first = faiss_index.build_index(items, IVF).search(queries, 10)
    again = faiss_index.build_index(items, IVF).search(queries, 10)
    np.testing.assert_array_equal(first[1], again[1])  # same vectors + seed = same index
    seeded = [faiss_index.build_index(items, IndexConfig("ivf", IvfConfig(16, 4, seed), IVF.hnsw)) for seed in (0, 7)]
    centroids = [faiss.downcast_index(faiss.extract_index_ivf(s.cpu).quantizer).reconstruct_n(0, 16) for s in seeded]
    assert not np.array_equal(centroids[0], centroids[1])  # the seed reaches the k-means
    everything = IndexConfig("ivf", IvfConfig(nlist=16, nprobe=16, seed=0), IVF.hnsw)
    histories = [np.array([1, 2, 3])] * 100
    got, _ = retrieval.top_k(queries, items, histories, 10, index=faiss_index.build_index(items, everything))
    np.testing.assert_array_equal(got, retrieval.dense_top_k(queries, items, histories, 10)[0])


def test_small_catalog_clamps_nlist_and_nprobe_with_a_log_line(caplog: pytest.LogCaptureFixture) -> None:
    items = clustered(num_items=100)
    with caplog.at_level(logging.WARNING, logger="pipeline.evaluation.faiss_index"):
        index = faiss_index.build_index(items, IndexConfig("ivf", IvfConfig(nlist=1024, nprobe=16, seed=0), IVF.hnsw))
    assert index.factory == "IVF2,Flat" and index.params == {
        "nlist": 2,
        "nprobe": 2,
        "seed": 0,
        "nlist_requested": 1024,
    }
    assert "ivf.nlist = 1024 is too many lists for 100 items" in caplog.text and "using 2" in caplog.text
    assert "ivf.nprobe = 16 exceeds the 2 lists" in caplog.text
    tiny = faiss_index.build_index(clustered(num_items=5), IVF)  # fewer items than one list wants: one list
    assert tiny.factory == "IVF1,Flat" and tiny.search(queries_near(items, 2)[:, :16], 3)[1].min() >= 0


def test_an_approximate_index_that_finds_too_few_unseen_items_falls_back_to_exact() -> None:
    items = clustered(num_items=400, seed=5)
    config = IndexConfig("ivf", IvfConfig(nlist=8, nprobe=1, seed=0), IVF.hnsw)
    index = faiss_index.build_index(items, config)
    query = queries_near(items, 1, seed=9)
    _, ids = index.search(query, 400)
    probed = ids[0][ids[0] >= 0] + 1  # every item of the one list scanned
    assert 10 < len(probed) < 400
    history = [probed[:-2]]  # all but two of the scanned items were seen: the index finds 2 unseen, k = 5
    stats = retrieval.SearchStats()
    got, scores = retrieval.top_k(query, items, history, 5, index=index, stats=stats)
    want, want_scores = retrieval.dense_top_k(query, items, history, 5)
    assert stats.exact_fallback == 1
    np.testing.assert_array_equal(got, want)
    np.testing.assert_allclose(scores, want_scores, rtol=1e-5)


def test_recall_at_k_against_hand_computed_values() -> None:
    exact = np.array([[1, 2, 3], [4, 5, -1], [-1, -1, -1]])
    approx = np.array([[3, 9, 1], [5, 7, 8], [-1, -1, -1]])  # user 2 has nothing to rank: left out
    assert faiss_index.recall_at_k(approx, exact, [1, 3]) == pytest.approx(
        {"recall@1": 0.0, "recall@3": (2 / 3 + 1 / 2) / 2}
    )


def split_of(num_users: int, num_items: int) -> UserSplit:
    rng = np.random.default_rng(0)
    train = [rng.choice(np.arange(1, num_items + 1), 20, replace=False) for _ in range(num_users)]
    return UserSplit(
        user_idx=np.arange(num_users),
        train=train,
        valid_target=rng.integers(1, num_items + 1, num_users),
        test_target=rng.integers(1, num_items + 1, num_users),
    )


def test_evaluation_records_the_index_and_recall_vs_flat_and_the_report_shows_them() -> None:
    items = clustered(num_items=600, seed=2)
    split = split_of(50, 600)
    queries = queries_near(items, 50, seed=4)
    flat = evaluate_vectors("m", split, items, lambda stage: queries, [5, 10])
    assert flat.index == {"kind": "flat", "factory": "Flat", "params": {}, "device": "cpu"}
    exhaustive = IndexConfig("ivf", IvfConfig(nlist=8, nprobe=8, seed=0), IVF.hnsw)
    ivf = evaluate_vectors("m", split, items, lambda stage: queries, [5, 10], index=exhaustive)
    assert ivf.index["factory"] == "IVF8,Flat" and ivf.index["params"]["nprobe"] == 8
    assert ivf.index["recall_vs_flat"] == {s: {"recall@5": 1.0, "recall@10": 1.0} for s in ("valid", "test")}
    assert ivf.metrics() == flat.metrics()  # scanning every list is exact
    approx = evaluate_vectors("m", split, items, lambda stage: queries, [5, 10], index=HNSW)
    assert set(approx.index["recall_vs_flat"]["test"]) == {"recall@5", "recall@10"}
    assert approx.index["exact_fallback_users"] == {"valid": 0, "test": 0}
    text = index_section({"m": approx.index, "popularity": flat.index})
    assert "- FAISS `HNSW16,Flat` (hnsw; m 16, ef_construction 64, ef_search 64) on cpu: `m`" in text
    assert "- FAISS `Flat` (flat) on cpu: `popularity`" in text
    recall10 = approx.index["recall_vs_flat"]["test"]["recall@10"]
    assert "| run | stage | recall@5 | recall@10 | fallback users |" in text and f"| {recall10:.4f} | 0 |" in text


class FakeGpuIndex:
    """Stands in for a faiss GPU index: answers from the CPU index it was copied from, counting calls."""

    def __init__(self, cpu: faiss.Index) -> None:
        self.cpu, self.searches, self.nprobe = cpu, 0, None

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        assert k <= faiss_index.GPU_MAX_K
        self.searches += 1
        return self.cpu.search(queries, k)


def test_gpu_branch_when_faiss_has_the_gpu_api(monkeypatch: pytest.MonkeyPatch) -> None:
    copies: list[tuple[int, FakeGpuIndex]] = []

    class FakeParameterSpace:
        def set_index_parameter(self, index: FakeGpuIndex, name: str, value: int) -> None:
            assert name == "nprobe"
            index.nprobe = value

    def to_gpu(resources: object, device: int, index: faiss.Index) -> FakeGpuIndex:
        copies.append((device, FakeGpuIndex(index)))
        return copies[-1][1]

    monkeypatch.setattr(faiss, "StandardGpuResources", object, raising=False)
    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 2)
    monkeypatch.setattr(faiss, "index_cpu_to_gpu", to_gpu, raising=False)
    monkeypatch.setattr(faiss, "GpuParameterSpace", FakeParameterSpace, raising=False)
    items = clustered(num_items=3000)
    queries = queries_near(items, 20)
    for config in (faiss_index.FLAT, IVF):
        index = faiss_index.build_index(items, config, "cuda:1")
        device, gpu = copies[-1]
        assert index.device == "cuda" and device == 1 and gpu.cpu is index.cpu
        assert index.describe()["device"] == "cuda"
        histories = [np.arange(1, 11)] * 20
        got, _ = retrieval.top_k(queries, items, histories, 10, index=index)
        assert gpu.searches == 1  # k' = 20 <= GPU_MAX_K: searched on the GPU
        long = [np.arange(1, 2501)] * 20  # k' = 2510 > GPU_MAX_K: the CPU copy answers
        retrieval.top_k(queries, items, long, 10, index=index)
        assert gpu.searches == 1
    assert copies[-1][1].nprobe == 4
    hnsw = faiss_index.build_index(items, HNSW, "cuda")
    assert hnsw.device == "cpu" and len(copies) == 2  # FAISS has no GPU HNSW


def test_without_gpu_faiss_a_cuda_device_falls_back_to_cpu_with_a_log_line(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delattr(faiss, "StandardGpuResources", raising=False)  # faiss-cpu
    items = clustered(num_items=300)
    with caplog.at_level(logging.INFO, logger="pipeline.evaluation.faiss_index"):
        index = faiss_index.build_index(items, faiss_index.FLAT, "cuda")
        hnsw = faiss_index.build_index(items, HNSW, "cuda")
    assert index.gpu is None and index.device == "cpu" and hnsw.device == "cpu"
    assert "faiss index Flat: the installed faiss has no GPU support (faiss-cpu)" in caplog.text
    assert "FAISS has no GPU version of hnsw; searching on the CPU" in caplog.text
    queries = queries_near(items, 5)
    got, _ = retrieval.top_k(queries, items, [np.zeros(0)] * 5, 4, index=index)
    np.testing.assert_array_equal(got, retrieval.dense_top_k(queries, items, [np.zeros(0, np.int64)] * 5, 4)[0])


@pytest.mark.parametrize("config", [IVF, HNSW], ids=["ivf", "hnsw"])
def test_recommend_exports_approximate_indexes_that_round_trip(config: IndexConfig, tmp_path: Path) -> None:
    import polars as pl

    items = clustered(num_items=800)
    ids = [f"i{i}" for i in range(800)]
    rows = pl.DataFrame({"row": range(800), "item_idx": range(1, 801), "item_id": ids, "title": ids})
    checkpoint = {"model_name": "m", "checksum": "c" * 64, "max_seq_len": 5, "data_fingerprint": None}
    manifest = recommend.write_index(tmp_path, items, rows, checkpoint, config)
    built = faiss_index.build_index(items, config)
    assert manifest["index_kind"] == config.kind and manifest["faiss_factory"] == built.factory
    assert manifest["index_params"] == built.params
    loaded = recommend.load_index(tmp_path)
    assert loaded.index.kind == config.kind and not loaded.index.exact
    np.testing.assert_allclose(loaded.vectors, items)  # vectors read back from the IVF/HNSW index itself
    queries = queries_near(items, 30)
    histories = [np.arange(1, 6)] * 30
    np.testing.assert_array_equal(
        retrieval.top_k(queries, loaded.vectors, histories, 10, index=loaded.index)[0],
        retrieval.top_k(queries, items, histories, 10, index=built)[0],
    )


def test_index_params_are_strict(tmp_path: Path) -> None:
    base = yaml.safe_load(Path("params.yaml").read_text())["evaluate"]
    assert load_section(EvaluateConfig, "evaluate", Path("params.yaml")).index_config.kind == "flat"  # default: exact
    for change, message in (
        ({"index": "annoy"}, "`evaluate.index` = 'annoy' must be one of 'flat', 'ivf', 'hnsw'"),
        ({"ivf": base["ivf"] | {"nlists": 3}}, "unknown key `evaluate.ivf.nlists`"),
        ({"ivf": base["ivf"] | {"nprobe": 0}}, "`evaluate.ivf.nprobe` = 0 must be >= 1"),
        ({"hnsw": {"m": 8, "ef_search": 8}}, "missing key `evaluate.hnsw.ef_construction`"),
    ):
        path = tmp_path / "params.yaml"
        path.write_text(yaml.safe_dump({"evaluate": base | change}))
        with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
            load_section(EvaluateConfig, "evaluate", path)


def test_evaluate_stage_with_an_ivf_index_reports_recall_vs_flat(tmp_path: Path) -> None:
    from stages.evaluate import app

    params, prepared, models = write_project(tmp_path)
    params.write_text(params.read_text().replace("index: flat", "index: ivf"))
    out = tmp_path / "reports"
    args = [*("--params", str(params), "--prepared", str(prepared), "--features", str(tmp_path / "features"))]
    args += [*("--model", str(models / "model.pt"), "--baseline", str(models / "baseline" / "model.pt"))]
    result = CliRunner().invoke(app, [*args, "--out", str(out), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    for run in ("sasrec", "baseline"):
        info = metrics["index"][run]
        assert info["kind"] == "ivf" and info["factory"] == "IVF1,Flat" and info["params"]["nlist_requested"] == 4
        assert info["recall_vs_flat"]["test"] == {"recall@2": 1.0, "recall@5": 1.0}  # one list: exhaustive
    assert metrics["index"]["popularity"]["kind"] == "flat"
    assert "Approximate search" in (out / "report.md").read_text()


def test_recommend_stage_exports_the_index_kind_of_its_params(tmp_path: Path) -> None:
    from stages.recommend import app

    params, prepared, models = write_project(tmp_path)
    raw = yaml.safe_load(params.read_text()) | {"recommend": RECOMMEND | {"index": "hnsw"}}
    params.write_text(yaml.safe_dump(raw))
    paths = {"params": params, "prepared": prepared, "models": models, "features": tmp_path / "features"}
    paths["out"] = tmp_path / "recommendations"
    result = CliRunner().invoke(app, recommend_args(paths))
    assert result.exit_code == 0, result.output
    manifest = json.loads((paths["out"] / "index" / "manifest.json").read_text())
    assert manifest["index_kind"] == "hnsw" and manifest["faiss_factory"] == "HNSW8,Flat"
    assert manifest["faiss_index"] == "IndexHNSWFlat" and manifest["index_params"]["ef_search"] == 16
    code = CliRunner().invoke(app, [*query_args(paths), "--user", "user0", "--json"])
    assert code.exit_code == 0 and len(json.loads(code.stdout)) == RECOMMEND["k"]
