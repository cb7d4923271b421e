"""The training loop, datasets and checkpoints on a tiny learnable toy pattern (CPU, a few seconds)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from pipeline.data.dataset import NextItemDataset, collate, eval_inputs, left_pad
from pipeline.data.splits import UserSplit
from pipeline.models.sasrec import SASRec, SASRecConfig
from pipeline.serving.inference import item_table, user_queries
from pipeline.training.checkpoint import load_checkpoint
from pipeline.training.fit import fit, lr_factor, validate, write_summary
from stages.train import app
from tests.helpers.training import (
    MAX_LEN,
    NUM_ITEMS,
    RecordingLive,
    catalog,
    cycle_split,
    train_cfg,
    write_stage_project,
)
from tests.helpers.training import tiny_sasrec as model

pytestmark = pytest.mark.usefixtures("restore_torch_threads")


def test_left_pad_keeps_the_most_recent_items() -> None:
    out = left_pad([np.array([1, 2, 3, 4, 5]), np.array([7]), np.array([], dtype=np.int64)], 3)
    assert out.dtype == np.int64
    assert out.tolist() == [[3, 4, 5], [0, 0, 7], [0, 0, 0]]


def test_eval_inputs_use_the_stage_history() -> None:
    split = UserSplit(np.arange(1), [np.array([1, 2, 3])], np.array([4]), np.array([5]))
    assert eval_inputs(split, "valid", 5).tolist() == [[0, 0, 1, 2, 3]]
    assert eval_inputs(split, "test", 3).tolist() == [[2, 3, 4]]


def test_dataset_pairs_every_position_with_the_next_item() -> None:
    split = UserSplit(
        np.arange(3),
        [np.array([1, 2, 3, 4]), np.array([9]), np.array([5, 6])],
        np.array([5, 8, 7]),
        np.array([6, 7, 8]),
    )
    data = NextItemDataset(split, max_len=4)
    assert len(data) == 2 and data.skipped_users == 1  # the user with one training item adds nothing
    assert data[0]["input_ids"].tolist() == [0, 1, 2, 3] and data[0]["target_ids"].tolist() == [0, 2, 3, 4]
    batch = collate([data[1]])  # only [5] -> [6]: the all-padding leading columns are trimmed away
    assert batch["input_ids"].tolist() == [[5]] and batch["target_ids"].tolist() == [[6]]
    truncated = NextItemDataset(split, max_len=2)
    assert truncated[0]["input_ids"].tolist() == [2, 3] and truncated[0]["target_ids"].tolist() == [3, 4]


def test_training_lowers_the_loss_and_beats_random() -> None:
    split = cycle_split()
    live = RecordingLive()
    untrained = model()
    before = validate(untrained, eval_inputs(split, "valid", MAX_LEN), split, 64, torch.device("cpu"))
    result = fit(untrained, split, train_cfg(epochs=6), MAX_LEN, None, live=live)
    losses = [row["train/loss"] for row in result.history]
    assert losses[-1] < 0.5 * losses[0]
    # random ranking of the ~20 unseen items puts the target in the top 10 about half the time (NDCG@10 ~ 0.2)
    assert before["NDCG@10"] < 0.4 < 0.9 < result.best_valid["NDCG@10"]
    assert result.best_valid["HR@10"] >= result.best_valid["NDCG@10"] >= result.best_valid["MRR@10"]
    assert live.steps[-1] == {} and len(live.steps) == 7  # one step per epoch
    assert {"train/loss", "train/ce", "valid/NDCG@10", "epoch_seconds", "sequences_per_second"} <= set(live.steps[0])


def test_early_stopping_after_patience_bad_epochs() -> None:
    result = fit(model(), cycle_split(), train_cfg(epochs=10, patience=2, lr=0.0), MAX_LEN, None)
    assert result.best_epoch == 1  # lr 0: the metric never improves after the first epoch
    assert result.epochs_run == 3 and result.stopped_early


def test_bad_train_config_is_an_error_naming_the_key() -> None:
    with pytest.raises(ValueError, match="train.patience"):
        fit(model(), cycle_split(), train_cfg(patience=0), MAX_LEN, None)


def test_lr_schedule_shapes() -> None:
    # warm-up: a linear ramp to train.lr; cosine: half a cosine from train.lr to 0 at the last step
    assert [lr_factor(s, 10, 2, "constant") for s in (0, 1, 2, 9)] == [0.5, 1.0, 1.0, 1.0]
    cosine = [lr_factor(s, 10, 2, "cosine") for s in range(10)]
    assert cosine[:3] == [0.5, 1.0, 1.0]
    assert all(a > b for a, b in zip(cosine[2:], cosine[3:], strict=False))
    assert lr_factor(6, 10, 2, "cosine") == pytest.approx(0.5) and lr_factor(10, 10, 2, "cosine") == 0.0


def test_cosine_schedule_decays_the_lr_over_train_epochs() -> None:
    split = cycle_split()
    cosine = fit(model(), split, train_cfg(epochs=4, lr=0.01, lr_schedule="cosine", warmup_epochs=1), MAX_LEN, None)
    lrs = [row["lr"] for row in cosine.history]  # the lr after each epoch's last step
    assert lrs[0] == pytest.approx(0.01) and lrs[-1] == pytest.approx(0.0, abs=1e-12)
    assert lrs[0] > lrs[1] > lrs[2] > lrs[3]
    constant = fit(model(), split, train_cfg(epochs=2, lr=0.01), MAX_LEN, None)
    assert [row["lr"] for row in constant.history] == [0.01, 0.01]
    assert constant.history[0]["train/loss"] != cosine.history[0]["train/loss"]  # the warm-up changed training


def test_warmup_must_leave_epochs_to_train() -> None:
    with pytest.raises(ValueError, match=r"train.warmup_epochs = 3 must be in \[0, train.epochs - 1 = 2\]"):
        fit(model(), cycle_split(), train_cfg(epochs=3, warmup_epochs=3), MAX_LEN, None)
    with pytest.raises(ValueError, match="train.lr_schedule = 'step' must be one of: constant, cosine"):
        fit(model(), cycle_split(), train_cfg(lr_schedule="step"), MAX_LEN, None)


def test_pretraining_keeps_a_constant_lr_whatever_train_lr_schedule_says() -> None:
    from pipeline.training.pretrain import PretrainConfig, pretrain_train_config

    pretrain_cfg = PretrainConfig(
        enabled=True, epochs=4, batch_size=8, lr=0.001, weight_decay=0.0, patience=2, grad_clip=None
    )
    cfg = pretrain_train_config(pretrain_cfg, train_cfg(lr_schedule="cosine", warmup_epochs=1))
    assert (cfg.lr_schedule, cfg.warmup_epochs, cfg.epochs, cfg.lr) == ("constant", 0, 4, 0.001)


def test_same_seed_same_metrics() -> None:
    first = fit(model(seed=1), cycle_split(), train_cfg(epochs=2, seed=1), MAX_LEN, None)
    second = fit(model(seed=1), cycle_split(), train_cfg(epochs=2, seed=1), MAX_LEN, None)
    strip = [{k: v for k, v in row.items() if "second" not in k} for row in first.history]
    assert strip == [{k: v for k, v in row.items() if "second" not in k} for row in second.history]


def test_checkpoint_round_trip_reproduces_user_vectors(tmp_path: Path) -> None:
    split = cycle_split()
    trained = model()
    cfg = train_cfg(epochs=2)
    result = fit(trained, split, cfg, MAX_LEN, tmp_path)
    inputs = eval_inputs(split, "test", MAX_LEN)  # (U, L)
    expected = user_queries(trained, inputs, 64, "cpu")  # (U, D)

    loaded, checkpoint = load_checkpoint(tmp_path / "model.pt", dataclasses.replace(catalog(), max_seq_len=99))
    assert checkpoint["model_name"] == "sasrec" and checkpoint["epoch"] == result.best_epoch
    assert checkpoint["model_config"] == dataclasses.asdict(trained.config)
    assert checkpoint["train_config"] == dataclasses.asdict(cfg)
    assert checkpoint["num_items"] == NUM_ITEMS and checkpoint["max_seq_len"] == MAX_LEN
    assert checkpoint["valid_metrics"] == result.best_valid
    np.testing.assert_array_equal(user_queries(loaded, inputs, 64, "cpu"), expected)
    np.testing.assert_array_equal(item_table(loaded), item_table(trained))
    assert expected.dtype == np.float32 and expected.shape == (len(split), 16)
    assert not list(tmp_path.glob(".model.pt.*"))  # the atomic write left no temp file

    with pytest.raises(ValueError, match="dvc repro train"):
        load_checkpoint(tmp_path / "model.pt", dataclasses.replace(catalog(), num_items=NUM_ITEMS + 1))


def test_phase_and_epoch_hooks_and_phase_prefixed_metrics() -> None:
    class Hooked(SASRec):
        def __init__(self) -> None:
            super().__init__(SASRecConfig(16, 1, 2, 0.0), catalog())
            self.calls: list[Any] = []

        def set_phase(self, phase: str) -> None:
            self.calls.append(phase)

        def on_epoch_start(self, epoch: int) -> None:
            self.calls.append(epoch)

    hooked = Hooked()
    live = RecordingLive()
    fit(hooked, cycle_split(), train_cfg(epochs=2), MAX_LEN, None, live=live, phase="pretrain")
    assert hooked.calls == ["pretrain", 1, 2]
    assert "pretrain/valid/NDCG@10" in live.steps[0] and "pretrain/train/loss" in live.steps[0]


def test_summary_is_plain_json(tmp_path: Path) -> None:
    result = fit(model(), cycle_split(), train_cfg(epochs=1), MAX_LEN, None)
    write_summary(tmp_path / "train_summary.json", result, peak_rss_mb=1.0)
    summary = json.loads((tmp_path / "train_summary.json").read_text())
    assert summary["best_epoch"] == 1 and summary["epochs_run"] == 1 and summary["peak_rss_mb"] == 1.0
    assert set(summary["best_valid"]) == {"HR@10", "NDCG@10", "MRR@10"}


def test_train_stage_writes_checkpoint_summary_and_dvclive(tmp_path: Path) -> None:
    args = write_stage_project(tmp_path)
    out = tmp_path / "models"
    result = CliRunner().invoke(app, [*args, "--out", str(out)])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["model_name"] == "sasrec" and summary["epochs_run"] == 2 and summary["peak_rss_mb"] > 0
    checkpoint = torch.load(out / "model.pt", weights_only=True)
    assert checkpoint["max_seq_len"] == MAX_LEN and checkpoint["model_config"]["hidden_dim"] == 16
    assert json.loads((out / "dvclive" / "metrics.json").read_text())["step"] == 1  # steps 0 and 1 logged
    assert (out / "dvclive" / "plots" / "metrics" / "valid" / "NDCG@10.tsv").exists()

    params = yaml.safe_load((tmp_path / "params.yaml").read_text())
    params["train"]["device"] = "tpu"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    bad = CliRunner().invoke(app, [*args, "--out", str(out)])
    assert bad.exit_code == 1 and isinstance(bad.exception, SystemExit)  # a clean exit, not an uncaught exception
    assert "train.device" in bad.output and "tpu" in bad.output  # one error line naming the param
