"""Stage `recommend` and its on-demand CLI (issue 13): the exported index round-trips, every user's top-K excludes
their history, the CLI ranks a history exactly as `evaluate` does, and unknown ids are listed or skipped."""

from __future__ import annotations

import json
from pathlib import Path

import faiss
import numpy as np
import polars as pl
import pytest
import yaml
from typer.testing import CliRunner

from pipeline.config import ConfigError, RecommendConfig, load_section
from pipeline.data.dataset import left_pad
from pipeline.data.splits import load_split
from pipeline.evaluation import retrieval
from pipeline.serving import recommend
from pipeline.serving.inference import item_table, load_trained, user_queries
from stages.recommend import app
from tests.helpers.projects import RECOMMEND, query_args, recommend_args, write_project

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def project(tmp_path: Path) -> dict[str, Path]:
    """write_project's tiny data + untrained SASRec checkpoints, a `recommend:` section, and the stage run once."""
    params, prepared, models = write_project(tmp_path)
    raw = yaml.safe_load(params.read_text()) | {"recommend": dict(RECOMMEND)}
    params.write_text(yaml.safe_dump(raw))
    paths = {"params": params, "prepared": prepared, "models": models, "out": tmp_path / "recommendations"}
    paths["features"] = tmp_path / "features"
    result = CliRunner().invoke(app, recommend_args(paths))
    assert result.exit_code == 0, result.output
    return paths


def query(p: dict[str, Path], *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, [*query_args(p), *args])
    return result.exit_code, result.stdout, result.stderr


def raw_ids(prepared: Path) -> np.ndarray:
    return np.array(["", *pl.read_parquet(prepared / "items.parquet")["item_id"].to_list()], dtype=object)


def test_topk_covers_every_user_excludes_history_and_matches_brute_force(project: dict[str, Path]) -> None:
    topk = pl.read_parquet(project["out"] / "topk.parquet")
    assert topk.columns == ["user_idx", "user_id", "item_idx", "item_id", "title", "score"]
    sequences = pl.read_parquet(project["prepared"] / "sequences.parquet")
    assert topk["user_id"].to_list() == sequences["user_id"].to_list()
    model, _, _ = load_trained(project["models"] / "model.pt", project["features"], project["prepared"])
    histories = [np.asarray(s, dtype=np.int64) for s in sequences["items"].to_list()]
    queries = user_queries(model, left_pad(histories, 6), 4, "cpu")
    expected, expected_scores = retrieval.dense_top_k(queries, item_table(model), histories, RECOMMEND["k"])
    ids = raw_ids(project["prepared"])
    for row, history, want, want_scores in zip(
        topk.iter_rows(named=True), histories, expected, expected_scores, strict=True
    ):
        assert len(row["item_idx"]) == RECOMMEND["k"] and not set(row["item_idx"]) & set(history.tolist())
        assert row["item_idx"] == want.tolist() and row["item_id"] == ids[want].tolist()
        np.testing.assert_allclose(row["score"], want_scores, rtol=1e-5)
        assert row["score"] == sorted(row["score"], reverse=True)
    assert not [p for p in project["out"].parent.iterdir() if ".staged." in p.name or ".old." in p.name]
    page = (project["out"].parent / "reports" / "gallery.html").read_text()  # the stage also writes the gallery
    assert page.count('<tr class="user-row"') == RECOMMEND["gallery_users"] and "baseline top-10" in page


