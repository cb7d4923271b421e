"""The ``embed`` stage: frozen text/image features for every item of ``items.parquet``, through the content cache.

Outputs in ``out_dir`` (each written to a temporary file and renamed; ``manifest.json`` last, so a directory with
a manifest is complete):

- ``<modality>.npy`` float32 (N+1, d), row 0 (padding) zeros;
- ``<modality>_mask.npy`` bool (N+1,), True where the item really has the modality (non-empty text; a readable
  image). Items without it keep a zero row, and the mask says so;
- with ``embed.store_tokens``: ``<modality>_tokens.npy`` float16 (N+1, T, dt) and ``<modality>_tokens_mask.npy``
  bool (N+1, T);
- ``manifest.json``: encoders, checkpoints, dims, counts (present / missing / corrupt), cache hits, hashes of the
  inputs and of the params, device and time. The image entry's ``representation`` is ``embedding`` (the image
  encoder's vector), or ``clip_words`` with ``embed.image_words.vocabulary`` set: MP4SR's CLIP-words feature replaces
  the image outputs and adds ``image_words.parquet`` (see ``pipeline.features.clip_words``).

A modality whose encoder is ``none`` writes no file (and stale files of an earlier run are removed).

This module looks every item's input up in the cache and writes the manifest; the parts live beside it: what each
item gives a modality and its fingerprints in :mod:`pipeline.features.inputs`, encoding the cache's misses shard by
shard in :mod:`pipeline.features.batching`, the arrays in :mod:`pipeline.features.outputs`.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from pipeline.config import EmbedConfig
from pipeline.data.images import image_root
from pipeline.features.allocator import keep_freed_buffers
from pipeline.features.batching import dummy_output, encode_missing
from pipeline.features.cache import CorruptShardError, EmbeddingCache, item_key
from pipeline.features.clip_words import WORDS_FILE, ImageWords
from pipeline.features.encoders import MODALITIES, Encoder, build_encoder, resolve_device, sha256_json
from pipeline.features.inputs import (
    Inputs,
    digests_hash,
    files_hash,
    image_inputs,
    image_paths,
    read_items,
    text_inputs,
)
from pipeline.features.outputs import ModalityOutputs, feature_files, fill_from_cache
from pipeline.features.ranks import SINGLE, Ranks
from pipeline.io import check_disjoint, write_json_atomic

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
MANIFEST_VERSION = 1


# --- one modality -----------------------------------------------------------------------------------------------


@dataclass
class _Job:
    """One modality's inputs against the embedding cache (identical inputs share a key and are encoded once)."""

    modality: str
    encoder: Encoder
    identity_hash: str
    item_ids: list[str]
    raw: list[str]  # each item's text or image path (index i = item_idx i+1)
    rows_by_key: dict[str, list[int]]  # unique cache key -> item rows
    cache: EmbeddingCache
    store_tokens: bool
    shard_size: int
    root: Path | None

    def first(self, key: str) -> int:
        """Index into ``raw`` and ``item_ids`` of the first item with input ``key``."""
        return self.rows_by_key[key][0] - 1

    def cached(self, key: str) -> bool:
        return self.cache.has(key, self.store_tokens)

    def misses(self) -> list[str]:
        """Keys neither in the cache nor recorded there as undecodable."""
        known_bad = {k for k in self.rows_by_key if k in self.cache.bad}
        return [k for k in self.rows_by_key if not self.cached(k) and k not in known_bad]

    def encode(self, keys: list[str], ranks: Ranks) -> None:
        """Encode ``keys`` (this process's shards of them, one input per key) into the cache."""
        sources = [self.raw[self.first(k)] for k in keys]
        encode_missing(
            self.modality, self.encoder, keys, sources, self.cache, self.store_tokens, self.shard_size, ranks, self.root
        )

    def corrupt(self) -> dict[str, str]:
        """Key -> reason, for every input the cache records as undecodable."""
        return {k: self.cache.bad[k] for k in self.rows_by_key if k in self.cache.bad}

    def hits(self, corrupt: dict[str, str]) -> list[str]:
        """Every key the cache holds once encoding is over; any other key must be ``corrupt``."""
        lost = [k for k in self.rows_by_key if k not in corrupt and not self.cached(k)]
        if lost:
            raise RuntimeError(
                f"{len(lost)} {self.modality} input(s) are not in the embedding cache {self.cache.dir} after encoding"
                f" (e.g. item {self.item_ids[self.first(lost[0])]!r}); was a shard removed meanwhile? Rerun `dvc"
                " repro embed`."
            )
        return [k for k in self.rows_by_key if self.cached(k)]


