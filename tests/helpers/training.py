"""The item-cycle toy: each user walks 1 -> 2 -> ... -> 30 -> 1, so the next item is learnable in a few epochs."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from pipeline.catalog import ItemCatalog
from pipeline.config import TrainConfig
from pipeline.data.splits import UserSplit

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
