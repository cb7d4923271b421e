"""Metrics against hand-computed values (one target per user, 1-based ranks)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipeline.evaluation import metrics

# Four users; the target sits at rank 1, 2, 3 and nowhere.
TOPK = np.array(
    [
        [7, 1, 2, 3],
        [1, 7, 2, 3],
        [1, 2, 7, 3],
        [1, 2, 3, 4],
    ],
    dtype=np.int64,
)
TARGETS = np.array([7, 7, 7, 7], dtype=np.int64)


def test_target_ranks_are_one_based_and_zero_for_a_miss() -> None:
    assert metrics.target_ranks(TOPK, TARGETS).tolist() == [1, 2, 3, 0]


def test_padding_never_counts_as_a_hit() -> None:
    topk = np.array([[5, -1, -1]], dtype=np.int64)
    out = metrics.compute(topk, np.array([9]), ks=[3])
    assert out == {"HR@3": 0.0, "NDCG@3": 0.0, "MRR@3": 0.0}


def test_per_user_values_match_hand_computation() -> None:
    for row, (ndcg, mrr) in enumerate([(1.0, 1.0), (0.6309297535714575, 0.5), (0.5, 1 / 3), (0.0, 0.0)]):
        out = metrics.compute(TOPK[row : row + 1], TARGETS[row : row + 1], ks=[4])
        assert out["HR@4"] == (1.0 if ndcg else 0.0)
        assert out["NDCG@4"] == pytest.approx(ndcg, abs=1e-12)
        assert out["MRR@4"] == pytest.approx(mrr, abs=1e-12)


def test_means_and_cutoffs() -> None:
    out = metrics.compute(TOPK, TARGETS, ks=[1, 2, 3])
    assert list(out) == ["HR@1", "NDCG@1", "MRR@1", "HR@2", "NDCG@2", "MRR@2", "HR@3", "NDCG@3", "MRR@3"]
    assert out["HR@1"] == pytest.approx(1 / 4)
    assert out["NDCG@1"] == pytest.approx(1 / 4)
    assert out["MRR@1"] == pytest.approx(1 / 4)
    assert out["HR@2"] == pytest.approx(2 / 4)
    assert out["NDCG@2"] == pytest.approx((1 + 1 / math.log2(3)) / 4)
    assert out["MRR@2"] == pytest.approx((1 + 1 / 2) / 4)
    assert out["HR@3"] == pytest.approx(3 / 4)
    assert out["NDCG@3"] == pytest.approx((1 + 1 / math.log2(3) + 0.5) / 4)
    assert out["MRR@3"] == pytest.approx((1 + 1 / 2 + 1 / 3) / 4)


def test_mask_selects_users() -> None:
    mask = np.array([False, True, False, True])
    out = metrics.compute(TOPK, TARGETS, ks=[4], mask=mask)
    assert out["HR@4"] == pytest.approx(0.5)
    assert out["NDCG@4"] == pytest.approx(1 / math.log2(3) / 2)
    assert out["MRR@4"] == pytest.approx(0.25)


def test_empty_mask_gives_nan() -> None:
    out = metrics.compute(TOPK, TARGETS, ks=[2], mask=np.zeros(4, dtype=bool))
    assert all(math.isnan(v) for v in out.values())


def test_bad_inputs_raise_clear_errors() -> None:
    with pytest.raises(ValueError, match="k = 5"):
        metrics.compute(TOPK, TARGETS, ks=[5])
    with pytest.raises(ValueError, match="positive"):
        metrics.compute(TOPK, TARGETS, ks=[0])
    with pytest.raises(ValueError, match="targets must have shape"):
        metrics.compute(TOPK, TARGETS[:2], ks=[1])
    with pytest.raises(ValueError, match="mask must have shape"):
        metrics.compute(TOPK, TARGETS, ks=[1], mask=np.ones(3, dtype=bool))
