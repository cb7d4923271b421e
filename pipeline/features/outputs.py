"""The embed stage's arrays for one modality: named, filled from the embedding cache, and written atomically.

``<modality>.npy`` float32 (N+1, d) and ``<modality>_mask.npy`` bool (N+1,); with tokens also
``<modality>_tokens.npy`` float16 (N+1, T, dt) and ``<modality>_tokens_mask.npy`` bool (N+1, T). Row 0 (padding)
and items without the modality stay zero, and the mask says which rows are real.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.features.cache import EmbeddingCache
from pipeline.io import atomic_path


def feature_files(modality: str) -> dict[str, str]:
    """File names of one modality's outputs."""
    return {
        "pooled": f"{modality}.npy",
        "mask": f"{modality}_mask.npy",
        "tokens": f"{modality}_tokens.npy",
        "tokens_mask": f"{modality}_tokens_mask.npy",
    }


def _atomic_save(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, array)


@dataclass
class ModalityOutputs:
    """Output arrays of one modality, allocated when the first vector reveals the dims."""

    out_dir: Path
    modality: str
    rows: int  # N + 1
    want_tokens: bool
    pooled: np.ndarray | None = None  # (N+1, d) float32
    tokens: np.ndarray | None = None  # (N+1, T, dt) float16, a memmap of a temporary file
    tokens_mask: np.ndarray | None = None  # (N+1, T) bool
    tokens_tmp: Path | None = None
    tokens_shape: tuple[int, int] | None = None  # (T, dt)

    def ensure(self, d: int, tokens_shape: tuple[int, int] | None) -> None:
        if self.pooled is not None:
            return
        self.pooled = np.zeros((self.rows, d), dtype=np.float32)
        if self.want_tokens:
            assert tokens_shape is not None  # encoders return tokens whenever they are asked to
            self.tokens_shape = (int(tokens_shape[0]), int(tokens_shape[1]))
            name = feature_files(self.modality)["tokens"]
            self.tokens_tmp = self.out_dir / f".tmp-{uuid.uuid4().hex[:8]}-{name}"
            # A new memmap file reads as zeros: row 0 and items without the modality stay zero.
            self.tokens = np.lib.format.open_memmap(
                self.tokens_tmp, mode="w+", dtype=np.float16, shape=(self.rows, *tokens_shape)
            )
            self.tokens_mask = np.zeros((self.rows, tokens_shape[0]), dtype=bool)

    def put(
        self, item_rows: np.ndarray, pooled: np.ndarray, tokens: np.ndarray | None, mask: np.ndarray | None
    ) -> None:
        self.ensure(pooled.shape[1], None if tokens is None else tokens.shape[1:])
        self.pooled[item_rows] = pooled
        if self.want_tokens:
            self.tokens[item_rows] = tokens
            self.tokens_mask[item_rows] = mask

    def commit(self, mask: np.ndarray) -> None:
        files = feature_files(self.modality)
        _atomic_save(self.out_dir / files["pooled"], self.pooled)
        _atomic_save(self.out_dir / files["mask"], mask)
        if self.want_tokens:
            self.tokens.flush()
            del self.tokens
            os.replace(self.tokens_tmp, self.out_dir / files["tokens"])
            _atomic_save(self.out_dir / files["tokens_mask"], self.tokens_mask)
        else:
            for key in ("tokens", "tokens_mask"):
                (self.out_dir / files[key]).unlink(missing_ok=True)


def fill_from_cache(
    out: ModalityOutputs,
    mask: np.ndarray,
    cache: EmbeddingCache,
    keys: list[str],
    rows_by_key: dict[str, list[int]],
    store_tokens: bool,
    done: set[str],
) -> None:
    """Copy the cached vectors of ``keys`` into every item row that has that input; ``done`` collects the keys."""
    for positions, pooled, tokens, tmask in cache.read(keys, store_tokens):
        shard_keys = [keys[p] for p in positions]
        counts = [len(rows_by_key[k]) for k in shard_keys]
        item_rows = np.array([r for k in shard_keys for r in rows_by_key[k]], dtype=np.int64)
        rep = np.repeat(np.arange(len(shard_keys)), counts)
        out.put(item_rows, pooled[rep], None if tokens is None else tokens[rep], None if tmask is None else tmask[rep])
        mask[item_rows] = True
        done.update(shard_keys)
