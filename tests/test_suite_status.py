"""`python -m bench.suite_status`: what a long suite has finished, what a rerun resumes and what is left."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

import bench.ablations
import bench.suite_spec
import bench.suite_status
from bench.suite_spec import apply_overrides, params_key
from bench.suite_status import suite_status
from pipeline.training.resume import progress_path, state_path

SPEC = {
    "budget": {"train.num_threads": 1},
    "suites": {
        "s": {
            "budget": {"train.epochs": 5},
            "sasrec": {"model.name": "sasrec", "seeds": [1, 2, 3]},
            "ensemble": {"control": "id_ensemble", "members": 3},
        }
    },
}


def test_status_says_finished_interrupted_and_not_started(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runs, results = tmp_path / "runs", tmp_path / "results"
    results.mkdir()
    monkeypatch.setattr(bench.suite_spec, "RUNS", runs)
    monkeypatch.setattr(bench.ablations, "RUNS", runs)
    monkeypatch.setattr(bench.suite_status, "RUNS", runs)
    base = yaml.safe_load(Path("params.yaml").read_text())
    row = apply_overrides(apply_overrides(base, {"train.num_threads": 1, "train.epochs": 5}), {"model.name": "sasrec"})

    finished = runs / "s" / "sasrec" / "seed1"  # a finished run folder with these params: reused by the runner
    (finished / "models").mkdir(parents=True)
    (finished / "reports").mkdir()
    (finished / "params.yaml").write_text(yaml.safe_dump(apply_overrides(row, {"train.seed": 1})))
    (finished / "models" / "train_summary.json").write_text("{}")
    (finished / "reports" / "metrics.json").write_text("{}")
    state = state_path(runs / "s" / "sasrec" / "seed2" / "models", "train")  # cut off after epoch 3
    state.parent.mkdir(parents=True)
    state.write_bytes(b"state")
    progress_path(state).write_text(json.dumps({"epoch": 3, "best_epoch": 2, "best_valid_ndcg10": 0.1234}))

    lines = suite_status("s", SPEC, base, results)
    assert lines == [
        "sasrec seed 1: finished",
        "sasrec seed 2: training running or interrupted: 3 epoch(s) done, a rerun resumes there, best valid "
        "NDCG@10 0.1234 at epoch 2",
        "sasrec seed 3: not started",
        "ensemble: waits for sasrec seed(s) 2, 3",
    ]

    recorded = {"name": "sasrec", "runs": [{"params_key": params_key(apply_overrides(row, {"train.seed": s}))}
                                           for s in (2, 3)]}  # fmt: skip
    (results / "s").mkdir()
    (results / "s" / "sasrec.json").write_text(json.dumps(recorded))
    assert suite_status("s", SPEC, base, results)[1:] == [
        "sasrec seed 2: finished",
        "sasrec seed 3: finished",
        "ensemble: ready",
    ]