def _rows_by_key(digests: list[str | None], identity_hash: str) -> dict[str, list[int]]:
    rows_by_key: dict[str, list[int]] = {}
    for i, digest in enumerate(digests):
        if digest is not None:
            rows_by_key.setdefault(item_key(identity_hash, digest), []).append(i + 1)
    return rows_by_key


def _assemble(job: _Job, out: ModalityOutputs, keys: list[str]) -> tuple[np.ndarray, int]:
    """Fill ``out`` from the cached vectors of ``keys``; returns the mask of filled rows (N+1,) and how many inputs
    were encoded again. A corrupt shard met on the way is named, skipped, and its inputs encoded into a new shard."""
    mask = np.zeros(out.rows, dtype=bool)  # (N+1,)
    pending, reencoded = keys, 0
    while pending:
        done: set[str] = set()
        try:
            fill_from_cache(out, mask, job.cache, pending, job.rows_by_key, job.store_tokens, done)
            pending = []
        except CorruptShardError as bad:
            job.cache.discard(bad.shard)
            again = [k for k in bad.keys if not job.cached(k)]
            job.encode(again, SINGLE)
            reencoded += len(again)
            pending = [k for k in pending if k not in done and job.cached(k)]
    if out.pooled is None:
        dummy = dummy_output(job.encoder, job.store_tokens)
        out.ensure(dummy.pooled.shape[1], None if dummy.tokens is None else tuple(dummy.tokens.shape[1:]))
    return mask, reencoded


def _count_corrupt(job: _Job, corrupt: dict[str, str], examples: dict[str, list[dict[str, str]]]) -> int:
    """The number of items whose input could not be decoded; a few are named in ``examples["corrupt"]``."""
    corrupt_items = sorted(r for k in corrupt for r in job.rows_by_key[k])
    if corrupt_items:
        examples["corrupt"] = [
            {"item_id": job.item_ids[job.first(k)], "path": str(job.raw[job.first(k)]), "reason": reason}
            for k, reason in list(corrupt.items())[:5]
        ]
        logger.warning("%d corrupt image(s) masked as missing, e.g. %s", len(corrupt_items), examples["corrupt"][0])
    return len(corrupt_items)


def _entry(
    job: _Job, inputs: Inputs, out: ModalityOutputs, mask: np.ndarray, tally: dict[str, int], start: float
) -> dict[str, Any]:
    """One modality's manifest entry; ``tally``: its corrupt, cache and encoded counts."""
    files, store_tokens = feature_files(job.modality), job.store_tokens
    return {
        "enabled": True,
        **job.encoder.describe(),
        "identity_hash": job.identity_hash,
        "file": files["pooled"],
        "mask_file": files["mask"],
        "dim": int(out.pooled.shape[1]),
        "dtype": "float32",
        "tokens_file": files["tokens"] if store_tokens else None,
        "tokens_mask_file": files["tokens_mask"] if store_tokens else None,
        "tokens_shape": list(out.tokens_shape) if store_tokens else None,
        "tokens_dtype": "float16" if store_tokens else None,
        "items": len(job.raw),
        "present": int(mask.sum()),
        **inputs.counts,
        **tally,
        "cache_dir": str(job.cache.dir),
        "inputs_hash": digests_hash(inputs.digests),  # the content encoded: checked by every reader (store.py)
        **({"files_hash": files_hash(job.raw)} if job.modality == "image" else {}),
        "params_hash": sha256_json(asdict(job.encoder.config)),
        "examples": {k: v for k, v in inputs.examples.items() if v},
        "seconds": round(time.perf_counter() - start, 3),
    }


