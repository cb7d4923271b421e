"""The ablation runner's param overrides and the experiments table copied into report.md."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from bench.ablations import aggregate, app, find_run
from bench.suite_spec import (
    apply_overrides,
    canonical_params,
    check_rows,
    params_key,
    reference_row,
    suite_rows,
)
from pipeline.config import ConfigError
from pipeline.reporting.experiments import (
    experiments_markdown,
    experiments_sections,
    experiments_table,
    heads_table,
    seed_averaged_paired,
)
from tests.helpers.projects import write_topk


def _result(name: str, model: str, ndcg: float, cold: float | None = None) -> dict:
    stages = {"valid": {"HR@10": 0.3, "NDCG@10": ndcg, "MRR@10": 0.1}, "test": {"HR@10": 0.2, "NDCG@10": ndcg}}
    if cold is not None:
        stages["test_cold_start"] = {"HR@10": cold, "NDCG@10": cold / 2, "MRR@10": cold / 4}
        stages["test_cold_among_cold"] = {"HR@10": 4 * cold, "NDCG@10": 2 * cold, "MRR@10": cold}
    return {
        "name": name,
        "model": model,
        "metrics": {model: stages, "popularity": stages},
        "train": {"seconds_per_epoch": 41.26, "epochs_run": 12},
        "pretrain": {"seconds_per_epoch": 80.0, "epochs_run": 9} if model == "mp4sr" else None,
        "stages": {
            "train": {"seconds": 500.0, "peak_rss_mb": 1500},
            "evaluate": {"seconds": 30, "peak_rss_mb": 900},
            **({"pretrain": {"seconds": 720.0, "peak_rss_mb": 1700}} if model == "mp4sr" else {}),
        },
    }


def test_overrides_replace_existing_keys_only() -> None:
    params = {"model": {"name": "sasrec", "hidden_dim": 64}, "train": {"lr": 0.001}}
    out = apply_overrides(params, {"model.name": "odmt", "train.lr": 0.01})
    assert out == {"model": {"name": "odmt", "hidden_dim": 64}, "train": {"lr": 0.01}}
    assert params["model"]["name"] == "sasrec"  # the base is not mutated
    with pytest.raises(KeyError, match="train.learning_rate"):
        apply_overrides(params, {"train.learning_rate": 0.1})


REPO = Path(__file__).resolve().parents[1]


def test_every_row_of_the_shipped_suites_has_valid_params() -> None:
    """A typo in bench/experiments.yaml would otherwise surface only when its row's turn comes, hours in."""
    spec = yaml.safe_load((REPO / "bench/experiments.yaml").read_text())
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for suite in spec["suites"]:
        variants, budget = suite_rows(spec, suite)
        check_rows(suite, variants, apply_overrides(params, budget), Path("bench/experiments.yaml"))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"model.distill_weigth": 0.5}, "unknown key `model.distill_weigth`"),
        ({"train.lr": -1}, "`train.lr` = -1.0 must be > 0"),
        ({"train.learning_rate": 0.1}, "override `train.learning_rate`: no such key"),
        ({"baseline.train.patience": -2}, "`baseline.train.patience`"),
    ],
)
def test_a_bad_row_stops_the_suite_before_anything_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, override: dict, message: str
) -> None:
    suite = {"budget": {"train.epochs": 2}, "sasrec": {"model.name": "sasrec"}, "typo": override}
    experiments = tmp_path / "experiments.yaml"
    experiments.write_text(yaml.safe_dump({"suites": {"s": suite}}))
    monkeypatch.chdir(tmp_path)  # the runner writes runs/ and results under the working directory
    args = ["--suite", "s", "--experiments", str(experiments), "--params-file", str(REPO / "params.yaml")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    (line,) = result.output.strip().splitlines()  # one line, naming the file, suite, row and key
    assert line.startswith(f"error: {experiments} (suite s, row typo): ") and message in line
    assert not (tmp_path / "runs").exists() and not (tmp_path / "reports").exists()  # the good row did not run


def test_control_rows_are_not_validated_as_params() -> None:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    check_rows("s", {"ens": {"control": "id_ensemble", "members": 3}}, params, Path("x.yaml"))
    with pytest.raises(ConfigError, match=r"x.yaml \(suite s, row bad\)"):
        check_rows("s", {"bad": {"model.name": "nope"}}, params, Path("x.yaml"))


def test_table_has_one_row_per_run_with_cold_start_and_cost(tmp_path: Path) -> None:
    (tmp_path / "a_sasrec.json").write_text(json.dumps({**_result("sasrec", "sasrec", 0.15), "order": 0}))
    (tmp_path / "b_mp4sr.json").write_text(json.dumps({**_result("mp4sr_cold", "mp4sr", 0.12, cold=0.04), "order": 1}))
    table = experiments_table(sorted(tmp_path.glob("*.json")))
    lines = table.strip().splitlines()
    assert lines[0].startswith("| run | valid HR@10 | valid NDCG@10 | valid MRR@10 | test HR@10")
    assert len(lines) == 4
    sasrec, mp4sr = lines[2].split(" | "), lines[3].split(" | ")
    assert sasrec[0] == "| sasrec" and sasrec[2] == "0.1500" and sasrec[6] == "–"  # test MRR missing -> "–"
    assert sasrec[7:13] == ["–"] * 6  # no cold-start split
    assert mp4sr[7:13] == ["0.0400", "0.0200", "0.0100", "0.1600", "0.0800", "0.0400"]  # all items, among cold
    no_pairs = ["–", "–", "–", "–", "– |"]  # vs SASRec, vs ensemble, multimodal, vs early fusion, architecture
    assert sasrec[13:] == ["41.3", "12", "1500", "–", "–", "–", "1", "–", *no_pairs]  # one seed, no paired rows
    assert mp4sr[16:19] == ["80.0", "9", "1700"]


def test_pretraining_columns_are_empty_when_pretraining_was_off(tmp_path: Path) -> None:
    result = _result("mp4sr_no_pretraining", "mp4sr", 0.1)
    result["pretrain"] = {"enabled": False, "reason": "pretrain.enabled is false"}  # the marker's summary
    (tmp_path / "r.json").write_text(json.dumps(result))
    row = experiments_table([tmp_path / "r.json"]).strip().splitlines()[2].split(" | ")
    assert row[16:19] == ["–", "–", "–"]


def test_rows_follow_suite_order_not_file_names(tmp_path: Path) -> None:
    for order, name in enumerate(["sasrec", "odmt", "a_ablation"]):
        (tmp_path / f"{name}.json").write_text(json.dumps({**_result(name, name, 0.1), "order": order}))
    rows = experiments_table(sorted(tmp_path.glob("*.json"))).strip().splitlines()[2:]
    assert [row.split(" | ")[0] for row in rows] == ["| sasrec", "| odmt", "| a_ablation"]


def test_one_table_per_suite_with_its_budget(tmp_path: Path) -> None:
    assert experiments_sections(tmp_path / "missing") == []
    budget = {"data.max_seq_len": 50, "train.epochs": 8}
    for suite, name in [("odmt", "odmt"), ("mp4sr", "mp4sr_cold")]:
        (tmp_path / suite).mkdir()
        result = {**_result(name, name.split("_")[0], 0.1), "budget": budget}
        (tmp_path / suite / f"{name}.json").write_text(json.dumps(result))
    markdown = experiments_markdown(tmp_path)
    assert markdown.index("### Suite `mp4sr`") < markdown.index("### Suite `odmt`")
    assert markdown.count("`data.max_seq_len=50`, `train.epochs=8`") == 2
    (section,) = experiments_sections(tmp_path)
    assert section.startswith("## Experiments") and "| odmt |" in section and "| mp4sr_cold |" in section


def test_finished_run_with_same_params_is_found_in_any_suite(tmp_path: Path) -> None:
    params = {"model": {"name": "sasrec"}, "train": {"epochs": 8}}
    (tmp_path / "odmt").mkdir()
    (tmp_path / "odmt" / "sasrec.json").write_text(json.dumps({"name": "sasrec", "params_key": params_key(params)}))
    assert find_run(tmp_path, params_key(params))["name"] == "sasrec"
    changed = apply_overrides(params, {"train.epochs": 9})
    assert find_run(tmp_path, params_key(changed)) is None


def test_a_key_added_later_at_its_neutral_value_keeps_earlier_runs_reusable(tmp_path: Path) -> None:
    before = {"model": {"name": "sasrec"}, "train": {"epochs": 8}}  # recorded before train.lr_schedule existed
    (tmp_path / "odmt").mkdir()
    (tmp_path / "odmt" / "sasrec.json").write_text(json.dumps({"name": "sasrec", "params_key": params_key(before)}))
    now = {"model": {"name": "sasrec"}, "train": {"epochs": 8, "lr_schedule": "constant", "warmup_epochs": 0}}
    assert params_key(now) == params_key(before) and find_run(tmp_path, params_key(now))["name"] == "sasrec"
    cosine = apply_overrides(now, {"train.lr_schedule": "cosine"})  # a real change is a new run
    assert params_key(cosine) != params_key(before) and find_run(tmp_path, params_key(cosine)) is None


@pytest.mark.parametrize("name", ["odmt", "sasrec", "mp4sr"])
def test_content_max_seq_len_without_effect_keeps_runs_recorded_with_0_reusable(tmp_path: Path, name: str) -> None:
    """content_max_seq_len (default 0, now 50) changes nothing for a model other than ODMT or when it is >=
    data.max_seq_len: such runs recorded with 0 keep their key; an ODMT window shorter than the histories is new."""
    before = {"model": {"name": name, "content_max_seq_len": 0}, "data": {"max_seq_len": 15}}
    (tmp_path / "odmt").mkdir()
    (tmp_path / "odmt" / "row.json").write_text(json.dumps({"name": "row", "params_key": params_key(before)}))
    for window in (15, 50):
        now = apply_overrides(before, {"model.content_max_seq_len": window})
        assert params_key(now) == params_key(before) and find_run(tmp_path, params_key(now))["name"] == "row"
    shorter = apply_overrides(before, {"model.content_max_seq_len": 10})
    assert (params_key(shorter) == params_key(before)) == (name != "odmt")
    full = apply_overrides(before, {"data.max_seq_len": 200, "model.content_max_seq_len": 50})  # 200 > 50
    assert (params_key(full) == params_key(apply_overrides(full, {"model.content_max_seq_len": 0}))) == (name != "odmt")
    assert canonical_params(before) == before  # nothing else is touched


def test_heads_table_lists_each_head_of_multi_head_runs_only(tmp_path: Path) -> None:
    odmt = _result("odmt", "odmt", 0.09)
    odmt["metrics"]["odmt[id]"] = {"test": {"NDCG@10": 0.1276}}
    odmt["metrics"]["odmt[text]"] = {"test": {"NDCG@10": 0.0781}}
    (tmp_path / "a.json").write_text(json.dumps({**_result("sasrec", "sasrec", 0.15), "order": 0}))
    (tmp_path / "b.json").write_text(json.dumps({**odmt, "order": 1}))
    table = heads_table(sorted(tmp_path.glob("*.json")))
    lines = table.strip().splitlines()
    assert lines[2] == "| run | fused | id alone | text alone |"
    assert lines[4] == "| odmt | 0.0900 | 0.1276 | 0.0781 |" and len(lines) == 5  # no row for single-head SASRec
    assert heads_table([tmp_path / "a.json"]) == ""


def test_seed_averaged_paired_comparison_from_topk_lists(tmp_path: Path) -> None:
    """Users' NDCG@10 averaged over seeds, then paired: hand-computed on three users."""
    targets = [1, 2, 3]
    model = [write_topk(tmp_path / "m0.parquet", [[1, 9], [2, 9], [9, 9]], targets)]  # ranks 1, 1, miss
    model.append(write_topk(tmp_path / "m1.parquet", [[1, 9], [9, 2], [9, 9]], targets))  # ranks 1, 2, miss
    ref = [write_topk(tmp_path / f"r{i}.parquet", [[9, 1], [9, 9], [9, 9]], targets) for i in range(2)]  # 2, miss, miss
    out = seed_averaged_paired(model, ref, resamples=200)
    user_means = np.array([1.0, (1.0 + 1 / np.log2(3)) / 2, 0.0]) - np.array([1 / np.log2(3), 0.0, 0.0])
    assert out["test"]["NDCG@10"]["diff"] == pytest.approx(user_means.mean())
    assert out["valid"]["NDCG@10"]["ci_low"] <= out["valid"]["NDCG@10"]["diff"]
    with pytest.raises(ValueError, match="one reference run per model run"):
        seed_averaged_paired(model, ref[:1])


def test_aggregate_takes_mean_and_std_over_seeds() -> None:
    def run(seed: int, ndcg: float) -> dict:
        return {
            "seed": seed,
            "metrics": {"odmt": {"test": {"NDCG@10": ndcg}}, "paired_vs_baseline": {"test": {}}},
            "train": {"seconds_per_epoch": 10.0 * seed, "epochs_run": 3},
            "pretrain": None,
            "stages": {},
        }

    result = aggregate("odmt", "odmt", [run(1, 0.1), run(2, 0.2), run(3, 0.3)])
    assert result["seeds"] == [1, 2, 3]
    assert result["metrics"]["odmt"]["test"]["NDCG@10"] == pytest.approx(0.2)
    assert result["metrics_std"]["test"]["NDCG@10"] == pytest.approx(np.std([0.1, 0.2, 0.3]))
    assert result["train"]["seconds_per_epoch"] == pytest.approx(20.0)
    assert "paired_vs_baseline" not in result["metrics"]


def test_reference_row_is_the_sasrec_row_on_the_same_data() -> None:
    base = {"model": {"name": "odmt"}, "data": {"cold_start_fraction": 0.0}, "train": {"seed": 1}}
    suite = {
        "sasrec": {"model.name": "sasrec", "seeds": [1, 2]},
        "sasrec_cold": {"model.name": "sasrec", "data.cold_start_fraction": 0.1},
        "odmt": {},
        "odmt_cold": {"data.cold_start_fraction": 0.1},
    }
    assert reference_row(suite, base, apply_overrides(base, {})) == "sasrec"
    assert reference_row(suite, base, apply_overrides(base, suite["odmt_cold"])) == "sasrec_cold"
    assert reference_row(suite, base, apply_overrides(base, {"data.cold_start_fraction": 0.5})) is None


def test_table_shows_seeds_std_and_the_paired_difference(tmp_path: Path) -> None:
    result = _result("odmt", "odmt", 0.19) | {"seeds": [1, 2, 3], "reference": "sasrec"}
    result["metrics_std"] = {"test": {"NDCG@10": 0.0012}}
    result["paired"] = {
        "test": {"NDCG@10": {"diff": 0.004, "ci_low": 0.001, "ci_high": 0.007, "p_value": 0.01, "relative": 0.021}}
    }
    (tmp_path / "r.json").write_text(json.dumps(result))
    row = experiments_table([tmp_path / "r.json"]).strip().splitlines()[2].split(" | ")
    assert row[19:] == ["3", "0.0012", "+0.0040 [+0.0010, +0.0070] (+2.1%), p=0.010", "–", "–", "–", "– |"]
