"""The ablation runner's control rows (bench/control_rows.py): ensemble pairing and aggregation on fake run records,
and control runs built from tiny SASRec checkpoints."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from bench.ablations import aggregate, pair_posters_with_cards, pair_with_ensembles
from bench.control_rows import control_kind, control_runs, paired_rows
from bench.suite_spec import apply_overrides, ensemble_row, reference_row
from pipeline.reporting.experiments import cards_table, experiments_table, multimodal_value
from tests.helpers.projects import write_project, write_text_features, write_topk

TARGETS = [1, 2, 3, 4]


def fake_run(tmp_path: Path, name: str, seed: int | None, items: list[list[int]]) -> dict:
    run_dir = tmp_path / name
    (run_dir / "reports").mkdir(parents=True)
    write_topk(run_dir / "reports" / "topk.parquet", items, TARGETS)
    ndcg = float(
        np.mean([1 / np.log2(row.index(t) + 2) if t in row else 0 for row, t in zip(items, TARGETS, strict=True)])
    )
    metrics = {name.split("_s")[0]: {"test": {"NDCG@10": ndcg}, "valid": {"NDCG@10": ndcg}}, "controls": {}}
    return {"seed": seed, "run_dir": str(run_dir), "metrics": metrics, "train": None, "pretrain": None, "stages": {}}


def test_ensemble_rows_pair_with_every_seed_and_claims_follow_the_ci(tmp_path: Path) -> None:
    # per-user NDCG@10 (4 users): sasrec seeds hit users {0}, {0, 1}; the ensemble hits {0, 1}; odmt hits all
    sasrec = [fake_run(tmp_path, "sasrec_s1", 1, [[1], [9], [9], [9]])]
    sasrec.append(fake_run(tmp_path, "sasrec_s2", 2, [[1], [2], [9], [9]]))
    ensemble_run = fake_run(tmp_path, "id_ensemble", None, [[1], [2], [9], [9]]) | {"members": [1, 2]}
    odmt = [fake_run(tmp_path, f"odmt_s{s}", s, [[1], [2], [3], [4]]) for s in (1, 2)]
    rows = {
        "sasrec": aggregate("sasrec", "sasrec", sasrec) | {"reference": "sasrec", "reads_content": False},
        "id_ensemble": aggregate("id_ensemble", "id_ensemble", [ensemble_run]) | {"reads_content": False},
        "odmt": aggregate("odmt", "odmt", odmt) | {"reads_content": True, "reference": "sasrec"},
    }
    assert (
        rows["id_ensemble"]["train"] is None and rows["id_ensemble"]["metrics"]["id_ensemble"]["test"]["NDCG@10"] == 0.5
    )
    ens_vs_sasrec = paired_rows(rows["id_ensemble"], rows["sasrec"])
    assert ens_vs_sasrec["test"]["NDCG@10"]["diff"] == pytest.approx(0.5 - 0.375)  # vs the seed average
    assert ens_vs_sasrec["seeds"] == [1, 2]
    odmt_vs_ens = paired_rows(rows["odmt"], rows["id_ensemble"])
    assert odmt_vs_ens["test"]["NDCG@10"]["diff"] == pytest.approx(0.5) and odmt_vs_ens["seeds"] == [1, 2]
    assert paired_rows(rows["id_ensemble"], rows["id_ensemble"]) is None

    variants = {"sasrec": {"model.name": "sasrec"}, "id_ensemble": {"control": "id_ensemble"}, "odmt": {}}
    base = {"model": {"name": "odmt"}, "data": {"cold_start_fraction": 0.0}}
    suite_dir = tmp_path / "results"
    suite_dir.mkdir()
    pair_with_ensembles(rows, variants, base, suite_dir)
    assert "paired_vs_ensemble" not in rows["id_ensemble"]
    written = json.loads((suite_dir / "odmt.json").read_text())
    assert written["paired_vs_ensemble"]["test"]["NDCG@10"]["diff"] == pytest.approx(0.5)
    assert multimodal_value(written) in {"yes", "no"}
    assert multimodal_value(written) == ("yes" if odmt_vs_ens["test"]["NDCG@10"]["ci_low"] > 0 else "no")
    assert multimodal_value(rows["sasrec"]) == "–"  # ID-only: no claim either way
    no_gain = written | {"paired_vs_ensemble": {"test": {"NDCG@10": {"ci_low": -0.01}}}}
    assert multimodal_value(no_gain) == "no"
    table = experiments_table([suite_dir / "odmt.json"])
    assert "vs ID-only ensemble" in table.splitlines()[0] and "+0.5000" in table.splitlines()[2]


def test_control_specs_are_not_param_overrides_nor_reference_rows() -> None:
    base = {"model": {"name": "odmt"}, "data": {"cold_start_fraction": 0.0}}
    suite = {
        "sasrec": {"model.name": "sasrec", "seeds": [1, 2]},
        "id_ensemble": {"control": "id_ensemble", "members": 2},
        "id_ensemble_cold": {"control": "id_ensemble", "data.cold_start_fraction": 0.1},
        "late": {"control": "late_fusion"},
    }
    cold = apply_overrides(base, {"data.cold_start_fraction": 0.1})
    assert reference_row(suite, base, base) == "sasrec"
    assert ensemble_row(suite, base, base) == "id_ensemble" and ensemble_row(suite, base, cold) == "id_ensemble_cold"
    assert control_kind(suite["late"]) == "late_fusion" and control_kind({"model.name": "sasrec"}) is None
    with pytest.raises(ValueError, match="control: 'stacking' must be one of id_ensemble, late_fusion"):
        control_kind({"control": "stacking"})


def test_control_runs_from_tiny_sasrec_checkpoints(tmp_path: Path) -> None:
    params, prepared, models = write_project(tmp_path)
    write_text_features(tmp_path / "features", prepared)
    runs = []
    for seed, ckpt in ((1, models / "model.pt"), (2, models / "baseline" / "model.pt")):
        run_dir = tmp_path / "runs" / "suite" / "sasrec" / f"seed{seed}"
        (run_dir / "models").mkdir(parents=True)
        shutil.copy(ckpt, run_dir / "models" / "model.pt")
        shutil.copy(params, run_dir / "params.yaml")
        runs.append({"seed": seed, "run_dir": str(run_dir), "params_key": f"key{seed}"})
    reference = {"name": "sasrec", "runs": runs}
    shared = (prepared, tmp_path / "features")
    out = tmp_path / "runs" / "suite" / "id_ensemble"
    [ensemble] = control_runs("id_ensemble", {"members": 2}, reference, out, shared)
    assert ensemble["seed"] is None and ensemble["members"] == [1, 2]
    assert (out / "reports" / "topk.parquet").exists() and "id_ensemble" in ensemble["metrics"]
    assert ensemble["metrics"]["controls"]["rows"]["id_ensemble"]["members"] == ["seed1", "seed2"]
    assert control_runs("id_ensemble", {"members": 2}, reference, out, shared) == [ensemble]  # reused
    with pytest.raises(ValueError, match="members: 3 needs 2..2 seed runs of row sasrec"):
        control_runs("id_ensemble", {"members": 3}, reference, out, shared)
    late = control_runs("late_fusion", {}, reference, tmp_path / "runs" / "suite" / "late", shared)
    assert [r["seed"] for r in late] == [1, 2] and all("late_fusion_knn" in r["metrics"] for r in late)
    with pytest.raises(ValueError, match="late fusion needs content features"):
        control_runs("late_fusion", {}, reference, tmp_path / "late2", (prepared, tmp_path / "none"))


def _ci(low: float) -> dict:
    return {"test": {"NDCG@10": {"diff": low + 0.01, "ci_low": low, "ci_high": low + 0.02, "p_value": 0.01}}}


def test_architecture_value_needs_the_ensemble_and_the_early_fusion_model_beaten() -> None:
    from pipeline.reporting.experiments import architecture_value

    row = {"reads_content": True, "paired_vs_ensemble": _ci(0.002), "paired_vs_early_fusion": _ci(0.001)}
    assert architecture_value(row) == "yes"
    assert architecture_value(row | {"paired_vs_early_fusion": _ci(-0.001)}) == "no"  # early fusion explains it
    assert architecture_value(row | {"paired_vs_ensemble": _ci(-0.001)}) == "no"  # an ensemble gain
    assert architecture_value(row | {"paired_vs_early_fusion": None}) == "–"  # not compared with (d)
    assert architecture_value(row | {"reads_content": False}) == "–"  # an ID-only row claims nothing


def test_early_fusion_row_is_the_sasrec_fusion_row_on_the_same_data() -> None:
    from bench.suite_spec import early_fusion_row

    base = {"data": {"history_limit": 15}, "model": {"name": "odmt"}, "train": {"seed": 42}}
    suite = {
        "sasrec": {"model.name": "sasrec", "seeds": [42]},
        "sasrec_fusion_cold": {"model.name": "sasrec_fusion", "data.history_limit": None},  # other data
        "id_ensemble": {"control": "id_ensemble", "members": 3},
        "sasrec_fusion": {"model.name": "sasrec_fusion", "seeds": [42, 43]},
        "odmt": {},
    }
    assert early_fusion_row(suite, base, base) == "sasrec_fusion"
    other = {"data": {"history_limit": None}, "model": {"name": "odmt"}, "train": {"seed": 42}}
    assert early_fusion_row(suite, base, other) == "sasrec_fusion_cold"
    assert early_fusion_row({"odmt": {}}, base, base) is None


def test_posters_rows_pair_with_the_same_row_of_the_cards_suite(tmp_path: Path) -> None:
    # per-user NDCG@10 (4 users): with cards ODMT hits users {0} (seed 1) and {0, 1} (seeds 2, 3); with posters
    # it hits every user (seeds 1, 2); the posters suite has no seed 3, so only seeds 1 and 2 pair
    results = tmp_path / "results"
    cards = [fake_run(tmp_path / "c", f"odmt_s{s}", s, [[1], [2] if s > 1 else [9], [9], [9]]) for s in (1, 2, 3)]
    posters = [fake_run(tmp_path / "p", f"odmt_s{s}", s, [[1], [2], [3], [4]]) for s in (1, 2)]
    sasrec = [fake_run(tmp_path / "p", "sasrec_s1", 1, [[1], [9], [9], [9]])]
    rows = {
        ("suite", "odmt"): aggregate("odmt", "odmt", cards) | {"reads_content": True},
        ("suite_posters", "odmt"): aggregate("odmt", "odmt", posters) | {"reads_content": True},
        ("suite_posters", "sasrec"): aggregate("sasrec", "sasrec", sasrec) | {"reads_content": False},
        ("suite", "sasrec"): aggregate("sasrec", "sasrec", sasrec) | {"reads_content": False},
    }
    for (suite, name), row in rows.items():
        (results / suite).mkdir(parents=True, exist_ok=True)
        (results / suite / f"{name}.json").write_text(json.dumps(row))
    pair_posters_with_cards(results, "suite")  # from either suite of the pair
    odmt = json.loads((results / "suite_posters" / "odmt.json").read_text())
    paired = odmt["paired_vs_cards"]
    assert paired["seeds"] == [1, 2]
    assert paired["test"]["NDCG@10"]["diff"] == pytest.approx(1.0 - (0.25 + 0.5) / 2)  # vs the seed-averaged cards
    assert "paired_vs_cards" not in json.loads((results / "suite_posters" / "sasrec.json").read_text())  # ID-only
    assert "paired_vs_cards" not in json.loads((results / "suite" / "odmt.json").read_text())
    table = cards_table(sorted((results / "suite_posters").glob("*.json")))
    assert "| odmt | 1, 2 | +0.6250 [" in table and "sasrec" not in table
    assert cards_table(sorted((results / "suite").glob("*.json"))) == ""
