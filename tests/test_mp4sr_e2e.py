"""End to end: `dvc repro` with model.name=mp4sr (prepare -> embed -> pretrain -> train -> evaluate), its caching,
the "without pre-training" ablation and the cold-start setting, on the tiny GroupLens-format data set."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from tests.helpers.dvc_project import make_project, run

pytestmark = pytest.mark.slow

MP4SR = {
    "name": "mp4sr",
    "num_experts": 2,
    "adaptor_dropout": 0.1,
    "temperature": 0.07,
    "cm_weight": 0.01,
    "mixup_max_prob": 0.5,
    "item_drop_max": 0.2,
    "finetune_id_embeddings": True,
}
PRETRAIN = {
    "enabled": True,
    "epochs": 2,
    "batch_size": 8,
    "lr": 0.001,
    "weight_decay": 0.0,
    "patience": 2,
    "grad_clip": 1.0,
}


def _set_params(project: Path, **sections: dict) -> None:
    path = project / "params.yaml"
    params = yaml.safe_load(path.read_text())
    for name, values in sections.items():
        params.setdefault(name, {}).update(values)
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def _stages_run(out: str) -> set[str]:
    return {s for s in ("prepare", "embed", "pretrain", "train", "evaluate") if f"Running stage '{s}'" in out}


def test_mp4sr_repro_pretrains_fine_tunes_and_reruns_only_what_changed(tmp_path: Path) -> None:
    project = make_project(tmp_path, model=MP4SR)
    _set_params(project, pretrain=PRETRAIN)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "mp4sr"], project)

    out = run(["dvc", "repro"], project)
    assert _stages_run(out) == {"prepare", "embed", "pretrain", "train", "evaluate"}
    checkpoint = torch.load(project / "models/pretrain/pretrain.pt", weights_only=True)
    assert checkpoint["enabled"] and checkpoint["model_name"] == "mp4sr"
    assert "fine-tuning from models/pretrain/pretrain.pt" in out  # train loaded the pre-trained weights
    curves = project / "models/pretrain/dvclive/plots/metrics/pretrain/train"
    assert {p.stem for p in curves.glob("*.tsv")} >= {"loss", "ni_text", "ni_image", "cm"}  # per-epoch components
    assert (project / "models/dvclive/plots/metrics/train/ce.tsv").exists()
    metrics = json.loads((project / "reports/metrics.json").read_text())
    for stage in ("valid", "test"):
        assert 0.0 <= metrics["mp4sr"][stage]["NDCG@10"] <= 1.0
    assert json.loads((project / "models/pretrain/pretrain_summary.json").read_text())["epochs_run"] >= 1

    # A fine-tuning-only param reruns train + evaluate, never pre-training.
    out = run(["dvc", "exp", "run", "-S", "model.finetune_id_embeddings=false"], project)
    assert _stages_run(out) == {"train", "evaluate"}
    # A pre-training param reruns pretrain and what follows.
    out = run(["dvc", "exp", "run", "-S", "pretrain.lr=0.002"], project)
    assert _stages_run(out) == {"pretrain", "train", "evaluate"}
    # The ablation without pre-training: a marker checkpoint, fine-tuning from scratch.
    out = run(["dvc", "exp", "run", "-S", "pretrain.enabled=false"], project)
    assert _stages_run(out) == {"pretrain", "train", "evaluate"} and "training from scratch" in out


def test_cold_start_setting_reports_cold_start_metrics_for_sasrec(tmp_path: Path) -> None:
    project = make_project(tmp_path, model={"name": "sasrec"})
    _set_params(project, data={"cold_start_fraction": 0.2}, pretrain={**PRETRAIN, "enabled": False})
    out = run(["dvc", "repro"], project)
    assert "Running stage 'pretrain'" in out  # a marker for SASRec, so `train` always has its dependency
    assert not torch.load(project / "models/pretrain/pretrain.pt", weights_only=True)["enabled"]
    stats = json.loads((project / "data/prepared/stats.json").read_text())
    assert stats["cold_start"]["users_with_cold_target"] > 0
    metrics = json.loads((project / "reports/metrics.json").read_text())
    assert {"valid", "test", "test_cold_start"} <= set(metrics["sasrec"])
    assert {"valid", "test", "test_cold_start"} <= set(metrics["baseline"])
    assert "test_cold_start" in (project / "reports/report.md").read_text()
