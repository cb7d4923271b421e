"""The cold-start protocol (pipeline/data/cold_start.py): disjoint cold-validation and cold-test items that never
reach a training sequence, cold targets at a chosen share of users, every drop counted, and the cold metrics."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from pipeline.config import ConfigError
from pipeline.data.cold_start import (
    COLD_START_DROP_REASONS,
    ColdItems,
    apply_cold_start,
    choose_cold_items,
    cold_target_mask,
    cold_valid_mask,
    load_cold_items,
)
from pipeline.data.prepare import prepare, validate_config
from pipeline.data.splits import UserSplit, leave_one_out, load_split
from pipeline.evaluation.ranking import evaluate_popularity, evaluate_vectors, rank_among
from tests.helpers.data import DATA_CFG


def sequences(rows: list[list[int]]) -> pl.DataFrame:
    """user_idx 0..U-1, user_id "u<i>", items as given, timestamps 10, 20, 30, ... (chronological)."""
    return pl.DataFrame(
        {
            "user_idx": list(range(len(rows))),
            "user_id": [f"u{i}" for i in range(len(rows))],
            "items": rows,
            "timestamps": [[10 * (j + 1) for j in range(len(r))] for r in rows],
        },
        schema={
            "user_idx": pl.Int32,
            "user_id": pl.String,
            "items": pl.List(pl.Int32),
            "timestamps": pl.List(pl.Int64),
        },
    )


def cold_items(valid: list[int], test: list[int]) -> ColdItems:
    return ColdItems(np.array(valid, dtype=np.int64), np.array(test, dtype=np.int64))


def test_held_out_items_are_two_disjoint_seeded_halves() -> None:
    first = choose_cold_items(100, 0.1, seed=42)
    assert len(first.valid) == 5 and len(first.test) == 5
    assert not np.intersect1d(first.valid, first.test).size
    assert first.all.min() >= 1 and first.all.max() <= 100
    again = choose_cold_items(100, 0.1, seed=42)
    assert np.array_equal(first.valid, again.valid) and np.array_equal(first.test, again.test)
    assert not np.array_equal(first.all, choose_cold_items(100, 0.1, seed=7).all)
    assert len(choose_cold_items(100, 0.0, seed=42)) == 0
    assert len(choose_cold_items(50, 0.01, seed=42)) == 2  # at least one item per half
    with pytest.raises(ConfigError, match=r"cold_start_fraction.*\[0, 1\)"):
        choose_cold_items(100, 1.0, seed=42)
    with pytest.raises(ConfigError, match="at least 2 held-out items"):
        choose_cold_items(1, 0.5, seed=42)


ROWS = [
    [1, 2, 3, 6, 4, 5],  # no held-out item: unchanged
    [1, 90, 2, 3, 91, 4, 5],  # cold test target 91 (3 warm before); 90 held out; 4, 5 come after the target
    [1, 90, 2, 3, 4],  # cold valid target 90 (1 warm before), test target 2 (the first warm item after it)
    [90, 1, 91],  # too few warm items for either role, one warm item left: user dropped
    [4, 6, 91],  # cold test target 91, history [4, 6]
    [5, 6, 90, 91, 7],  # cold test target 91 (its test role wins over the valid one); 90 and 7 dropped
]


def test_rules_on_a_hand_built_log() -> None:
    out, drops, summary = apply_cold_start(sequences(ROWS), cold_items([90], [91]), share=0.99, seed=0)
    assert out["items"].to_list() == [[1, 2, 3, 6, 4, 5], [1, 2, 3, 91], [1, 90, 2], [4, 6, 91], [5, 6, 91]]
    assert out["user_id"].to_list() == ["u0", "u1", "u2", "u4", "u5"]
    assert out["user_idx"].to_list() == [0, 1, 2, 3, 4]  # renumbered in the original order
    assert out["timestamps"].to_list()[1] == [10, 30, 40, 50]  # the kept events' own times, still chronological
    assert drops == {"cold_start_held_out": 2, "cold_start_after_target": 5, "cold_start_short_user": 3}
    assert sum(map(len, ROWS)) == out["items"].list.len().sum() + sum(drops.values())
    assert summary["users_with_cold_target"] == 3 and summary["users_with_cold_valid_target"] == 1
    assert summary["users_eligible_cold_test"] == 3 and summary["users_eligible_cold_valid"] == 3  # u1, u2, u5
    assert summary["users_dropped"] == 1 and summary["valid_items"] == [90] and summary["test_items"] == [91]
    assert out.schema == sequences(ROWS).schema
    split = leave_one_out(out)
    assert cold_target_mask(split).tolist() == [False, True, False, True, True]
    assert cold_valid_mask(split).tolist() == [False, False, True, False, False]


def test_share_sets_how_many_users_get_a_cold_target() -> None:
    out, drops, summary = apply_cold_start(sequences(ROWS), cold_items([90], [91]), share=0.2, seed=0)
    assert summary["target_share"] == 0.2
    assert summary["users_with_cold_target"] == 1 == summary["users_with_cold_valid_target"]  # round(0.2 * 6)
    split = leave_one_out(out)
    assert np.isin(split.test_target, [91]).sum() == 1 and np.isin(split.valid_target, [90]).sum() == 1
    # the users left without a cold role lose every held-out interaction and are split on their warm items
    assert not np.isin(np.concatenate(split.train), [90, 91]).any()
    again, _, _ = apply_cold_start(sequences(ROWS), cold_items([90], [91]), share=0.2, seed=0)
    assert again.equals(out)


def test_default_share_is_the_held_out_items_share_of_interactions() -> None:
    _, _, summary = apply_cold_start(sequences(ROWS), cold_items([90], [91]))
    held = sum(i in (90, 91) for r in ROWS for i in r)
    assert summary["held_out_interaction_share"] == pytest.approx(held / sum(map(len, ROWS)), abs=1e-6)
    assert summary["target_share"] == summary["held_out_interaction_share"]


def test_held_out_items_never_reach_a_training_sequence() -> None:
    rng = np.random.default_rng(0)
    rows = [rng.choice(np.arange(1, 61), size=int(rng.integers(3, 25)), replace=False).tolist() for _ in range(300)]
    cold = choose_cold_items(60, 0.2, seed=1)
    out, drops, summary = apply_cold_start(sequences(rows), cold, share=0.15, seed=3)
    assert sum(len(r) for r in rows) == out["items"].list.len().sum() + sum(drops.values())
    split = leave_one_out(out)
    assert not np.isin(np.concatenate(split.train), cold.all).any()  # neither half is ever trained on
    # cold-test items: only as test targets; cold-validation items: only as valid targets (and so at the end of
    # that user's test history)
    assert not np.isin(split.valid_target, cold.test).any()
    assert not np.isin(np.concatenate(split.history("test")), cold.test).any()
    assert not np.isin(split.test_target, cold.valid).any()
    assert summary["users_with_cold_target"] == round(0.15 * 300) == np.isin(split.test_target, cold.test).sum()
    assert summary["users_with_cold_valid_target"] == round(0.15 * 300) == np.isin(split.valid_target, cold.valid).sum()
    assert np.array_equal(cold_target_mask(split), np.isin(split.test_target, cold.test))
    assert np.array_equal(cold_valid_mask(split), np.isin(split.valid_target, cold.valid))
    for ts in out["timestamps"].to_list():
        assert ts == sorted(ts)
    assert set(drops) == set(COLD_START_DROP_REASONS)


def test_no_held_out_items_changes_nothing() -> None:
    frame = sequences([[1, 2, 3], [3, 2, 1, 4]])
    out, drops, summary = apply_cold_start(frame, ColdItems.empty())
    assert out.equals(frame) and not any(drops.values()) and summary["users_dropped"] == 0


def test_bad_share_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"cold_target_share.*\(0, 1\)"):
        apply_cold_start(sequences(ROWS), cold_items([90], [91]), share=1.5)


def test_cold_masks_count_items_unseen_before_the_target() -> None:
    split = UserSplit(
        user_idx=np.arange(3),
        train=[np.array([1, 2]), np.array([2, 3]), np.array([1])],
        valid_target=np.array([4, 1, 2]),  # 4 is in no training sequence
        test_target=np.array([5, 4, 3]),  # 5 is new; 4 was a valid target; 3 a training item
    )
    assert cold_target_mask(split).tolist() == [True, False, False]
    assert cold_valid_mask(split).tolist() == [True, False, False]


CFG = dataclasses.replace(
    DATA_CFG, source="movielens", item_core=2, cold_start_fraction=0.2, seed=42, cold_target_share=0.3
)


def test_prepare_writes_the_cold_start_split(tmp_path: Path, tiny_ml1m_dir: Path) -> None:
    cfg = dataclasses.replace(CFG, path=str(tiny_ml1m_dir))
    normal = prepare(dataclasses.replace(cfg, cold_start_fraction=0.0, cold_target_share=None), tmp_path / "normal")
    stats = prepare(cfg, tmp_path / "cold")
    assert stats["items"] == normal["items"]  # held-out items stay in the catalog (they have content)
    assert stats["input_rows"] == stats["interactions"] + sum(stats["dropped"].values())
    assert stats["cold_start"]["held_out_items"] == round(0.2 * stats["items"])
    assert normal["cold_start"]["held_out_items"] == 0 and "cold_start_held_out" not in normal["dropped"]
    assert load_cold_items(tmp_path / "normal") is None
    assert set(COLD_START_DROP_REASONS) <= set(stats["dropped"])
    cold = load_cold_items(tmp_path / "cold")
    expected = choose_cold_items(stats["items"], 0.2, 42)
    assert np.array_equal(cold.valid, expected.valid) and np.array_equal(cold.test, expected.test)
    split = load_split(tmp_path / "cold")
    assert not np.isin(np.concatenate(split.train), cold.all).any()
    assert np.isin(split.test_target, cold.test).sum() == stats["cold_start"]["users_with_cold_target"] > 0
    assert np.isin(split.valid_target, cold.valid).sum() == stats["cold_start"]["users_with_cold_valid_target"] > 0
    again = prepare(cfg, tmp_path / "again")
    assert (tmp_path / "again/sequences.parquet").read_bytes() == (tmp_path / "cold/sequences.parquet").read_bytes()
    assert again["cold_start"] == stats["cold_start"]


def test_stats_from_an_older_cold_split_ask_for_a_rerun(tmp_path: Path) -> None:
    (tmp_path / "stats.json").write_text(json.dumps({"cold_start": {"held_out_items": 3}}))
    with pytest.raises(ValueError, match="rerun `dvc repro prepare`"):
        load_cold_items(tmp_path)


# Catalog 1..6; held out: 5 (validation) and 6 (test). User 0 has a cold test target, user 1 a cold valid target.
SPLIT = UserSplit(
    user_idx=np.arange(3),
    train=[np.array([1, 2]), np.array([2, 3]), np.array([1, 4])],
    valid_target=np.array([3, 5, 2]),
    test_target=np.array([6, 4, 3]),
)
COLD = cold_items([5], [6])


def test_popularity_cold_metrics_by_hand() -> None:
    result = evaluate_popularity(SPLIT, num_items=6, ks=[1, 2], cold=COLD)
    m = result.metrics()
    # training counts 1: 2, 2: 2, 3: 1, 4: 1, 5: 0, 6: 0. test: user 0 masks {1, 2, 3} -> 4, 5, 6; 6 at rank 3
    assert m["test_cold_start"] == pytest.approx(
        dict.fromkeys(["HR@1", "NDCG@1", "MRR@1", "HR@2", "NDCG@2", "MRR@2"], 0.0)
    )
    # among cold test items only: every held-out item ties at 0 interactions, so popularity reports nothing there
    assert "test_cold_among_cold" not in m and "valid_cold_among_cold" not in m
    # warm test users 1, 2: user 1 masks {2, 3, 5} -> 1 (count 2), 4 (1), 6; target 4 at rank 2
    # user 2 masks {1, 4, 2} -> 3 (1), 5, 6; target 3 at rank 1
    assert m["test_warm_start"] == pytest.approx(
        {"HR@1": 0.5, "NDCG@1": 0.5, "MRR@1": 0.5, "HR@2": 1.0, "NDCG@2": (1 + 1 / np.log2(3)) / 2, "MRR@2": 0.75}
    )
    # valid: user 1 (cold valid target 5) masks {2, 3}: 1 (2), 4 (1), then 5, 6 at 0 -> 5 at rank 3
    assert m["valid_cold_start"]["HR@2"] == 0.0
    assert "valid_warm_start" in m


def test_model_cold_among_cold_by_hand() -> None:
    vectors = np.array([[0.0], [1.0], [2.0], [3.0], [4.0], [6.0], [5.0]], dtype=np.float32)  # item 5 > 6 > 4 ...
    result = evaluate_vectors("x", SPLIT, vectors, lambda stage: np.ones((3, 1), dtype=np.float32), [1], cold=COLD)
    m = result.metrics()
    assert m["test_cold_start"]["HR@1"] == 0.0  # user 0 (target 6): 5 scores higher among all unseen items
    assert m["test_cold_among_cold"]["HR@1"] == 1.0  # ... but 6 is the only cold-test candidate
    assert m["valid_cold_start"]["HR@1"] == 1.0  # user 1 (target 5): the best unseen item


def test_rank_among_ranks_only_the_candidates_with_the_full_ranking_tie_order() -> None:
    items = np.array([[0.0], [5.0], [4.0], [3.0], [3.0], [1.0]], dtype=np.float32)  # (N+1, 1)
    queries = np.array([[1.0], [-1.0]], dtype=np.float32)
    out = rank_among(queries, items, np.array([2, 3, 4]), 4)
    assert out.tolist() == [[2, 3, 4, -1], [3, 4, 2, -1]]


def test_cold_subsets_only_where_targets_are_cold() -> None:
    warm = dataclasses.replace(SPLIT, valid_target=np.array([3, 1, 2]), test_target=np.array([3, 3, 2]))
    vectors = np.arange(7, dtype=np.float32)[:, None]
    result = evaluate_vectors("x", warm, vectors, lambda stage: np.ones((3, 1), dtype=np.float32), [1], cold=COLD)
    assert set(result.metrics()) == {"valid", "test"}


def test_a_target_share_without_held_out_items_is_an_error() -> None:
    with pytest.raises(ConfigError, match="cold_target_share` = 0.2 is read only in the cold-start setting"):
        validate_config(dataclasses.replace(CFG, cold_start_fraction=0.0, cold_target_share=0.2))
