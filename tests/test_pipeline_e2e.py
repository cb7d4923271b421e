"""End to end: `dvc repro` of every stage on a tiny GroupLens-format data set in a temporary git repository."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml

from tests.fixtures.make_tiny_table import TABLE_PARAMS, write_tiny_table
from tests.helpers.dvc_project import REPO, make_project, run

pytestmark = pytest.mark.slow


def assert_metrics_match_topk(project: Path, run: str) -> None:
    """metrics.json's numbers for ``run`` recomputed independently from topk.parquet (the model's own lists)."""
    metrics = json.loads((project / "reports/metrics.json").read_text())
    topk = pl.read_parquet(project / "reports/topk.parquet")
    for stage in ("valid", "test"):
        rows = topk.filter(pl.col("stage") == stage)
        hits = [t in items[:10] for items, t in zip(rows["items"].to_list(), rows["target"].to_list(), strict=True)]
        assert metrics[run][stage]["HR@10"] == pytest.approx(sum(hits) / len(hits))


def assert_recommendations(project: Path, items: pl.DataFrame) -> None:
    """Issue 13: recommendations/ (index artifact + every user's top-K), the gallery, and the on-demand CLI."""
    manifest = json.loads((project / "recommendations/index/manifest.json").read_text())
    assert manifest["model_name"] == "odmt" and manifest["num_items"] == len(items)
    topk = pl.read_parquet(project / "recommendations/topk.parquet")
    assert topk["item_id"].list.len().unique().to_list() == [10]
    assert (project / "reports/gallery.html").read_text().count('<tr class="user-row"') == min(20, topk.height)
    history = items["item_id"].head(5).to_list()
    cli = [sys.executable, "-m", "stages.recommend", "query", "--history", ",".join(history), "--k", "10", "--json"]
    rows = json.loads(next(line for line in run(cli, project).splitlines() if line.startswith("[")))
    assert len(rows) == 10 and not {r["item_id"] for r in rows} & set(history)

    # The index is a DVC artifact: a registered version (a GTO tag) is fetched by `dvc artifacts get`, and loads.
    run(["git", "add", "-A"], project)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "repro"], project)
    tag = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "tag", "-a", "recommendation-index@v0.1.0"]
    run([*tag, "-m", "Registering artifact recommendation-index version v0.1.0"], project)
    fetched = project.parent / "fetched-index"
    run(["dvc", "artifacts", "get", str(project), "recommendation-index", "-o", str(fetched)], project.parent)
    from pipeline.serving.recommend import load_index

    np.testing.assert_array_equal(load_index(fetched).vectors, load_index(project / "recommendations/index").vectors)


def test_dvc_repro_runs_every_stage_and_caches(tmp_path: Path) -> None:
    """The default pipeline: ODMT trained against a cached SASRec baseline, with the paired comparison."""
    project = make_project(tmp_path)
    out = run(["dvc", "repro"], project)
    for stage in ("prepare", "embed", "baseline", "train", "evaluate", "recommend"):
        assert f"Running stage '{stage}'" in out

    items = pl.read_parquet(project / "data/prepared/items.parquet")
    assert items["item_idx"].to_list() == list(range(1, len(items) + 1))
    manifest = json.loads((project / "data/features/manifest.json").read_text())
    assert set(manifest["modalities"]) == {"text", "image"}
    metrics = json.loads((project / "reports/metrics.json").read_text())
    assert {"odmt", "baseline", "popularity", "paired_vs_baseline"} <= set(metrics)
    assert_metrics_match_topk(project, "odmt")
    baseline_summary = json.loads((project / "models/baseline/train_summary.json").read_text())
    assert baseline_summary["model_name"] == "sasrec"
    assert metrics["baseline"]["valid"]["NDCG@10"] == pytest.approx(baseline_summary["best_valid"]["NDCG@10"])
    paired = metrics["paired_vs_baseline"]["test"]["NDCG@10"]
    assert paired["diff"] == pytest.approx(metrics["odmt"]["test"]["NDCG@10"] - metrics["baseline"]["test"]["NDCG@10"])
    assert paired["ci_low"] <= paired["diff"] <= paired["ci_high"] and 0 < paired["p_value"] <= 1
    report = (project / "reports/report.md").read_text()
    assert "## odmt vs the baseline" in report and "95% CI" in report
    assert (project / "reports/topk.parquet").exists()
    assert list((project / "reports/plots").glob("*.png"))

    assert_recommendations(project, items)

    # Nothing changed: nothing reruns.
    again = run(["dvc", "repro"], project)
    assert "Running stage" not in again

    # An embed param reruns embed and what follows, never prepare.
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["embed"]["text"]["batch_size"] = 8
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    status = run(["dvc", "status"], project)
    assert "embed:" in status and "prepare:" not in status

    # A train param, set the way users do it, reruns train + evaluate only: never the cached baseline.
    run(["git", "checkout", "--", "params.yaml"], project)
    out = run(["dvc", "exp", "run", "-S", "train.lr=0.002"], project)
    assert "Running stage 'train'" in out and "Running stage 'evaluate'" in out
    for stage in ("prepare", "embed", "baseline"):
        assert f"Running stage '{stage}'" not in out


