"""Leave-one-out split of chronological user sequences (DESIGN.md: last item = test, second last = valid)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import polars as pl

from pipeline.io import read_parquet

Stage = Literal["valid", "test"]


@dataclass(frozen=True)
class UserSplit:
    """Per-user training items and held-out targets; index ``u`` in every field is the same user."""

    user_idx: np.ndarray  # (U,) int64
    train: list[np.ndarray]  # chronological training items per user (all but the last two)
    valid_target: np.ndarray  # (U,) int64
    test_target: np.ndarray  # (U,) int64

    def __len__(self) -> int:
        return len(self.user_idx)

    def history(self, stage: Stage) -> list[np.ndarray]:
        """Everything the model may see before predicting ``stage``'s target (also the items masked in ranking)."""
        if stage == "valid":
            return self.train
        if stage == "test":
            return [np.append(t, v) for t, v in zip(self.train, self.valid_target, strict=True)]
        raise ValueError(f"stage must be 'valid' or 'test', got {stage!r}")

    def target(self, stage: Stage) -> np.ndarray:
        return self.valid_target if stage == "valid" else self.test_target


def leave_one_out(sequences: pl.DataFrame) -> UserSplit:
    """Split ``sequences.parquet`` rows; every sequence must hold at least 3 items (prepare guarantees it)."""
    lengths = sequences["items"].list.len().to_numpy()
    short = np.flatnonzero(lengths < 3)
    if len(short):
        user = sequences["user_id"][int(short[0])]
        raise ValueError(
            f"sequences.parquet: user {user!r} has {lengths[short[0]]} items; leave-one-out needs >= 3. "
            "Raise data.user_core to at least 3 and run `dvc repro prepare`."
        )
    items = [np.asarray(s, dtype=np.int64) for s in sequences["items"].to_list()]
    return UserSplit(
        user_idx=sequences["user_idx"].to_numpy().astype(np.int64),
        train=[s[:-2] for s in items],
        valid_target=np.array([s[-2] for s in items], dtype=np.int64),
        test_target=np.array([s[-1] for s in items], dtype=np.int64),
    )


def load_split(prepared_dir: Path) -> UserSplit:
    return leave_one_out(read_parquet(prepared_dir / "sequences.parquet", "Run `dvc repro prepare`."))