def test_index_artifact_round_trips(project: dict[str, Path]) -> None:
    index = recommend.load_index(project["out"] / "index")
    model, checkpoint, _ = load_trained(project["models"] / "model.pt", project["features"], project["prepared"])
    np.testing.assert_array_equal(index.vectors, item_table(model))  # (N+1, D), row 0 zeros
    assert index.items.columns == ["row", "item_idx", "item_id", "title", "text", "image_path"]
    assert (
        index.items["row"].to_list() == list(range(12))
        and index.ids[1:].tolist() == raw_ids(project["prepared"])[1:].tolist()
    )
    manifest = json.loads((project["out"] / "index" / "manifest.json").read_text())
    assert manifest["model_name"] == "sasrec" and manifest["dim"] == 8 and manifest["num_items"] == 12
    assert (
        manifest["faiss_index"] == "IndexFlat"
        and manifest["index_kind"] == "flat"
        and manifest["metric"] == "inner_product"
    )
    assert manifest["faiss_factory"] == "Flat" and index.index.cpu.metric_type == faiss.METRIC_INNER_PRODUCT
    assert manifest["checkpoint_sha256"] == checkpoint["checksum"]
    assert manifest["params_hash"] == recommend.params_hash(checkpoint) and len(manifest["params_hash"]) == 64
    assert manifest["data_fingerprint"] == checkpoint["data_fingerprint"]
    queries = np.random.default_rng(0).normal(size=(5, 8)).astype(np.float32)
    fresh = retrieval.top_k(queries, item_table(model), [np.zeros(0)] * 5, 6)
    loaded = retrieval.top_k(queries, index.vectors, [np.zeros(0)] * 5, 6, index=index.index)
    np.testing.assert_array_equal(fresh[0], loaded[0])


def test_dvc_yaml_declares_the_index_artifact_and_the_checkpoint_deps() -> None:
    dvc = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())
    artifact = dvc["artifacts"]["recommendation-index"]
    assert artifact["path"] == "recommendations/index" and artifact["path"] in dvc["stages"]["recommend"]["outs"]
    for stage in ("train", "baseline", "evaluate", "recommend"):  # the file itself or a folder holding it
        deps = dvc["stages"][stage]["deps"]
        assert {"pipeline/training/checkpoint.py", "pipeline/training"} & set(deps), stage
    assert dvc["stages"]["recommend"]["params"] == ["recommend"]
    assert load_section(RecommendConfig, "recommend", REPO_ROOT / "params.yaml").k == 10


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"top": 3}, "unknown key `recommend.top`"),
        ({"k": 0}, "`recommend.k` = 0 must be >= 1"),
        ({"index": "annoy"}, "'flat', 'ivf', 'hnsw'"),
        ({"ivf": {"nlist": 0, "nprobe": 1, "seed": 0}}, "`recommend.ivf.nlist` = 0 must be >= 1"),
    ],
)
def test_recommend_params_are_strict(tmp_path: Path, change: dict, message: str) -> None:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"recommend": RECOMMEND | change}))
    with pytest.raises(ConfigError, match=message):
        load_section(RecommendConfig, "recommend", path)


def test_failed_export_keeps_the_previous_outputs(project: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    before = (project["out"] / "topk.parquet").read_bytes()
    monkeypatch.setattr(recommend, "all_users_topk", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("boom")))
    result = CliRunner().invoke(app, recommend_args(project))
    assert result.exit_code == 1 and "boom" in result.output
    assert (project["out"] / "topk.parquet").read_bytes() == before and (project["out"] / "index").is_dir()
    assert not [p for p in project["out"].parent.iterdir() if ".staged." in p.name]


def test_cli_history_ranks_like_evaluate(project: dict[str, Path], tmp_path: Path) -> None:
    """The CLI's top-K for a user's test history equals `evaluate`'s test ranking of that user."""
    from stages.evaluate import app as evaluate_app

    reports = tmp_path / "reports"
    args = ["--params", str(project["params"]), "--prepared", str(project["prepared"])]
    args += ["--features", str(project["features"]), "--model", str(project["models"] / "model.pt")]
    args += ["--baseline", str(project["models"] / "baseline" / "model.pt"), "--out", str(reports), "--device", "cpu"]
    assert CliRunner().invoke(evaluate_app, args).exit_code == 0
    evaluated = pl.read_parquet(reports / "topk.parquet").filter(pl.col("stage") == "test")
    split, ids = load_split(project["prepared"]), raw_ids(project["prepared"])
    for user in range(len(split)):
        history = ",".join(ids[split.history("test")[user]])
        code, out, _ = query(project, "--history", history, "--k", "5", "--json")
        assert code == 0, out
        assert [r["item_id"] for r in json.loads(out)] == ids[evaluated["items"][user].to_list()].tolist()


