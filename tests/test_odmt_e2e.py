"""End to end: `dvc repro` with model.name=odmt and per-token features on the tiny GroupLens-format data set, every
loss component in DVCLive, and `dvc exp run -S model.distill_weight=0.5` exactly as the issue writes it."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.helpers.dvc_project import BIN, make_project, run
from tests.helpers.odmt import ODMT_PARAMS

pytestmark = pytest.mark.slow

# The tiny project's model: small widths (make_project sets hidden_dim 16, num_layers 1, num_heads 1).
ODMT = {"name": "odmt", **ODMT_PARAMS, "fusion_layers": 1, "fusion_heads": 2, "distill_ramp_epochs": 2}

LOSSES = ("loss", "ce_id", "ce_text", "ce_image", "kd", "kd_text", "kd_image", "kd_id", "kd_weight")


def _commit_params(project: Path, update: dict) -> None:
    path = project / "params.yaml"
    params = yaml.safe_load(path.read_text())
    for section, values in update.items():
        params[section].update(values)
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    run(["git", "add", "params.yaml"], project)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "--allow-empty", "-qm", "odmt params"], project)


def test_dvc_repro_with_odmt_then_exp_run_distill_weight(tmp_path: Path) -> None:
    project = make_project(tmp_path, model=ODMT)  # params.yaml stores per-token features by default (ODMT)
    out = run(["dvc", "repro"], project)
    for stage in ("prepare", "embed", "train", "evaluate"):
        assert f"Running stage '{stage}'" in out

    features = project / "data/features"
    for modality in ("text", "image"):
        tokens = np.load(features / f"{modality}_tokens.npy")
        mask = np.load(features / f"{modality}_tokens_mask.npy")
        assert tokens.dtype == np.float16 and tokens.ndim == 3 and mask.shape == tokens.shape[:2]
    metrics = json.loads((project / "reports/metrics.json").read_text())
    assert "odmt" in metrics
    assert {"odmt[id]", "odmt[text]", "odmt[image]"} <= set(metrics)  # each head ranking alone, for diagnosis
    assert "odmt[image]" in (project / "reports/report.md").read_text()
    for stage in ("valid", "test"):
        assert 0.0 <= metrics["odmt"][stage]["NDCG@10"] <= 1.0
    summary = json.loads((project / "models/train_summary.json").read_text())
    assert summary["model_name"] == "odmt"

    # Every loss component is a per-epoch DVCLive series (what `dvc plots show` draws).
    plots = project / "models/dvclive/plots/metrics/train"
    for name in LOSSES:
        rows = (plots / f"{name}.tsv").read_text().strip().splitlines()
        assert len(rows) == 1 + summary["epochs_run"], name  # header + one row per epoch
    ramp = [float(r.split("\t")[-1]) for r in (plots / "kd_weight.tsv").read_text().strip().splitlines()[1:]]
    assert ramp[0] < ramp[-1] <= 1.0  # the KD weight ramps up with the epoch

    # The distillation weight, set the way users do it, reruns exactly train + evaluate, and changes ODMT's run.
    status = run(["dvc", "status"], project)
    assert "changed" not in status
    before = (project / "models/model.pt").read_bytes()
    out = run(["dvc", "exp", "run", "-S", "model.distill_weight=0.5"], project)
    stages = ("prepare", "embed", "pretrain", "baseline", "train", "evaluate")
    ran = {s for s in stages if f"Running stage '{s}'" in out}
    assert ran == {"train", "evaluate"}
    assert yaml.safe_load((project / "params.yaml").read_text())["model"]["distill_weight"] == 0.5
    assert (project / "models/model.pt").read_bytes() != before

    # A changed key the selected model does not read stops with a clear error instead of being ignored.
    failed = subprocess.run(
        ["dvc", "exp", "run", "-S", "model.cm_weight=0.5"], cwd=project, capture_output=True, text=True, env=_env()
    )
    assert failed.returncode != 0
    assert "`model.cm_weight` = 0.5 is read only by mp4sr" in failed.stdout + failed.stderr


def test_dvc_repro_with_odmt_on_a_data_set_without_images_runs_two_heads(tmp_path: Path) -> None:
    """embed.image.name: none -> ODMT trains and ranks with the ID and text heads only (no zero-filled images)."""
    project = make_project(tmp_path, model=ODMT)
    _commit_params(project, {"embed": {"store_tokens": True, "image": {**_image_params(project), "name": "none"}}})
    run(["dvc", "repro"], project)

    features = project / "data/features"
    assert not (features / "image_tokens.npy").exists()
    plots = project / "models/dvclive/plots/metrics/train"
    assert (plots / "ce_id.tsv").exists() and (plots / "ce_text.tsv").exists()
    assert not (plots / "ce_image.tsv").exists() and not (plots / "kd_image.tsv").exists()
    metrics = json.loads((project / "reports/metrics.json").read_text())
    assert 0.0 <= metrics["odmt"]["test"]["NDCG@10"] <= 1.0
    assert {"odmt[id]", "odmt[text]"} <= set(metrics) and "odmt[image]" not in metrics


def _env() -> dict[str, str]:
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}


def _image_params(project: Path) -> dict:
    return yaml.safe_load((project / "params.yaml").read_text())["embed"]["image"]