def test_dvc_repro_on_amazon2023_fixture_with_real_images(tmp_path: Path) -> None:
    """Issue 5: an Amazon-Reviews-2023-format category (reviews + meta + image files) through every stage."""
    fixture = REPO / "tests/fixtures/real_formats/amazon2023"
    project = make_project(
        tmp_path, data={"source": "amazon2023", "path": str(fixture), "images_dir": str(fixture / "images")}
    )
    out = run(["dvc", "repro"], project)
    for stage in ("prepare", "embed", "train", "evaluate"):
        assert f"Running stage '{stage}'" in out

    stats = json.loads((project / "data/prepared/stats.json").read_text())
    assert stats["images"]["source"] == "images_dir"
    assert stats["images"]["present"] > 0
    images = stats["images"]
    assert images["present"] + images["missing"] + images["corrupt"] + images["rejected_outside_root"] == stats["items"]
    assert sum(stats["dropped"].values()) > 0  # the fixture holds malformed and duplicate rows, all counted
    items = pl.read_parquet(project / "data/prepared/items.parquet")
    assert items["item_id"].str.starts_with("B").all()  # parent_asin is the item id
    manifest = json.loads((project / "data/features/manifest.json").read_text())
    image = manifest["modalities"]["image"] if "modalities" in manifest else manifest["image"]
    assert image["present"] == stats["images"]["present"]
    assert_metrics_match_topk(project, "odmt")


def test_dvc_repro_on_your_own_table_with_images_by_relative_path(tmp_path: Path) -> None:
    """Issue 12: Parquet event shards (uid, sku, ISO ts) + an items CSV whose image column holds relative paths."""
    raw = write_tiny_table(tmp_path / "mine")
    data = {"source": "table", "path": str(raw), "images_dir": str(raw / "images"), "table": TABLE_PARAMS}
    project = make_project(tmp_path, data=data)
    out = run(["dvc", "repro"], project)
    for stage in ("prepare", "embed", "baseline", "train", "evaluate", "recommend"):
        assert f"Running stage '{stage}'" in out

    stats = json.loads((project / "data/prepared/stats.json").read_text())
    assert stats["source"] == "table" and stats["users"] == 30
    assert stats["images"] | {"present": 40} == {"source": "images_dir", "present": 40, "missing": 0, "corrupt": 0,
                                                 "rejected_outside_root": 0, "renamed_file_names": 0}  # fmt: skip
    items = pl.read_parquet(project / "data/prepared/items.parquet")
    assert items["item_id"].str.starts_with("m").all() and items["text"].str.contains(". Genres: ").all()
    assert items["image_path"].str.starts_with(str(raw / "images" / "posters")).all()
    manifest = json.loads((project / "data/features/manifest.json").read_text())
    image = manifest["modalities"]["image"] if "modalities" in manifest else manifest["image"]
    assert image["present"] == 40
    assert_metrics_match_topk(project, "odmt")
    topk = pl.read_parquet(project / "recommendations/topk.parquet")
    assert topk["item_id"].list.len().unique().to_list() == [10]
    assert "Running stage" not in run(["dvc", "repro"], project)  # cached
