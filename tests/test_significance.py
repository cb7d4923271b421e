"""Paired comparison (pipeline.evaluation.significance): per-user metric values, bootstrap CI and randomization
p-value."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.evaluation.metrics import metrics_from_ranks, per_user_values
from pipeline.evaluation.significance import compare_ranks, paired_difference


def test_per_user_values_average_to_the_reported_metrics() -> None:
    ranks = np.array([1, 3, 0, 10, 11, 2])
    expected = metrics_from_ranks(ranks, [10])
    for metric in ("HR@10", "NDCG@10", "MRR@10"):
        assert per_user_values(ranks, metric).mean() == pytest.approx(expected[metric])
    assert per_user_values(np.array([3]), "NDCG@10")[0] == pytest.approx(0.5)  # 1 / log2(4), by hand
    with pytest.raises(ValueError, match="NDCG@10"):
        per_user_values(ranks, "Recall10")


def test_identical_rankers_differ_by_zero_and_are_not_significant() -> None:
    values = np.random.default_rng(0).random(500)
    result = paired_difference(values, values, resamples=500, seed=1)
    assert result.diff == 0.0 and result.ci_low == 0.0 and result.ci_high == 0.0
    assert result.p_value == 1.0 and not result.significant()


def test_a_clear_gain_has_a_ci_above_zero_and_a_small_p_value() -> None:
    rng = np.random.default_rng(0)
    baseline = rng.random(2000)
    model = baseline + 0.05 + rng.normal(0, 0.05, 2000)
    result = paired_difference(model, baseline, resamples=1000, seed=3)
    assert result.ci_low < result.diff < result.ci_high
    assert 0.04 < result.ci_low and result.ci_high < 0.06
    assert result.p_value == pytest.approx(1 / 1001)  # no sign flip reaches the observed mean
    assert result.relative == pytest.approx(result.diff / baseline.mean())
    assert result.significant()


def test_pure_noise_is_usually_not_significant_and_the_ci_covers_the_truth() -> None:
    """Under the null the 95% CI covers 0 in about 95% of repetitions (seeded, so the count is exact)."""
    rng = np.random.default_rng(7)
    covered = 0
    for rep in range(40):
        a, b = rng.random(300), rng.random(300)
        covered += not paired_difference(a, b, resamples=400, seed=rep).significant()
    assert covered >= 34


def test_same_seed_same_interval_and_order_matters() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.random(100), rng.random(100)
    assert paired_difference(a, b, 300, seed=5) == paired_difference(a, b, 300, seed=5)
    flipped = paired_difference(b, a, 300, seed=5)
    assert flipped.diff == pytest.approx(-paired_difference(a, b, 300, seed=5).diff)


def test_compare_ranks_per_stage_and_metric() -> None:
    model = {"valid": np.array([1, 1, 2, 0]), "test": np.array([1, 0, 0, 0])}
    baseline = {"valid": np.array([2, 0, 2, 0]), "test": np.array([1, 0, 0, 0])}
    out = compare_ranks(model, baseline, ["HR@10", "NDCG@10"], resamples=200)
    assert set(out) == {"valid", "test"}
    assert out["valid"]["HR@10"]["diff"] == pytest.approx(0.25)
    assert out["test"]["NDCG@10"]["diff"] == 0.0
    with pytest.raises(ValueError, match="users"):
        compare_ranks({"test": np.array([1])}, {"test": np.array([1, 2])}, ["HR@10"])


def test_bad_inputs_are_errors() -> None:
    with pytest.raises(ValueError, match="shape"):
        paired_difference(np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError, match="at least one user"):
        paired_difference(np.zeros(0), np.zeros(0))
