"""Torch-side views of a :class:`UserSplit`: left-padded arrays, the next-item training set, evaluation inputs.

Sequences are *left*-padded with item 0 so the most recent item is always the last column; the most recent
``max_len`` items are kept when a sequence is longer.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from pipeline.data.splits import Stage, UserSplit

log = logging.getLogger(__name__)


def left_pad(seqs: Sequence[np.ndarray], max_len: int) -> np.ndarray:
    """U sequences -> (U, max_len) int64, right-aligned, zeros on the left, the last ``max_len`` items kept."""
    if max_len < 1:
        raise ValueError(f"max_len must be >= 1 (data.max_seq_len), got {max_len}")
    out = np.zeros((len(seqs), max_len), dtype=np.int64)  # (U, L)
    for row, seq in enumerate(seqs):
        tail = np.asarray(seq, dtype=np.int64)[-max_len:]
        if len(tail):
            out[row, max_len - len(tail) :] = tail
    return out


def eval_inputs(split: UserSplit, stage: Stage, max_len: int) -> np.ndarray:
    """(U, L) model inputs for ranking ``stage``'s targets: each user's history before that target."""
    return left_pad(split.history(stage), max_len)


class NextItemDataset(Dataset):
    """One row per user: input ``s[:-1]`` and target ``s[1:]`` of the training sequence ``s`` (last L positions).

    Every position predicts the next item (SASRec's training scheme). Users with fewer than 2 training items have
    no (input, target) pair; they are left out and counted in ``skipped_users``.
    """

    def __init__(self, split: UserSplit, max_len: int) -> None:
        usable = [s for s in split.train if len(s) >= 2]
        self.skipped_users = len(split.train) - len(usable)
        if self.skipped_users:
            log.info("%d of %d users have < 2 training items and add no training pairs", self.skipped_users, len(split))
        if not usable:
            raise ValueError(
                "no user has >= 2 training items, so there is nothing to train on; lower data.user_core "
                "or check data/prepared/sequences.parquet"
            )
        self.inputs = torch.from_numpy(left_pad([s[:-1] for s in usable], max_len))  # (U', L)
        self.targets = torch.from_numpy(left_pad([s[1:] for s in usable], max_len))  # (U', L)

    def __len__(self) -> int:
        return len(self.inputs)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.inputs[index], "target_ids": self.targets[index]}


def collate(rows: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack rows into a batch and drop the leading columns that are padding in every row (less compute)."""
    batch = {key: torch.stack([row[key] for row in rows]) for key in rows[0]}  # each (B, L)
    return trim_left_padding(batch)


def trim_left_padding(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Cut ``input_ids`` (B, L) and aligned tensors to the longest row (models are invariant to left padding)."""
    real = (batch["input_ids"] != 0).any(dim=0)  # (L,)
    first = int(real.int().argmax()) if bool(real.any()) else batch["input_ids"].shape[1] - 1
    return {key: value[:, first:] for key, value in batch.items()}  # each (B, L')