def embed_modality(
    modality: str,
    encoder: Encoder,
    items: pl.DataFrame,
    out_dir: Path,
    cache_dir: Path,
    store_tokens: bool,
    shard_size: int = 256,
    ranks: Ranks = SINGLE,
    root: Path | None = None,
) -> dict[str, Any] | None:
    """Encode one modality of every item (cache first), write its arrays, return its manifest entry.

    ``items["image_path"]`` holds the files to read (resolved, as :func:`pipeline.features.inputs.image_paths` gives
    them).

    Items missing from the cache are encoded in shards of ``shard_size`` unique inputs (``embed.shard_size``);
    each finished shard is written to the cache at once, so a killed run keeps every finished shard. With several
    processes (``ranks``, :mod:`pipeline.features.ranks`) each encodes its share of the shards, and only rank 0
    assembles the outputs from the cache and returns the entry (the others return None).
    """
    start = time.perf_counter()
    item_ids = items["item_id"].to_list()
    raw = items["text" if modality == "text" else "image_path"].to_list()
    inputs = text_inputs(raw) if modality == "text" else image_inputs(item_ids, raw, root)
    identity = encoder.identity()
    identity_hash = sha256_json(identity)

    def open_cache() -> EmbeddingCache:
        return EmbeddingCache(cache_dir, modality, encoder.name, identity, identity_hash, shard_size=shard_size)

    rows_by_key = _rows_by_key(inputs.digests, identity_hash)
    job = _Job(
        modality, encoder, identity_hash, item_ids, raw, rows_by_key, open_cache(), store_tokens, shard_size, root
    )
    miss_keys = job.misses()
    cache_hits = sum(len(v) for k, v in rows_by_key.items() if k not in miss_keys)
    ranks.barrier()  # every process has read the cache before any writes to it: they agree on what is missing
    if miss_keys:
        job.encode(miss_keys, ranks)
    ranks.barrier()  # every process's shards are in the cache
    if not ranks.is_main:
        return None
    if ranks.world > 1:  # read the shards the other processes wrote
        job.cache = open_cache()
    corrupt = job.corrupt()
    out = ModalityOutputs(out_dir, modality, len(items) + 1, store_tokens)
    mask, reencoded = _assemble(job, out, job.hits(corrupt))
    out.commit(mask)
    tally = {
        "corrupt": _count_corrupt(job, corrupt, inputs.examples),
        "cache_hits": cache_hits,
        "cache_misses": sum(len(rows_by_key[k]) for k in miss_keys),
        "encoded": sum(1 for k in miss_keys if k not in corrupt) + reencoded,
    }
    return _entry(job, inputs, out, mask, tally, start)


# --- every modality ---------------------------------------------------------------------------------------------


def _read_resolved(items_path: Path, need_images: bool) -> tuple[pl.DataFrame, Path | None]:
    """``items.parquet`` (:func:`pipeline.features.inputs.read_items`) with its image paths resolved, and the image
    folder every image is checked against when it is opened."""
    items = read_items(items_path, need_images=need_images)
    if not need_images:
        return items, image_root(items_path.parent)
    # relative paths are relative to the prepared folder, not the working directory
    paths, root = image_paths(items, items_path.parent)
    return items.with_columns(pl.Series("image_path", paths, dtype=pl.String)), root


def _clear_out_dir(out_dir: Path, keep_words: bool) -> None:
    """``out_dir`` without a manifest (none until every file below is complete), without the temporaries of an
    interrupted run and, unless ``keep_words``, without an earlier run's image words."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / MANIFEST).unlink(missing_ok=True)
    for leftover in out_dir.glob(".tmp-*"):
        leftover.unlink(missing_ok=True)
    if not keep_words:
        (out_dir / WORDS_FILE).unlink(missing_ok=True)


def _disabled(modality: str, out_dir: Path, ranks: Ranks) -> dict[str, Any]:
    """The manifest entry of a modality whose encoder is ``none``; rank 0 removes an earlier run's files."""
    if ranks.is_main:
        for name in feature_files(modality).values():
            (out_dir / name).unlink(missing_ok=True)
    logger.info("embed %s: disabled (embed.%s.name = none)", modality, modality)
    return {"enabled": False, "encoder": "none"}


