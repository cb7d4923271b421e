"""Content-addressed cache of encoder outputs in ``data/cache/embeddings``: not a DVC output, so it survives reruns.

Key per item = sha256(encoder identity hash + sha256 of the input content: the text string or the image file's bytes).
The identity (name, arch, checkpoint, weights fingerprint, max_tokens, preprocessing version) also names the
directory, so one directory only ever holds vectors of one shape::

    <root>/<modality>-<encoder>-<identity[:16]>/
        identity.json                 what the directory holds (for people)
        shard-<time>-<uuid>.npz       keys (S,) S64, pooled (S, d) float32,
                                      [tokens (S, T, dt) float16, token_mask (S, T) bool],
                                      bad_keys, bad_reasons: inputs that could not be decoded (corrupt images)

A run appends a new shard every ``shard_size`` encoded items (``embed.shard_size``; the embed stage also ends a
shard where its own shard of inputs ends), so an interrupted run, even one killed with SIGKILL, keeps every shard
it finished and the next run encodes only the rest. Shards are written to a temporary file and renamed, so a
half-written shard is never seen under a ``shard-*`` name; an unreadable shard is logged and skipped (its items are
simply re-encoded).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import uuid
import zipfile
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

DEFAULT_CACHE_DIR = Path("data/cache/embeddings")
SHARD_GLOB = "shard-*.npz"
TMP_PREFIX = ".tmp-"
STALE_TMP_S = 24 * 3600
_SHARD_ERRORS = (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile)


def content_digest(data: bytes | str) -> str:
    """sha256 of an item's input: a text string (UTF-8) or an image file's bytes."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    return hashlib.sha256(data).hexdigest()


def item_key(identity_hash: str, digest: str) -> str:
    """The cache key of one input under one encoder identity."""
    return hashlib.sha256(f"{identity_hash}:{digest}".encode()).hexdigest()


class CorruptShardError(Exception):
    """A shard failed while its arrays were read (a bad CRC, a truncated member); ``keys`` were read from it."""

    def __init__(self, shard: Path, error: BaseException, keys: list[str]) -> None:
        super().__init__(f"{shard}: {type(error).__name__}: {error}")
        self.shard, self.keys = shard, keys


@dataclass(frozen=True)
class CacheEntry:
    shard: Path
    row: int
    has_tokens: bool


