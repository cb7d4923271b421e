"""Evaluation (model + popularity), the report files and the evaluate stage on tiny hand-built data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from PIL import Image
from torch import nn

from pipeline.data.splits import UserSplit
from pipeline.evaluation.ranking import evaluate_model, evaluate_popularity, training_counts
from pipeline.reporting import report
from tests.helpers.projects import write_dvclive, write_project, write_text_features

NUM_ITEMS = 8


class NextIdModel(nn.Module):
    """Scores item ``last + 1`` highest (one-hot vectors): its next-item prediction is hand-checkable."""

    def __init__(self, num_items: int = NUM_ITEMS) -> None:
        super().__init__()
        self.num_items = num_items
        self.table = nn.Parameter(torch.eye(num_items + 1), requires_grad=False)  # (N+1, N+1)
        self.table.data[0] = 0.0

    def user_vectors(self, input_ids: torch.Tensor) -> torch.Tensor:
        nxt = input_ids[:, -1] % self.num_items + 1  # (B,): left-padded, so the last column is the newest item
        return 10.0 * self.table[nxt]  # (B, N+1)

    def item_vectors(self) -> torch.Tensor:
        return self.table  # (N+1, N+1)


def hand_split() -> UserSplit:
    """Three users; the valid target follows the last training item and the test target follows that."""
    return UserSplit(
        user_idx=np.array([0, 1, 2]),
        train=[np.array([1, 2, 3]), np.array([5, 6]), np.array([2, 8, 1, 4])],
        valid_target=np.array([4, 7, 5]),
        test_target=np.array([5, 8, 3]),  # user 2 misses: the model predicts 6
    )


def test_model_evaluation_masks_history_and_ranks_next_item() -> None:
    result = evaluate_model(NextIdModel(), hand_split(), ks=[1, 3], batch_size=2, max_seq_len=3, name="nextid")
    assert result.metrics()["valid"]["HR@1"] == 1.0
    assert result.metrics()["test"]["HR@1"] == pytest.approx(2 / 3)
    assert result.metrics()["test"]["HR@3"] == 1.0  # user 2's target 3 is second
    assert result.metrics()["test"]["MRR@3"] == pytest.approx((1 + 1 + 1 / 2) / 3)
    test = result.stages["test"]
    assert test.items.shape == (3, 3) and test.scores.shape == (3, 3)
    # User 2 at test: history {2, 8, 1, 4, 5}, predicts 6, then ties at score 0 in item order: 3, 7.
    assert test.items[2].tolist() == [6, 3, 7]
    assert test.scores[2].tolist() == [10.0, 0.0, 0.0]
    for row, hist in enumerate(hand_split().history("test")):
        assert not np.isin(test.items[row], hist).any()


def test_popularity_baseline_uses_training_counts() -> None:
    split = hand_split()
    counts = training_counts(split, NUM_ITEMS)
    assert counts.tolist() == [0, 2, 2, 1, 1, 1, 1, 0, 1]
    result = evaluate_popularity(split, NUM_ITEMS, ks=[1, 2])
    valid = result.stages["valid"]
    # user 0 has seen 1,2,3 -> next most popular: 4 (count 1, lowest index); user 1 -> 1, 2; user 2 -> 3, 5
    assert valid.items.tolist() == [[4, 5], [1, 2], [3, 5]]
    assert result.metrics()["valid"] == pytest.approx(
        {
            "HR@1": 1 / 3,
            "NDCG@1": 1 / 3,
            "MRR@1": 1 / 3,
            "HR@2": 2 / 3,
            "NDCG@2": (1 + 1 / np.log2(3)) / 3,
            "MRR@2": (1 + 0.5) / 3,
        }
    )
    test = result.stages["test"]
    assert test.items.tolist() == [[5, 6], [1, 2], [3, 6]]  # valid targets are masked too
    assert result.metrics()["test"]["HR@2"] == pytest.approx(2 / 3)


def assert_png(path: Path) -> None:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.size[0] > 100 and image.size[1] > 100


def test_write_report_files(tmp_path: Path) -> None:
    split = hand_split()
    model = evaluate_model(NextIdModel(), split, ks=[1, 3], batch_size=4, max_seq_len=3, name="nextid")
    popularity = evaluate_popularity(split, NUM_ITEMS, ks=[1, 3])
    stats = {"users": 3, "items": 8, "images": {"source": "synthetic_title_cards"}, "notes": ["a note"]}
    (tmp_path / "stats.json").write_text(json.dumps(stats))
    (tmp_path / "train_summary.json").write_text(json.dumps({"best_epoch": 2, "best_valid": {"NDCG@10": 0.2}}))
    checkpoint = {
        "model_name": "nextid",
        "model_config": {"hidden_dim": 9},
        "train_config": {"lr": 0.001},
        "max_seq_len": 3,
        "state_dict": {"w": torch.zeros(1)},
    }
    out = tmp_path / "reports"
    paths = report.write_report(
        out,
        model,
        [popularity],
        user_ids=["u0", "u1", "u2"],
        num_items=NUM_ITEMS,
        checkpoint=checkpoint,
        stats_path=tmp_path / "stats.json",
        train_summary_path=tmp_path / "train_summary.json",
        dvclive_dir=write_dvclive(tmp_path),
    )

    metrics = json.loads(paths.metrics.read_text())
    assert list(metrics) == ["nextid", "popularity", "index"]
    flat = {"kind": "flat", "factory": "Flat", "params": {}, "device": "cpu"}
    assert metrics["index"] == {"nextid": flat, "popularity": flat}
    assert set(metrics["nextid"]) == {"valid", "test"}
    assert set(metrics["popularity"]["test"]) == {f"{m}@{k}" for m in ("HR", "NDCG", "MRR") for k in (1, 3)}
    assert metrics["nextid"]["valid"]["HR@1"] == 1.0

    text = paths.report.read_text()
    assert "| run | valid HR@1 | valid NDCG@1 | valid MRR@1 | valid HR@3 |" in text
    assert "| nextid | 1.0000 |" in text and "| popularity |" in text
    assert "Images are synthetic" in text and "a note" in text
    assert "Model config:\n\n| key | value |\n|---|---|\n| hidden_dim | 9 |" in text
    assert "Train config:\n\n| key | value |\n|---|---|\n| lr | 0.001 |" in text
    assert "| best_epoch | 2 |" in text and "state_dict" not in text
    assert "- FAISS `Flat` (flat) on cpu: `nextid`, `popularity`" in text and "Exact inner-product search" in text

    topk = pl.read_parquet(paths.topk)
    assert topk.columns == ["user_idx", "user_id", "stage", "items", "scores", "target"]
    assert topk.schema["items"] == pl.List(pl.Int32) and topk.schema["scores"] == pl.List(pl.Float32)
    assert topk.height == 6 and topk["stage"].to_list() == ["valid"] * 3 + ["test"] * 3
    assert topk.filter(pl.col("stage") == "test")["items"].to_list()[2] == [6, 3, 7]
    assert topk["user_id"].to_list()[:3] == ["u0", "u1", "u2"]

    assert_png(paths.metrics_vs_k)
    assert_png(paths.training_curves)
    assert sorted(p.name for p in out.rglob("*")) == sorted(
        ["metrics.json", "report.md", "topk.parquet", "plots", "metrics_vs_k.png", "training_curves.png"]
    )  # no temp files left behind


def test_training_curves_read_every_series_and_survive_a_missing_dir(tmp_path: Path) -> None:
    curves = report.read_dvclive_tsvs(write_dvclive(tmp_path))
    assert sorted(curves) == ["train/ce", "train/loss", "valid/NDCG@10"]
    np.testing.assert_allclose(curves["train/loss"][1], [2.0, 1.5, 1.2])
    assert report.plot_training_curves(tmp_path / "a.png", tmp_path / "dvclive") == 3
    assert report.plot_training_curves(tmp_path / "b.png", tmp_path / "nowhere") == 0
    assert_png(tmp_path / "b.png")


def test_tables_are_generic_over_runs(tmp_path: Path) -> None:
    runs = {
        "odmt": {"valid": {"NDCG@10": 0.3, "HR@10": 0.5}, "test": {"HR@10": 0.4}},
        "popularity": {"test": {"HR@10": 0.1}, "cold_test": {"HR@10": 0.05}},
    }
    table = report.markdown_table(runs)
    assert table.splitlines()[0] == (
        "| run | valid HR@10 | valid NDCG@10 | test HR@10 | test NDCG@10 | cold_test HR@10 | cold_test NDCG@10 |"
    )
    assert "| popularity | – | – | 0.1000 | – | 0.0500 | – |" in table
    text = report.text_table(runs)
    assert text.startswith("valid:") and "cold_test:" in text and "0.4000" in text


def test_evaluate_stage_cli(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from stages.evaluate import app

    params, prepared, models = write_project(tmp_path)
    out = tmp_path / "reports"
    args = [
        "--params",
        str(params),
        "--prepared",
        str(prepared),
        "--features",
        str(tmp_path / "features"),
        "--model",
        str(models / "model.pt"),
        "--baseline",
        str(models / "baseline" / "model.pt"),
        "--out",
        str(out),
        "--device",
        "cpu",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "valid:" in result.output and "sasrec" in result.output and "popularity" in result.output
    assert "sasrec - baseline (paired over users" in result.output

    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == {"sasrec", "baseline", "popularity", "paired_vs_baseline", "index", "controls"}
    paired = metrics["paired_vs_baseline"]
    assert set(paired) == {"valid", "test"} and set(paired["test"]) == set(metrics["sasrec"]["test"])
    for stage in ("valid", "test"):
        d = paired[stage]["NDCG@5"]
        assert d["diff"] == pytest.approx(metrics["sasrec"][stage]["NDCG@5"] - metrics["baseline"][stage]["NDCG@5"])
        assert d["ci_low"] <= d["diff"] <= d["ci_high"] and 0 < d["p_value"] <= 1
    assert set(metrics["sasrec"]["test"]) == {f"{m}@{k}" for m in ("HR", "NDCG", "MRR") for k in (2, 5)}
    report_md = (out / "report.md").read_text()
    assert "| sasrec |" in report_md and "| hidden_dim | 8 |" in report_md and "| best_epoch | 1 |" in report_md
    assert "## sasrec vs the baseline" in report_md and "| test | NDCG@5 |" in report_md
    topk = pl.read_parquet(out / "topk.parquet")
    assert topk.height == 18 and topk["items"].list.len().unique().to_list() == [5]
    assert topk["user_id"].to_list()[:2] == ["user0", "user1"]
    for name in ("metrics_vs_k.png", "training_curves.png"):
        assert_png(out / "plots" / name)


def test_evaluate_stage_names_a_missing_checkpoint(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from stages.evaluate import app

    params, prepared, models = write_project(tmp_path)
    base = ["--params", str(params), "--prepared", str(prepared), "--baseline", str(models / "baseline" / "model.pt")]
    result = CliRunner().invoke(app, [*base, "--model", "nope.pt"])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)  # a clean exit, not a traceback
    assert "nope.pt" in result.output and "dvc repro train" in result.output
    result = CliRunner().invoke(app, [*base[:4], "--model", str(models / "model.pt"), "--baseline", "none.pt"])
    assert result.exit_code == 1 and "none.pt" in result.output


def test_evaluate_stage_adds_the_control_rows_and_words_the_claim(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from pipeline.catalog import ItemCatalog
    from pipeline.models.sasrec import SASRec, SASRecConfig
    from pipeline.training.checkpoint import data_fingerprint, save_checkpoint
    from stages.evaluate import app
    from tests.helpers.training import train_cfg

    params, prepared, models = write_project(tmp_path)
    write_text_features(tmp_path / "features", prepared)
    catalog = ItemCatalog(num_items=12, max_seq_len=6, popularity=torch.zeros(13))
    torch.manual_seed(5)
    member = SASRec(SASRecConfig(hidden_dim=8, num_layers=1, num_heads=1, dropout=0.0), catalog)
    cfg = train_cfg(epochs=1, batch_size=4, patience=1, grad_clip=None, num_threads=0, seed=43)
    fingerprint = data_fingerprint(prepared)
    save_checkpoint(models / "s43" / "model.pt", member, 6, cfg, 1, {"NDCG@10": 0.1}, fingerprint=fingerprint)
    out = tmp_path / "reports"
    args = ["--params", str(params), "--prepared", str(prepared), "--features", str(tmp_path / "features")]
    args += ["--model", str(models / "model.pt"), "--baseline", str(models / "baseline" / "model.pt")]
    args += ["--out", str(out), "--device", "cpu", "--ensemble-members", str(models / "s43" / "model.pt")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"id_ensemble", "late_fusion_knn"} <= set(metrics)
    controls = metrics["controls"]
    assert controls["rows"]["id_ensemble"]["members"] == ["baseline", "seed43"]
    assert controls["rows"]["late_fusion_knn"]["members"] == ["baseline", "content_knn_text"]
    assert set(controls["paired"]) == {
        "sasrec - id_ensemble",
        "id_ensemble - baseline",
        "sasrec - late_fusion_knn",
        "late_fusion_knn - baseline",
    }
    report_md = (out / "report.md").read_text()
    assert "## Controls" in report_md and "| id_ensemble |" in report_md and "makes no multimodal claim" in report_md
    same_seed = CliRunner().invoke(app, [*args[:-1], str(models / "baseline" / "model.pt")])
    assert same_seed.exit_code == 1 and "train.seed 0 is also the baseline's" in same_seed.output