def _log_entry(modality: str, m: dict[str, Any]) -> None:
    logger.info(
        "embed %s: %d present, %d missing, %d corrupt; %d from cache, %d encoded (%.1f s)",
        modality,
        m["present"],
        m["missing"],
        m["corrupt"],
        m["cache_hits"],
        m["encoded"],
        m["seconds"],
    )


def _manifest(
    items_path: Path,
    items: pl.DataFrame,
    config: EmbedConfig,
    device: torch.device,
    ranks: Ranks,
    start: float,
    modalities: dict[str, Any],
) -> dict[str, Any]:
    return {
        "version": MANIFEST_VERSION,
        "num_items": len(items),
        "items_file": str(items_path),
        "items_hash": hashlib.sha256("\n".join(items["item_id"].to_list()).encode()).hexdigest(),
        "params_hash": sha256_json(asdict(config)),
        "params": asdict(config),
        "store_tokens": config.store_tokens,
        "device": str(device) if ranks.world == 1 else f"{ranks.world} processes ({device} on rank 0)",
        "torch": torch.__version__,
        "seconds": round(time.perf_counter() - start, 3),
        "modalities": modalities,
    }


def embed_items(
    items_path: Path,
    out_dir: Path,
    cache_dir: Path,
    config: EmbedConfig,
    shard_size: int | None = None,
    ranks: Ranks = SINGLE,
) -> dict[str, Any] | None:
    """Run the embed stage: features for every modality of ``items_path`` into ``out_dir``; returns the manifest.

    ``cache_dir`` is the content cache (``data/cache/embeddings``); ``shard_size`` encoded items per cache shard
    (None = ``config.shard_size``). ``ranks``: this process's place among several (one per GPU, under torchrun:
    :func:`pipeline.features.ranks.embed_session`); each encodes its share of the shards and rank 0 alone writes
    ``out_dir`` and returns the manifest (the others return None).
    """
    check_disjoint({"--out": out_dir, "--cache": cache_dir}, {}, {"--items": items_path})
    check_disjoint({"--out": out_dir}, {"--cache": cache_dir})
    keep_freed_buffers()  # per-batch buffers stay mapped: fewer page faults (pipeline/features/allocator.py)
    shard_size = config.shard_size if shard_size is None else shard_size
    start = time.perf_counter()
    device = ranks.device(resolve_device(config.device))
    # Build every encoder first: config mistakes surface before any work is done.
    encoders = {m: build_encoder(getattr(config, m), m, device) for m in MODALITIES}
    words = ImageWords(config, encoders["text"], device) if config.image_words.vocabulary is not None else None
    items, root = _read_resolved(items_path, need_images=encoders["image"] is not None)
    if ranks.is_main:
        _clear_out_dir(out_dir, keep_words=words is not None)
    logger.info("embed: %d items from %s on %s", len(items), items_path, device)

    modalities: dict[str, Any] = {}
    for modality, encoder in encoders.items():
        if encoder is None:
            modalities[modality] = _disabled(modality, out_dir, ranks)
            continue
        as_words = modality == "image" and words is not None  # image tokens are then the words, not CLIP patches
        store_tokens = config.store_tokens and not as_words
        m = embed_modality(
            modality, encoder, items, out_dir, cache_dir, store_tokens, shard_size=shard_size, ranks=ranks, root=root
        )
        if m is None:  # another process than rank 0: its shards are in the cache
            continue
        if as_words:
            m = words.write(m, items, out_dir, cache_dir, config.store_tokens, feature_files(modality))
        elif modality == "image":
            m["representation"] = "embedding"
        modalities[modality] = m
        _log_entry(modality, m)

    if not ranks.is_main:
        return None
    manifest = _manifest(items_path, items, config, device, ranks, start, modalities)
    write_json_atomic(out_dir / MANIFEST, manifest)
    return manifest
