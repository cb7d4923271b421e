"""The cold-start split: deterministic held-out items that occur only as test targets, every drop counted."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from pipeline.config import ConfigError, DataConfig
from pipeline.data.cold_start import (
    COLD_START_DROP_REASONS,
    apply_cold_start,
    choose_cold_items,
    cold_target_mask,
)
from pipeline.data.prepare import prepare
from pipeline.data.splits import UserSplit, leave_one_out, load_split
from pipeline.evaluation import COLD_START, evaluate_popularity


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


def test_choose_cold_items_is_deterministic_and_sized() -> None:
    first = choose_cold_items(100, 0.1, seed=42)
    assert len(first) == 10 and np.array_equal(first, np.sort(first)) and first.min() >= 1 and first.max() <= 100
    assert np.array_equal(first, choose_cold_items(100, 0.1, seed=42))
    assert not np.array_equal(first, choose_cold_items(100, 0.1, seed=7))
    assert len(choose_cold_items(100, 0.0, seed=42)) == 0
    assert len(choose_cold_items(5, 0.01, seed=42)) == 1  # a positive fraction holds out at least one item
    with pytest.raises(ConfigError, match=r"cold_start_fraction.*\[0, 1\)"):
        choose_cold_items(100, 1.0, seed=42)


def test_rules_on_a_hand_built_log() -> None:
    cold = np.array([90, 91])
    rows = [
        [1, 2, 3, 4],  # no cold item: unchanged
        [1, 90, 2, 3, 91, 4, 5],  # cold target 91; 90 held out; 4, 5 come after the target
        [1, 90, 2, 3, 4],  # cold target 90 (warm 1 before it is too few): fallback to warm-only [1, 2, 3, 4]
        [90, 1, 91],  # one warm item before the last cold one, only one warm item at all: user dropped
        [4, 6, 91],  # cold target 91, history [4, 6]
    ]
    out, drops, summary = apply_cold_start(sequences(rows), cold)
    assert out["items"].to_list() == [[1, 2, 3, 4], [1, 2, 3, 91], [1, 2, 3, 4], [4, 6, 91]]
    assert out["user_id"].to_list() == ["u0", "u1", "u2", "u4"]
    assert out["user_idx"].to_list() == [0, 1, 2, 3]  # renumbered in the original order
    assert out["timestamps"].to_list()[1] == [10, 30, 40, 50]  # the kept events' own times, still chronological
    assert drops == {"cold_start_held_out": 2, "cold_start_after_target": 2, "cold_start_short_user": 3}
    assert summary == {"held_out_items": 2, "users_with_cold_target": 2, "users_dropped": 1}
    assert out.schema == sequences(rows).schema
    split = leave_one_out(out)
    assert cold_target_mask(split).tolist() == [False, True, False, True]


def test_held_out_items_occur_only_as_test_targets() -> None:
    rng = np.random.default_rng(0)
    rows = [rng.choice(np.arange(1, 61), size=int(rng.integers(3, 25)), replace=False).tolist() for _ in range(300)]
    cold = choose_cold_items(60, 0.2, seed=1)
    out, drops, summary = apply_cold_start(sequences(rows), cold)
    assert sum(len(r) for r in rows) == out["items"].list.len().sum() + sum(drops.values())
    split = leave_one_out(out)
    for stage_history in (split.train, split.history("test")):
        assert not np.isin(np.concatenate(stage_history), cold).any()
    assert not np.isin(split.valid_target, cold).any()
    cold_users = np.isin(split.test_target, cold)
    assert cold_users.sum() == summary["users_with_cold_target"] > 50
    assert np.array_equal(cold_target_mask(split), cold_users)
    for ts in out["timestamps"].to_list():
        assert ts == sorted(ts)
    assert set(drops) == set(COLD_START_DROP_REASONS)


def test_no_held_out_items_changes_nothing() -> None:
    frame = sequences([[1, 2, 3], [3, 2, 1, 4]])
    out, drops, summary = apply_cold_start(frame, np.zeros(0, dtype=np.int64))
    assert out.equals(frame) and not any(drops.values()) and summary["users_dropped"] == 0


def test_cold_target_mask_counts_items_unseen_before_test() -> None:
    split = UserSplit(
        user_idx=np.arange(3),
        train=[np.array([1, 2]), np.array([2, 3]), np.array([1])],
        valid_target=np.array([4, 1, 2]),
        test_target=np.array([5, 4, 3]),  # 5 is new; 4 was a valid target; 3 a training item
    )
    assert cold_target_mask(split).tolist() == [True, False, False]


CFG = DataConfig(
    source="movielens",
    path=None,
    images_dir=None,
    min_rating=None,
    user_core=3,
    item_core=2,
    dedupe="user_item",
    max_seq_len=50,
    cold_start_fraction=0.2,
    seed=42,
)


def test_prepare_writes_the_cold_start_split(tmp_path: Path, tiny_ml1m_dir: Path) -> None:
    cfg = dataclasses.replace(CFG, path=str(tiny_ml1m_dir))
    normal = prepare(dataclasses.replace(cfg, cold_start_fraction=0.0), tmp_path / "normal")
    stats = prepare(cfg, tmp_path / "cold")
    assert stats["items"] == normal["items"]  # held-out items stay in the catalog (they have content)
    assert stats["input_rows"] == stats["interactions"] + sum(stats["dropped"].values())
    assert stats["cold_start"]["held_out_items"] == round(0.2 * stats["items"])
    assert stats["cold_start"]["users_with_cold_target"] > 0
    assert normal["cold_start"]["held_out_items"] == 0 and "cold_start_held_out" not in normal["dropped"]
    assert set(COLD_START_DROP_REASONS) <= set(stats["dropped"])
    cold = choose_cold_items(stats["items"], 0.2, 42)
    split = load_split(tmp_path / "cold")
    assert not np.isin(np.concatenate(split.history("test")), cold).any()
    assert np.isin(split.test_target, cold).sum() == stats["cold_start"]["users_with_cold_target"]
    again = prepare(cfg, tmp_path / "again")
    assert (tmp_path / "again/sequences.parquet").read_bytes() == (tmp_path / "cold/sequences.parquet").read_bytes()
    assert again["cold_start"] == stats["cold_start"]


def test_evaluation_reports_cold_start_metrics_only_when_there_are_cold_targets() -> None:
    split = UserSplit(
        user_idx=np.arange(3),
        train=[np.array([1, 2]), np.array([2, 3]), np.array([1])],
        valid_target=np.array([4, 1, 2]),
        test_target=np.array([5, 4, 3]),  # only user 0's target (5) is new
    )
    result = evaluate_popularity(split, num_items=5, ks=[1, 2])
    # User 0 at test: history {1, 2, 4} masked; by training count item 3 (1) comes before item 5 (0).
    assert result.metrics()[COLD_START] == pytest.approx(
        {"HR@1": 0.0, "NDCG@1": 0.0, "MRR@1": 0.0, "HR@2": 1.0, "NDCG@2": 1 / np.log2(3), "MRR@2": 0.5}
    )
    warm = dataclasses.replace(split, test_target=np.array([3, 4, 3]))
    assert COLD_START not in evaluate_popularity(warm, num_items=5, ks=[1, 2]).metrics()