def test_cli_user_equals_topk_parquet_and_prints_a_table(project: dict[str, Path]) -> None:
    topk = pl.read_parquet(project["out"] / "topk.parquet").row(2, named=True)
    code, out, _ = query(project, "--user", topk["user_id"], "--json")
    rows = json.loads(out)
    assert code == 0 and [set(r) for r in rows] == [{"item_id", "title", "score"}] * RECOMMEND["k"]  # k from params
    assert [r["item_id"] for r in rows] == topk["item_id"]
    code, out, _ = query(project, "--user", topk["user_id"], "--k", "2")
    lines = out.strip().splitlines()
    assert code == 0 and len(lines) == 3 and lines[0].split() == ["rank", "item_id", "title", "score"]
    assert lines[1].split()[:2] == ["1", topk["item_id"][0]] and lines[2].split()[:2] == ["2", topk["item_id"][1]]
    assert lines[1].split()[-1] == f"{rows[0]['score']:.4f}"
    code, out, err = query(project, "--user", "nobody")
    assert code == 1 and "user 'nobody' is not in sequences.parquet" in err


def test_cli_excludes_the_history_even_when_asked_for_everything(project: dict[str, Path]) -> None:
    history = ["m3", "m7", "m1"]
    code, out, _ = query(project, "--history", ",".join(history), "--k", "20", "--json")
    returned = [r["item_id"] for r in json.loads(out)]
    assert code == 0 and len(returned) == 12 - 3 and not set(returned) & set(history)  # fewer than k remain
    scores = [r["score"] for r in json.loads(out)]
    assert scores == sorted(scores, reverse=True)


def test_cli_unknown_ids_are_listed_or_skipped_with_a_warning(project: dict[str, Path]) -> None:
    code, out, err = query(project, "--history", "m3,nope,m7,zzz", "--json")
    assert code == 1 and out == ""
    assert err.strip().splitlines() == [
        "error: 2 item id(s) not in the index of 12 items: 'nope', 'zzz'; check the ids (raw ids as in "
        "items.parquet's item_id) or pass --skip-unknown to drop them with a warning"
    ]
    code, out, _ = query(project, "--history", "m3,nope,m7,zzz", "--json", "--skip-unknown")
    _, same, _ = query(project, "--history", "m3,m7", "--json")
    assert code == 0 and json.loads(out) == json.loads(same)
    code, _, err = query(project, "--history", "nope", "--skip-unknown")
    assert code == 1 and "the history holds no known item id (of 1 given)" in err
    code, _, err = query(project, "--history", "")
    assert code == 1 and "no known item id (of 0 given)" in err


@pytest.mark.parametrize("mode", ["stage", "query"])
def test_a_damaged_checkpoint_is_one_line_in_both_modes(project: dict[str, Path], mode: str) -> None:
    model_pt = project["models"] / "model.pt"
    model_pt.write_bytes(model_pt.read_bytes()[:100])  # truncated
    argv = [*query_args(project), "--history", "m3"] if mode == "query" else recommend_args(project)  # stage: export
    result = CliRunner().invoke(app, argv)
    code, out, err = result.exit_code, result.stdout, result.stderr
    lines = err.strip().splitlines()
    assert code == 1 and out == "" and len(lines) == 1, err
    assert str(model_pt) in lines[0] and "dvc repro train" in lines[0] and "Traceback" not in err


def test_index_from_another_checkpoint_is_refused(project: dict[str, Path]) -> None:
    other = project["models"] / "baseline" / "model.pt"
    code, _, err = query({**project, "models": other.parent}, "--history", "m3")
    assert code == 1 and "the index was built from another checkpoint" in err and "dvc repro recommend" in err


def test_parse_history_keeps_ids_that_contain_the_separator() -> None:
    known = {"Godfather, The (1972)", "Fargo (1996)", "Babe (1995)", "A, B, C"}
    text = "Godfather, The (1972),Fargo (1996), A, B, C ,Nope, Babe (1995)"
    assert recommend.parse_history(text, known) == [
        "Godfather, The (1972)",
        "Fargo (1996)",
        "A, B, C",
        "Nope",
        "Babe (1995)",
    ]
    assert recommend.parse_history("Fargo (1996)|Babe (1995)", known, sep="|") == ["Fargo (1996)", "Babe (1995)"]
