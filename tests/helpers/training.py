"""The item-cycle toy: each user walks 1 -> 2 -> ... -> 30 -> 1, so the next item is learnable in a few epochs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
import yaml

from pipeline.catalog import ItemCatalog
from pipeline.config import TrainConfig
from pipeline.data.splits import UserSplit
from pipeline.models.sasrec import SASRec, SASRecConfig
from pipeline.training.fit import seed_everything

REPO = Path(__file__).resolve().parents[2]

NUM_ITEMS = 30
MAX_LEN = 12


def cycle_split(num_users: int = 160, seed: int = 0) -> UserSplit:
    """Each user walks the item cycle 1 -> 2 -> ... -> 30 -> 1 from a random start: the next item is learnable."""
    rng = np.random.default_rng(seed)
    seqs = [(rng.integers(NUM_ITEMS) + np.arange(rng.integers(5, 14))) % NUM_ITEMS + 1 for _ in range(num_users)]
    return UserSplit(
        user_idx=np.arange(num_users, dtype=np.int64),
        train=[s[:-2] for s in seqs],
        valid_target=np.array([s[-2] for s in seqs], dtype=np.int64),
        test_target=np.array([s[-1] for s in seqs], dtype=np.int64),
    )


def catalog() -> ItemCatalog:
    return ItemCatalog(num_items=NUM_ITEMS, max_seq_len=MAX_LEN, popularity=torch.zeros(NUM_ITEMS + 1))


def tiny_sasrec(seed: int = 0) -> SASRec:
    """A small SASRec over :func:`catalog`, its weights drawn after seeding with ``seed``."""
    seed_everything(seed)
    return SASRec(SASRecConfig(hidden_dim=16, num_layers=1, num_heads=2, dropout=0.1), catalog())


class RecordingLive:
    """Stands in for ``dvclive.Live``: records every metric per step."""

    def __init__(self) -> None:
        self.steps: list[dict[str, float]] = [{}]

    def log_metric(self, name: str, value: float) -> None:
        self.steps[-1][name] = value

    def next_step(self) -> None:
        self.steps.append({})


def train_cfg(**overrides: Any) -> TrainConfig:
    base = dict(
        seed=0,
        device="cpu",
        epochs=3,
        batch_size=32,
        lr=0.01,
        weight_decay=0.0,
        patience=5,
        grad_clip=1.0,
        num_threads=1,  # tiny tensors: one thread avoids OpenMP spin-waits on a busy machine
    )
    return TrainConfig(**(base | overrides))


def write_prepared(prepared: Path, split: UserSplit, num_items: int) -> None:
    """sequences.parquet + items.parquet whose leave-one-out split is ``split``."""
    prepared.mkdir(parents=True)
    sequences = [
        np.concatenate([t, [v, w]]) for t, v, w in zip(split.train, split.valid_target, split.test_target, strict=True)
    ]
    pl.DataFrame(
        {
            "user_idx": np.arange(1, len(sequences) + 1, dtype=np.int32),
            "user_id": [f"u{i}" for i in range(len(sequences))],
            "items": [s.astype(np.int32).tolist() for s in sequences],
            "timestamps": [list(range(len(s))) for s in sequences],
        }
    ).write_parquet(prepared / "sequences.parquet")
    pl.DataFrame(
        {
            "item_idx": np.arange(1, num_items + 1, dtype=np.int32),
            "item_id": [str(i) for i in range(num_items)],
            "text": [""] * num_items,
            "image_path": [None] * num_items,
        }
    ).write_parquet(prepared / "items.parquet")


def write_stage_project(root: Path) -> list[str]:
    """40 cycle users as ``root/prepared`` and ``root/params.yaml`` for a 2-epoch SASRec (width 16) on CPU.

    Returns the train stage's argv without ``--out`` (``--features`` names a folder SASRec never reads).
    """
    prepared = root / "prepared"
    write_prepared(prepared, cycle_split(num_users=40), NUM_ITEMS)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"]["max_seq_len"] = MAX_LEN
    params["train"] |= {"epochs": 2, "device": "cpu", "batch_size": 16, "num_threads": 1}
    params["model"] |= {"name": "sasrec", "sasrec": {"hidden_dim": 16, "num_layers": 1, "num_heads": 2}}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return ["--params", str(root / "params.yaml"), "--prepared", str(prepared), "--features", str(root / "features")]
