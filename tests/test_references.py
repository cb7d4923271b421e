"""The cold-start reference rows (pipeline/evaluation/references.py) against hand computations on a four-item catalog,
and the ablation runner writing them as rows of their own."""

from __future__ import annotations

import numpy as np
import pytest

from bench.ablations import reference_results
from pipeline.data.cold_start import ColdItems
from pipeline.data.splits import UserSplit
from pipeline.evaluation.references import cold_start_references, content_knn, random_among_cold_metrics

# Items 1..4 (row 0 = padding). One user: trains on 1, valid target 2, test target 4 (test history [1, 2]).
TEXT = np.array([[0, 0], [1, 0], [0, 1], [1, 1], [2, 0]], dtype=np.float32)
IMAGE = np.array([[0, 0], [1, 0], [1, 0], [0, 1], [1, 0]], dtype=np.float32)
SPLIT = UserSplit(user_idx=np.arange(1), train=[np.array([1])], valid_target=np.array([2]), test_target=np.array([4]))
COLD = ColdItems(valid=np.array([2]), test=np.array([3, 4]))
LOG3 = np.log2(3.0)


def test_text_knn_by_hand() -> None:
    m = content_knn(SPLIT, {"text": TEXT}, ["text"], last=2, ks=[1, 2], cold=COLD).metrics()
    # test query = norm(mean(norm t1, norm t2)) = (0.707, 0.707): item 3 scores 1.0, item 4 0.707 -> target 4 at 2
    assert m["test"] == pytest.approx({"HR@1": 0, "NDCG@1": 0, "MRR@1": 0, "HR@2": 1, "NDCG@2": 1 / LOG3, "MRR@2": 0.5})
    assert m["test_cold_start"] == m["test"]  # the one user's test target (4) is cold
    assert m["test_cold_among_cold"]["MRR@2"] == pytest.approx(0.5)  # among {3, 4}: 3 first again
    # valid query = t1 = (1, 0): items 4 (1.0), 3 (0.707), 2 (0.0) -> valid target 2 at rank 3
    assert m["valid"]["HR@2"] == 0.0
    assert m["valid_cold_among_cold"]["HR@1"] == 1.0  # the only cold-validation candidate


def test_last_n_history_items_only() -> None:
    m = content_knn(SPLIT, {"text": TEXT}, ["text"], last=1, ks=[1], cold=COLD).metrics()
    # test query = t2 = (0, 1): item 3 scores 0.707, item 4 0.0 -> target 4 at rank 2
    assert m["test"]["HR@1"] == 0.0


def test_text_and_image_add_their_cosines() -> None:
    features = {"text": TEXT, "image": IMAGE}
    m = content_knn(SPLIT, features, ["text", "image"], last=2, ks=[1], cold=COLD).metrics()
    # image query = (1, 0): item 3 cos 0, item 4 cos 1 -> sums 1.0 vs 0.707 + 1.0: target 4 first
    assert m["test"]["HR@1"] == 1.0 and m["test_cold_among_cold"]["HR@1"] == 1.0


def test_random_among_cold_is_the_exact_expectation() -> None:
    got = random_among_cold_metrics(3, [2, 5])
    ranks = np.arange(1, 4)  # the target is equally likely at each of the 3 positions
    assert got["HR@2"] == pytest.approx(np.mean(ranks <= 2))
    assert got["NDCG@2"] == pytest.approx(np.mean(np.where(ranks <= 2, 1 / np.log2(ranks + 1), 0)))
    assert got["MRR@2"] == pytest.approx(np.mean(np.where(ranks <= 2, 1 / ranks, 0)))
    assert got["HR@5"] == 1.0


def test_all_reference_rows_named_and_only_where_features_exist() -> None:
    rows = cold_start_references(SPLIT, {"text": TEXT}, COLD, last=2, ks=[1])
    assert [r.name for r in rows] == ["content_knn_text", "random_among_cold"]
    assert set(rows[1].metrics()) == {"valid_cold_among_cold", "test_cold_among_cold"}
    assert rows[1].metrics()["test_cold_among_cold"]["HR@1"] == pytest.approx(0.5)


def test_ablation_runner_writes_each_reference_as_its_own_row() -> None:
    stage = {"test": {"HR@10": 0.1}}
    row = {
        "name": "sasrec_cold",
        "seeds": [42],
        "order": 4,
        "metrics": {
            "sasrec": stage,
            "baseline": stage,
            "popularity": stage,
            "content_knn_text": stage,
            "random_among_cold": stage,
        },
    }
    refs = reference_results(row)
    assert [r["name"] for r in refs] == ["popularity_cold", "content_knn_text_cold", "random_among_cold"]
    assert all(r["metrics"] == {r["model"]: stage} and r["train"] is None for r in refs)
