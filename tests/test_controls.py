"""Controls (pipeline/evaluation/fusion.py, pipeline/evaluation/controls.py, pipeline/evaluation/claims.py): weights
chosen on valid only, identical members, late fusion at weight 0, and the report's claim wording."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.catalog import ItemCatalog
from pipeline.data.splits import UserSplit
from pipeline.evaluation.claims import controls_report, multimodal_claim
from pipeline.evaluation.controls import (
    ID_ENSEMBLE,
    LATE_FUSION,
    Member,
    RankingOptions,
    check_members,
    evaluation_controls,
    id_ensemble,
    knn_scorer,
    late_fusion,
    model_scorer,
)
from pipeline.evaluation.fusion import Scorer, fuse, select_weights
from pipeline.evaluation.ranking import evaluate_model, evaluate_vectors
from pipeline.models.sasrec import SASRec, SASRecConfig

NUM_ITEMS = 12


def one_hot_scorer(name: str, valid_scores: list[list[float]]) -> Scorer:
    """Items are one-hot rows, so each user's query row is its score per item (column 0 = padding)."""
    items = np.eye(NUM_ITEMS + 1, dtype=np.float32)  # (N+1, N+1)
    items[0] = 0.0
    queries = np.zeros((len(valid_scores), NUM_ITEMS + 1), dtype=np.float32)  # (U, N+1)
    for u, row in enumerate(valid_scores):
        queries[u, 1 : 1 + len(row)] = row
    return Scorer(name, items, {"valid": queries, "test": queries})


def hand_split(test_targets: list[int]) -> UserSplit:
    return UserSplit(
        user_idx=np.arange(2),
        train=[np.array([7, 8]), np.array([9, 10])],
        valid_target=np.array([1, 3]),
        test_target=np.array(test_targets),
    )


def test_fusion_picks_the_best_valid_weight_by_hand_and_never_reads_test_targets() -> None:
    # user 0 (target 1): A prefers 1 over 2 by 1, B prefers 2 by 1 -> target first iff w_a > w_b
    # user 1 (target 3): A prefers 4 by 1, B prefers 3 by 2        -> target first iff 2 w_b > w_a
    # both first only for w_a in (1/2, 2/3): grid points 0.65, 0.6, 0.55; the first maximum (from w_a = 1) is 0.65
    a = one_hot_scorer("a", [[1, 0, 0, 0], [0, 0, 0, 1]])
    b = one_hot_scorer("b", [[0, 1, 0, 0], [0, 0, 2, 0]])
    chosen = []
    for test_targets in ([5, 6], [1, 3], [11, 12]):  # test targets differ: nothing may change
        split = hand_split(test_targets)
        weights, ndcg = select_weights([a, b], split.target("valid"), split.history("valid"), batch_size=1)
        chosen.append(weights.tolist())
        assert ndcg == pytest.approx(1.0)
    assert chosen[0] == pytest.approx([0.65, 0.35]) and chosen[0] == chosen[1] == chosen[2]
    alone, _ = select_weights([a, b], np.array([1, 1]), hand_split([5, 6]).history("valid"))
    assert alone.tolist() == pytest.approx([1.0, 0.0])  # both targets item 1: A alone ranks them first
    fused = fuse("ab", [a, b], chosen[0])
    result = evaluate_vectors("ab", hand_split([5, 6]), fused.items, lambda s: fused.queries[s], [1], ["valid"])
    assert result.metrics()["valid"]["HR@1"] == 1.0


def tiny_split() -> UserSplit:
    rng = np.random.default_rng(0)
    seqs = [rng.choice(np.arange(1, NUM_ITEMS + 1), size=rng.integers(4, 9), replace=False) for _ in range(15)]
    return UserSplit(
        user_idx=np.arange(15),
        train=[s[:-2] for s in seqs],
        valid_target=np.array([s[-2] for s in seqs]),
        test_target=np.array([s[-1] for s in seqs]),
    )


def sasrec(seed: int) -> SASRec:
    torch.manual_seed(seed)
    catalog = ItemCatalog(num_items=NUM_ITEMS, max_seq_len=8, popularity=torch.zeros(NUM_ITEMS + 1))
    return SASRec(SASRecConfig(hidden_dim=8, num_layers=1, num_heads=1, dropout=0.0), catalog).eval()


def test_an_ensemble_of_identical_members_ranks_like_one_member() -> None:
    split, model, options = tiny_split(), sasrec(0), RankingOptions(ks=[5])
    single = evaluate_model(model, split, ks=[5], max_seq_len=8)
    control = id_ensemble([Member("a", model, 8), Member("b", model, 8)], split, options)
    assert control.result.name == ID_ENSEMBLE and sum(control.info["weights"]) == pytest.approx(1.0)
    for stage in ("valid", "test"):
        np.testing.assert_array_equal(control.result.stages[stage].items, single.stages[stage].items)
    assert control.result.metrics() == single.metrics()
    with pytest.raises(ValueError, match="at least 2 members"):
        id_ensemble([Member("a", model, 8)], split, options)


