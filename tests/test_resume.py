"""Resumable training: a run cut off after some epochs continues from its last finished epoch and ends exactly where
an uninterrupted run ends; a state that belongs to another run is never taken up."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from pipeline.data.splits import UserSplit
from pipeline.training import fit as fit_module
from pipeline.training.fit import TrainResult, fit
from pipeline.training.resume import progress, progress_path, state_path
from stages.train import app
from tests.helpers.training import MAX_LEN, RecordingLive, cycle_split, train_cfg, write_stage_project
from tests.helpers.training import tiny_sasrec as model

pytestmark = pytest.mark.usefixtures("restore_torch_threads")


class Interrupted(Exception):
    """Stands in for the process being killed mid-epoch."""


def cut_off_during_epoch(monkeypatch: pytest.MonkeyPatch, epoch: int) -> None:
    """Make the training loop die while it trains ``epoch`` (epochs before it have finished and been saved)."""
    real = fit_module._train_epoch
    calls = {"n": 0}

    def dying(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202 - same signature as the real one
        calls["n"] += 1
        if calls["n"] == epoch:
            raise Interrupted(f"killed during epoch {epoch}")
        return real(*args, **kwargs)

    monkeypatch.setattr(fit_module, "_train_epoch", dying)


def without_timings(result: TrainResult) -> list[dict[str, float]]:
    return [{k: v for k, v in row.items() if "second" not in k} for row in result.history]


def weights(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in net.state_dict().items()}


def test_an_interrupted_run_resumes_and_ends_like_an_uninterrupted_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # dropout, a cosine lr schedule and shuffling: every random generator and the scheduler must come back
    cfg = train_cfg(epochs=5, patience=5, lr_schedule="cosine", warmup_epochs=1)
    split = cycle_split()
    straight_model = model(seed=3)
    straight = fit(straight_model, split, cfg, MAX_LEN, None)

    path = tmp_path / ".resume" / "train.pt"
    with monkeypatch.context() as patch:
        cut_off_during_epoch(patch, 4)
        with pytest.raises(Interrupted):
            fit(model(seed=3), split, cfg, MAX_LEN, None, resume_path=path)
    assert path.exists()  # the state after epoch 3
    saved = progress(path)
    assert saved is not None and (saved["epoch"], saved["best_epoch"]) == (3, straight.history.index(max(
        straight.history[:3], key=lambda row: row["valid/NDCG@10"])) + 1)  # fmt: skip

    live = RecordingLive()
    resumed_model = model(seed=3)
    resumed = fit(resumed_model, split, cfg, MAX_LEN, None, live=live, resume_path=path)
    assert without_timings(resumed) == without_timings(straight)  # epochs 1-3 carried over, 4-5 trained again
    assert resumed.step_losses == straight.step_losses
    assert (resumed.best_epoch, resumed.best_valid, resumed.epochs_run) == (
        straight.best_epoch,
        straight.best_valid,
        straight.epochs_run,
    )
    for name, tensor in weights(straight_model).items():
        assert torch.equal(tensor, resumed_model.state_dict()[name]), name
    assert [step["train/loss"] for step in live.steps if step] == [row["train/loss"] for row in straight.history]
    assert not path.exists() and not progress_path(path).exists() and not path.parent.exists()  # nothing left


def test_the_state_of_another_run_is_set_aside_not_taken_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    split = cycle_split()
    path = tmp_path / "train.pt"
    with monkeypatch.context() as patch:
        cut_off_during_epoch(patch, 2)
        with pytest.raises(Interrupted):
            fit(model(seed=3), split, train_cfg(epochs=3, lr=0.01), MAX_LEN, None, resume_path=path)
    assert path.exists()

    changed = train_cfg(epochs=3, lr=0.005)  # another learning rate: another run
    fresh = fit(model(seed=3), split, changed, MAX_LEN, None)
    after_stale = fit(model(seed=3), split, changed, MAX_LEN, None, resume_path=path)
    assert without_timings(after_stale) == without_timings(fresh)  # trained from epoch 1
    assert path.with_suffix(".stale").exists() and not path.exists()


def test_other_data_or_initial_weights_make_another_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    split = cycle_split()
    path = tmp_path / "train.pt"
    cfg = train_cfg(epochs=3)
    with monkeypatch.context() as patch:
        cut_off_during_epoch(patch, 2)
        with pytest.raises(Interrupted):
            fit(model(seed=3), split, cfg, MAX_LEN, None, resume_path=path)
    other_data = UserSplit(split.user_idx, split.train[::-1], split.valid_target[::-1], split.test_target[::-1])
    after_other_data = fit(model(seed=3), other_data, cfg, MAX_LEN, None, resume_path=path)
    assert path.with_suffix(".stale").exists()
    assert without_timings(after_other_data) == without_timings(fit(model(seed=3), other_data, cfg, MAX_LEN, None))

    with monkeypatch.context() as patch:
        cut_off_during_epoch(patch, 2)
        with pytest.raises(Interrupted):
            fit(model(seed=3), split, cfg, MAX_LEN, None, resume_path=path)
    other_init = fit(model(seed=4), split, cfg, MAX_LEN, None, resume_path=path)
    assert other_init.history[0]["train/loss"] != pytest.approx(0.0)  # it trained epoch 1 itself
    assert len(other_init.history) == 3 and not path.exists()
    fresh = fit(model(seed=4), split, cfg, MAX_LEN, None)
    assert without_timings(other_init) == without_timings(fresh)  # from epoch 1, as if no state had been there


def test_other_item_features_make_another_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # ODMT keeps its item features out of the state dict: a resume after re-embedding must still start over
    from tests.helpers.odmt import MAX_LEN as ODMT_LEN
    from tests.helpers.odmt import make_catalog, make_model, tiny_split

    path, cfg = tmp_path / "train.pt", train_cfg(epochs=2, batch_size=16)
    with monkeypatch.context() as patch:
        cut_off_during_epoch(patch, 2)
        with pytest.raises(Interrupted):
            fit(make_model(make_catalog(seed=0), id_init="random"), tiny_split(), cfg, ODMT_LEN, None, resume_path=path)
    reembedded = make_model(make_catalog(seed=1), id_init="random")
    assert not any("pooled" in k for k in reembedded.state_dict())  # the features are not in the weights
    result = fit(reembedded, tiny_split(), cfg, ODMT_LEN, None, resume_path=path)
    assert path.with_suffix(".stale").exists() and len(result.history) == 2


def test_a_torn_state_file_starts_over_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "train.pt"
    path.write_bytes(b"not a torch file")
    result = fit(model(seed=3), cycle_split(), train_cfg(epochs=2), MAX_LEN, None, resume_path=path)
    assert result.epochs_run == 2 and "unreadable resume state" in caplog.text
    assert path.with_suffix(".stale").exists()


def test_the_train_stage_resumes_after_being_killed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    args = write_stage_project(tmp_path)
    params = yaml.safe_load((tmp_path / "params.yaml").read_text())
    params["train"]["epochs"], params["train"]["patience"] = 3, 3
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    straight_out, out = tmp_path / "straight", tmp_path / "models"
    assert CliRunner().invoke(app, [*args, "--out", str(straight_out)]).exit_code == 0

    with monkeypatch.context() as patch:
        cut_off_during_epoch(patch, 3)
        killed = CliRunner().invoke(app, [*args, "--out", str(out)])
    assert killed.exit_code != 0 and not (out / "model.pt").exists()  # nothing published
    assert state_path(out, "train").exists()

    resumed = CliRunner().invoke(app, [*args, "--out", str(out)])
    assert resumed.exit_code == 0, resumed.output
    summaries = [json.loads((d / "train_summary.json").read_text()) for d in (straight_out, out)]
    assert summaries[1]["best_valid"] == summaries[0]["best_valid"]
    assert summaries[1]["epochs_run"] == 3
    assert (summaries[0]["resumed_after_epoch"], summaries[1]["resumed_after_epoch"]) == (0, 2)  # said in the summary
    assert json.loads((out / "dvclive" / "metrics.json").read_text())["step"] == 2  # all three epochs logged
    a = torch.load(straight_out / "model.pt", weights_only=True)["state_dict"]
    b = torch.load(out / "model.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not (out / ".resume").exists()