class EmbeddingCache:
    """All cached outputs of one encoder identity: an in-memory index over the shard files, plus a write buffer."""

    def __init__(
        self,
        root: Path,
        modality: str,
        encoder: str,
        identity: dict[str, Any],
        identity_hash: str,
        shard_size: int = 1024,
    ) -> None:
        if shard_size < 1:
            raise ValueError(f"shard_size must be >= 1, got {shard_size}")
        self.dir = Path(root) / f"{modality}-{encoder}-{identity_hash[:16]}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.shard_size = shard_size
        self.index: dict[str, CacheEntry] = {}
        self.bad: dict[str, str] = {}  # key -> why the input could not be decoded (a corrupt image)
        self._bad_buffer: dict[str, str] = {}
        self.skipped_shards: list[Path] = []
        self._buffer: list[tuple[list[str], np.ndarray, np.ndarray | None, np.ndarray | None]] = []
        self._buffered = 0
        self._write_identity(identity)
        self._clean_stale_tmp()
        self._scan()

    # --- reading -------------------------------------------------------------------------------------------------

    def _scan(self) -> None:
        for shard in sorted(self.dir.glob(SHARD_GLOB)):
            try:
                with np.load(shard) as data:
                    keys = data["keys"].tolist()
                    has_tokens = "tokens" in data.files and "token_mask" in data.files
                    bad = dict(zip(data["bad_keys"].tolist(), data["bad_reasons"].tolist(), strict=True))
            except _SHARD_ERRORS as error:
                logger.warning("embedding cache: ignoring unreadable shard %s (%s)", shard, error)
                self.skipped_shards.append(shard)
                continue
            for row, raw in enumerate(keys):
                self._index_row(raw.decode("ascii"), shard, row, has_tokens)
            self.bad.update({k.decode("ascii"): str(reason) for k, reason in bad.items()})
        logger.info(
            "embedding cache %s: %d entries (%d unreadable inputs) in %d shard(s)",
            self.dir,
            len(self.index),
            len(self.bad),
            len({e.shard for e in self.index.values()}),
        )

    def _index_row(self, key: str, shard: Path, row: int, has_tokens: bool) -> None:
        known = self.index.get(key)
        if known is None or (has_tokens and not known.has_tokens):
            self.index[key] = CacheEntry(shard, row, has_tokens)

    def has(self, key: str, need_tokens: bool) -> bool:
        entry = self.index.get(key)
        return entry is not None and (entry.has_tokens or not need_tokens)

    def read(
        self, keys: list[str], need_tokens: bool
    ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]]:
        """Per shard: ``(positions in keys, pooled (K, d), tokens (K, T, dt) | None, token_mask (K, T) | None)``."""
        by_shard: dict[Path, list[tuple[int, int]]] = defaultdict(list)
        for pos, key in enumerate(keys):
            entry = self.index[key]
            by_shard[entry.shard].append((pos, entry.row))
        for shard, pairs in by_shard.items():
            positions = np.array([p for p, _ in pairs], dtype=np.int64)
            rows = np.array([r for _, r in pairs], dtype=np.int64)
            try:
                with np.load(shard) as data:
                    pooled = data["pooled"][rows]  # (K, d)
                    tokens = data["tokens"][rows] if need_tokens else None  # (K, T, dt)
                    mask = data["token_mask"][rows] if need_tokens else None  # (K, T)
            except _SHARD_ERRORS as error:  # e.g. a bad CRC in pooled.npy, found only now that it is read
                raise CorruptShardError(shard, error, [keys[p] for p, _ in pairs]) from error
            yield positions, pooled, tokens, mask

    def discard(self, shard: Path) -> None:
        """Set a corrupt shard aside (renamed ``.corrupt-<name>``, never read again) and forget its entries."""
        logger.warning(
            "embedding cache: %s is corrupt; set aside as .corrupt-%s, its items re-encoded", shard, shard.name
        )
        try:
            os.replace(shard, shard.with_name(f".corrupt-{shard.name}"))
        except OSError as error:
            logger.warning("embedding cache: could not set %s aside (%s)", shard, error)
        self.skipped_shards.append(shard)
        self.index = {k: e for k, e in self.index.items() if e.shard != shard}

    # --- writing -------------------------------------------------------------------------------------------------

    def add(
        self,
        keys: list[str],
        pooled: np.ndarray,
        tokens: np.ndarray | None = None,
        token_mask: np.ndarray | None = None,
    ) -> None:
        """Buffer freshly encoded rows; a shard is written every ``shard_size`` rows (and by ``flush``)."""
        if len(keys) != len(pooled):
            raise ValueError(f"{len(keys)} keys but {len(pooled)} pooled rows")
        self._buffer.append((list(keys), pooled, tokens, token_mask))
        self._buffered += len(keys)
        if self._buffered >= self.shard_size:
            self.flush()

    def add_bad(self, key: str, reason: str) -> None:
        """Remember that this input cannot be decoded, so later runs count it as corrupt without reading it again."""
        self._bad_buffer[key] = reason

    def flush(self) -> Path | None:
        if not self._buffered and not self._bad_buffer:
            return None
        keys = [k for part in self._buffer for k in part[0]]
        arrays: dict[str, np.ndarray] = {
            "keys": np.array(keys, dtype="S64"),
            "bad_keys": np.array(list(self._bad_buffer), dtype="S64"),
            "bad_reasons": np.array(list(self._bad_buffer.values()), dtype=str),
        }
        if self._buffer:
            arrays["pooled"] = np.concatenate([part[1] for part in self._buffer]).astype(np.float32)
            if all(part[2] is not None and part[3] is not None for part in self._buffer):
                arrays["tokens"] = np.concatenate([part[2] for part in self._buffer]).astype(np.float16)
                arrays["token_mask"] = np.concatenate([part[3] for part in self._buffer]).astype(bool)
        name = f"shard-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}.npz"
        path = self.dir / name
        tmp = self.dir / f"{TMP_PREFIX}{name}"
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(self.dir)  # the rename itself survives a crash of the machine, not only of the process
        for row, key in enumerate(keys):
            self._index_row(key, path, row, "tokens" in arrays)
        self.bad.update(self._bad_buffer)
        self._buffer, self._buffered, self._bad_buffer = [], 0, {}
        logger.debug("embedding cache: wrote %s (%d rows)", path, len(keys))
        return path

    def _write_identity(self, identity: dict[str, Any]) -> None:
        path = self.dir / "identity.json"
        if path.exists():
            return
        tmp = self.dir / f"{TMP_PREFIX}{uuid.uuid4().hex[:8]}-identity.json"
        tmp.write_text(json.dumps(identity, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")
        os.replace(tmp, path)

    def _clean_stale_tmp(self) -> None:
        """Remove temporaries left by runs killed more than a day ago (a live run's temporaries are recent)."""
        now = time.time()
        for tmp in self.dir.glob(f"{TMP_PREFIX}*"):
            try:
                if now - tmp.stat().st_mtime > STALE_TMP_S:
                    tmp.unlink()
            except OSError:
                continue


def _fsync_dir(path: Path) -> None:
    """Flush a directory entry (a rename) to disk where the OS allows opening directories (not Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