def features(seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    text = rng.normal(size=(NUM_ITEMS + 1, 6)).astype(np.float32)
    text[0] = 0.0
    return {"text": text}


def test_late_fusion_at_weight_zero_is_the_baseline_and_weights_come_from_valid() -> None:
    split, model, options = tiny_split(), sasrec(0), RankingOptions(ks=[5])
    baseline = evaluate_model(model, split, ks=[5], max_seq_len=8)
    base, knn = model_scorer(Member("baseline", model, 8), split, options), knn_scorer(split, features(), 3)
    fused = fuse("f", [base, knn], [1.0, 0.0])
    result = evaluate_vectors("f", split, fused.items, lambda s: fused.queries[s], [5])
    for stage in ("valid", "test"):
        np.testing.assert_array_equal(result.stages[stage].items, baseline.stages[stage].items)
    control = late_fusion(Member("baseline", model, 8), features(), 3, split, options)
    assert control is not None and control.result.name == LATE_FUSION
    assert control.info["members"] == ["baseline", "content_knn_text"] and len(control.info["score_scales"]) == 2
    assert late_fusion(Member("baseline", model, 8), {}, 3, split, options) is None
    rows = evaluation_controls(Member("baseline", model, 8), [Member("s1", sasrec(1), 8)], {}, 3, split, options)
    assert [r.result.name for r in rows] == [ID_ENSEMBLE]  # no features: no late fusion row


def test_ensemble_members_must_share_the_baseline_recipe_at_other_seeds() -> None:
    base = {"model_name": "sasrec", "model_config": {"hidden_dim": 8}, "max_seq_len": 8, "train_config": {"seed": 1}}
    check_members(base, [base | {"train_config": {"seed": 2}}], ["m2.pt"])
    with pytest.raises(ValueError, match="m1.pt: train.seed 1 is also the baseline's"):
        check_members(base, [base], ["m1.pt"])
    with pytest.raises(ValueError, match="m.pt: a odmt checkpoint"):
        check_members(base, [base | {"model_name": "odmt"}], ["m.pt"])
    with pytest.raises(ValueError, match="m.pt: model config"):
        check_members(base, [base | {"model_config": {"hidden_dim": 16}, "train_config": {"seed": 3}}], ["m.pt"])


def diff(low: float, high: float) -> dict[str, float]:
    return {"diff": (low + high) / 2, "ci_low": low, "ci_high": high, "p_value": 0.01, "relative": 0.1}


def test_multimodal_value_is_claimed_only_with_a_ci_above_the_ensemble() -> None:
    def claim(low: float, high: float, members: int = 3) -> str:
        comparisons = {f"odmt - {ID_ENSEMBLE}": {"test": {"NDCG@10": diff(low, high)}}}
        return multimodal_claim("odmt", True, comparisons, "NDCG@10", members, 3)

    assert claim(0.001, 0.004).startswith("**Multimodal value claimed**")
    assert claim(-0.001, 0.004).startswith("**No multimodal value claimed**") and "does not lie above 0" in claim(
        -0.001, 0.004
    )
    assert "a fair (b) has 3" in claim(0.001, 0.004, members=2)
    assert multimodal_claim("odmt", True, {}, "NDCG@10", 0, 3).startswith("**No multimodal value claimed**: no ID")
    assert "makes no multimodal claim" in multimodal_claim("sasrec", False, {}, "NDCG@10", 0, 1)


def test_controls_report_pairs_the_model_with_each_control() -> None:
    split, options = tiny_split(), RankingOptions(ks=[5, 10])
    model = evaluate_model(sasrec(2), split, ks=[5, 10], max_seq_len=8, name="sasrec_fusion")
    baseline = evaluate_model(sasrec(0), split, ks=[5, 10], max_seq_len=8, name="baseline")
    controls = [id_ensemble([Member("baseline", sasrec(0), 8), Member("seed1", sasrec(1), 8)], split, options)]
    record, markdown = controls_report(model, baseline, controls, reads_content=True, heads=1, resamples=50, seed=0)
    assert set(record["paired"]) == {f"sasrec_fusion - {ID_ENSEMBLE}", f"{ID_ENSEMBLE} - baseline"}
    d = record["paired"][f"sasrec_fusion - {ID_ENSEMBLE}"]["test"]["NDCG@10"]
    ensemble = controls[0].result.metrics()["test"]["NDCG@10"]
    assert d["diff"] == pytest.approx(model.metrics()["test"]["NDCG@10"] - ensemble)
    assert "## Controls" in markdown and record["claim"] in markdown and "a fair (b) has 1" in record["claim"]
