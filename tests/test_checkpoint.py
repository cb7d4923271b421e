"""Checkpoint integrity (issue 10, "Checkpoints are trusted blindly"): every damaged, foreign or ill-fitting
``model.pt`` is refused with one line naming the file and the fix, and evaluation never imports the training loop."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from typer.testing import CliRunner

from pipeline.catalog import ItemCatalog
from pipeline.models.sasrec import SASRec, SASRecConfig
from pipeline.serving.inference import load_trained
from pipeline.training.checkpoint import (
    data_fingerprint,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
    verify_data,
    write_checkpoint,
)
from tests.helpers.projects import write_project
from tests.helpers.training import cycle_split, train_cfg, write_prepared

REPO_ROOT = Path(__file__).resolve().parents[1]
NUM_ITEMS = 12


def tiny_model(hidden_dim: int = 8, seed: int = 0) -> SASRec:
    torch.manual_seed(seed)
    catalog = ItemCatalog(num_items=NUM_ITEMS, max_seq_len=6, popularity=torch.zeros(NUM_ITEMS + 1))
    return SASRec(SASRecConfig(hidden_dim=hidden_dim, num_layers=1, num_heads=1, dropout=0.0), catalog)


def items_parquet(prepared: Path, ids: list[str]) -> Path:
    prepared.mkdir(parents=True, exist_ok=True)
    pl.DataFrame({"item_idx": np.arange(1, len(ids) + 1, dtype=np.int32), "item_id": ids}).write_parquet(
        prepared / "items.parquet"
    )
    return prepared


def saved(tmp_path: Path, name: str = "model.pt") -> tuple[Path, Path]:
    """A checkpoint of a tiny SASRec trained (nominally) on ``tmp_path/prepared``; returns (path, prepared)."""
    prepared = items_parquet(tmp_path / "prepared", [f"m{i}" for i in range(1, NUM_ITEMS + 1)])
    path = tmp_path / "models" / name
    save_checkpoint(path, tiny_model(), 6, train_cfg(), 1, {"NDCG@10": 0.1}, fingerprint=data_fingerprint(prepared))
    return path, prepared


def assert_one_line(error: BaseException, *needles: str) -> None:
    message = str(error)
    assert "\n" not in message and "Traceback" not in message
    for needle in needles:
        assert needle in message, message


def test_round_trip_verifies_checksum_and_fingerprint(tmp_path: Path) -> None:
    path, prepared = saved(tmp_path)
    checkpoint = read_checkpoint(path)
    assert checkpoint["format_version"] == 2 and len(checkpoint["checksum"]) == 64
    assert checkpoint["data_fingerprint"] == data_fingerprint(prepared)
    assert checkpoint["data_fingerprint"]["num_items"] == NUM_ITEMS
    verify_data(path, checkpoint, prepared)  # no error
    catalog = ItemCatalog(num_items=NUM_ITEMS, max_seq_len=6, popularity=torch.zeros(NUM_ITEMS + 1))
    model, _ = load_checkpoint(path, catalog)
    torch.testing.assert_close(model.item_vectors(), tiny_model().item_vectors())


@pytest.mark.parametrize("seed", range(6))
def test_flipped_bytes_are_refused_never_evaluated(tmp_path: Path, seed: int) -> None:
    """Issue 10: 2,000 flipped bytes used to evaluate with exit 0 and different metrics."""
    path, _ = saved(tmp_path)
    data = bytearray(path.read_bytes())
    rng = np.random.default_rng(seed)
    for pos in rng.choice(len(data), size=min(2000, len(data) // 4), replace=False):
        data[pos] ^= 1 << int(rng.integers(8))
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError) as info:
        read_checkpoint(path)
    assert_one_line(info.value, str(path), "dvc repro train")


def test_one_flipped_weight_bit_fails_the_checksum(tmp_path: Path) -> None:
    """A flip inside tensor data leaves a loadable zip: only the content checksum can notice it."""
    path, _ = saved(tmp_path)
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["state_dict"]["item_emb.weight"][3, 2] += 1e-3
    torch.save(checkpoint, path)  # same checksum entry, different content
    with pytest.raises(ValueError) as info:
        read_checkpoint(path)
    assert_one_line(info.value, str(path), "checksum mismatch", "dvc repro train")


def test_zero_byte_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    path, _ = saved(tmp_path)
    path.write_bytes(b"")
    with pytest.raises(ValueError) as info:
        read_checkpoint(path)
    assert_one_line(info.value, str(path), "0 bytes", "dvc repro train")


@pytest.mark.parametrize("keep", [0.1, 0.5, 0.99])
def test_truncated_checkpoint_is_a_clear_error(tmp_path: Path, keep: float) -> None:
    path, _ = saved(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(ValueError) as info:
        read_checkpoint(path)
    assert_one_line(info.value, str(path), "dvc repro train")


def test_baseline_checkpoint_errors_name_the_baseline_stage(tmp_path: Path) -> None:
    prepared = items_parquet(tmp_path / "prepared", [f"m{i}" for i in range(1, NUM_ITEMS + 1)])
    path = tmp_path / "models" / "baseline" / "model.pt"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="dvc repro baseline"):
        read_checkpoint(path)
    with pytest.raises(FileNotFoundError, match="dvc repro baseline"):
        load_trained(tmp_path / "elsewhere" / "baseline" / "model.pt", tmp_path, prepared)


def test_wrong_shape_checkpoint_is_one_line_naming_the_weight(tmp_path: Path) -> None:
    """A self-consistent file (valid checksum) whose weights do not fit the config it records."""
    path, _ = saved(tmp_path)
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["state_dict"] = tiny_model(hidden_dim=16).state_dict()
    write_checkpoint(path, checkpoint)  # re-signed: the checksum is fine, the shapes are not
    catalog = ItemCatalog(num_items=NUM_ITEMS, max_seq_len=6, popularity=torch.zeros(NUM_ITEMS + 1))
    with pytest.raises(ValueError) as info:
        load_checkpoint(path, catalog)
    assert_one_line(info.value, str(path), "item_emb.weight", "(13, 16)", "(13, 8)", "dvc repro train")

    del checkpoint["state_dict"]["pos_emb.weight"]
    checkpoint["state_dict"] = {k: v for k, v in tiny_model().state_dict().items() if k != "pos_emb.weight"}
    write_checkpoint(path, checkpoint)
    with pytest.raises(ValueError) as info:
        load_checkpoint(path, catalog)
    assert_one_line(info.value, "missing weights ['pos_emb.weight']")


def test_unknown_model_or_config_key_names_the_checkpoint_not_params(tmp_path: Path) -> None:
    path, _ = saved(tmp_path)
    catalog = ItemCatalog(num_items=NUM_ITEMS, max_seq_len=6, popularity=torch.zeros(NUM_ITEMS + 1))
    checkpoint = torch.load(path, weights_only=True)
    write_checkpoint(path, checkpoint | {"model_name": "gpt5rec"})
    with pytest.raises(ValueError) as info:
        load_checkpoint(path, catalog)
    assert_one_line(info.value, str(path), "'gpt5rec'", "not registered")
    assert "params.yaml" not in str(info.value)
    write_checkpoint(path, checkpoint | {"model_config": checkpoint["model_config"] | {"wings": 2}})
    with pytest.raises(ValueError, match="cannot rebuild 'sasrec' from its config"):
        load_checkpoint(path, catalog)


def test_model_from_another_data_set_with_the_same_item_count_is_refused(tmp_path: Path) -> None:
    """Issue 10: a SASRec of another data set with the same item count used to be evaluated silently."""
    path, _ = saved(tmp_path)
    other = items_parquet(tmp_path / "other", [f"x{i}" for i in range(1, NUM_ITEMS + 1)])  # same N, other items
    with pytest.raises(ValueError) as info:
        verify_data(path, read_checkpoint(path), other)
    assert_one_line(info.value, str(path), "another items.parquet", f"{NUM_ITEMS} items", "dvc repro train")


def test_checkpoint_without_fingerprint_or_checksum_is_refused(tmp_path: Path) -> None:
    path, prepared = saved(tmp_path)
    checkpoint = torch.load(path, weights_only=True)
    write_checkpoint(path, checkpoint | {"data_fingerprint": None})
    with pytest.raises(ValueError, match="records no data fingerprint.*dvc repro train"):
        verify_data(path, read_checkpoint(path), prepared)
    torch.save({k: v for k, v in checkpoint.items() if k != "checksum"}, path)  # an old-format file
    with pytest.raises(ValueError, match="no content checksum.*dvc repro train"):
        read_checkpoint(path)
    torch.save({"weights": torch.zeros(2)}, path)
    with pytest.raises(ValueError, match="not a model checkpoint of this pipeline"):
        read_checkpoint(path)


@pytest.mark.parametrize("damage", ["flip", "empty", "truncate", "foreign"])
def test_evaluate_stage_refuses_a_bad_checkpoint_with_one_line(tmp_path: Path, damage: str) -> None:
    from stages.evaluate import app

    params, prepared, models = write_project(tmp_path)
    model_pt = models / "model.pt"
    data = bytearray(model_pt.read_bytes())
    if damage == "flip":
        for pos in np.random.default_rng(0).choice(len(data), size=2000, replace=False):
            data[pos] ^= 0xFF
        model_pt.write_bytes(bytes(data))
    elif damage == "empty":
        model_pt.write_bytes(b"")
    elif damage == "truncate":
        model_pt.write_bytes(bytes(data[: len(data) // 2]))
    else:  # the same item count, another items.parquet
        ids = pl.read_parquet(prepared / "items.parquet")["item_id"].to_list()
        items_parquet(prepared, [f"{i}-other" for i in ids])
    args = ["--params", str(params), "--prepared", str(prepared), "--features", str(tmp_path / "features")]
    args += [
        "--model",
        str(model_pt),
        "--baseline",
        str(models / "baseline" / "model.pt"),
        "--out",
        str(tmp_path / "reports"),
    ]
    result = CliRunner().invoke(app, [*args, "--device", "cpu"])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output  # clean exit
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert str(model_pt) in lines[0] and "dvc repro train" in lines[0]
    assert "Traceback" not in result.output and "Aborted" not in result.output


def test_training_job_writes_the_fingerprint_of_its_items(tmp_path: Path) -> None:
    from pipeline.training.job import train_to_dir

    prepared = tmp_path / "prepared"
    write_prepared(prepared, cycle_split(num_users=20), 30)
    config = SASRecConfig(hidden_dim=8, num_layers=1, num_heads=1, dropout=0.0)
    train_to_dir("sasrec", config, train_cfg(epochs=1), 12, prepared, tmp_path / "features", tmp_path / "models")
    checkpoint = read_checkpoint(tmp_path / "models" / "model.pt")
    assert checkpoint["data_fingerprint"] == data_fingerprint(prepared) and checkpoint["epoch"] == 1


@pytest.mark.parametrize("module", ["pipeline.evaluation.ranking", "pipeline.serving.inference", "stages.evaluate"])
def test_evaluation_never_imports_the_training_loop(module: str) -> None:
    code = f"import sys, {module}; sys.exit('pipeline.training.fit' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT).returncode == 0
