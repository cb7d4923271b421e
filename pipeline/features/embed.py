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
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
from PIL import Image
from tqdm import tqdm

from pipeline.config import EmbedConfig
from pipeline.data.images import checked_image, image_root, resolve_image_paths
from pipeline.features.allocator import keep_freed_buffers
from pipeline.features.cache import CorruptShardError, EmbeddingCache, content_digest, item_key
from pipeline.features.clip_words import WORDS_FILE, ImageWords
from pipeline.features.encoders import (
    MODALITIES,
    Encoded,
    Encoder,
    ImageEncoder,
    TextEncoder,
    build_encoder,
    resolve_device,
    sha256_json,
)
from pipeline.features.ranks import SINGLE, Ranks
from pipeline.io import atomic_path, check_disjoint, read_parquet, write_json_atomic

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
MANIFEST_VERSION = 1
IO_WORKERS = min(8, os.cpu_count() or 1)
_IMAGE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)


def feature_files(modality: str) -> dict[str, str]:
    """File names of one modality's outputs."""
    return {
        "pooled": f"{modality}.npy",
        "mask": f"{modality}_mask.npy",
        "tokens": f"{modality}_tokens.npy",
        "tokens_mask": f"{modality}_tokens_mask.npy",
    }


# --- items ------------------------------------------------------------------------------------------------------


def read_items(path: Path, need_images: bool) -> pl.DataFrame:
    """Read and check ``items.parquet``: item_idx 1..N sorted and contiguous, text never null."""
    if not path.exists():
        raise FileNotFoundError(f"{path} not found; run `dvc repro prepare` first (or pass --items)")
    columns = ["item_idx", "item_id", "text"] + (["image_path"] if need_images else [])
    try:
        schema = pl.read_parquet_schema(path)
    except (OSError, pl.exceptions.PolarsError) as e:
        reason = (str(e).splitlines() or [type(e).__name__])[0][:200]
        raise ValueError(f"{path}: not a readable Parquet file ({reason}). Run `dvc repro prepare`.") from None
    for column in columns:
        if column not in schema:
            raise ValueError(
                f"{path}: missing column `{column}` (columns: {', '.join(schema)}). Rerun `dvc repro prepare`."
            )
    items = read_parquet(path, "Run `dvc repro prepare`.", columns=columns)
    idx = items["item_idx"].to_numpy()
    expected = np.arange(1, len(items) + 1)
    if len(idx) == 0:
        raise ValueError(f"{path}: no items")
    if not np.array_equal(idx, expected):
        bad = int(np.flatnonzero(idx != expected)[0])
        raise ValueError(
            f"{path}: row {bad} has item_idx {idx[bad]}; item_idx must be 1..N, sorted and contiguous "
            f"(expected {bad + 1}). Rerun `dvc repro prepare`."
        )
    nulls = items["text"].is_null()
    if nulls.any():
        bad = int(nulls.arg_true()[0])
        raise ValueError(
            f"{path}: row {bad} (item_id {items['item_id'][bad]!r}) has a null `text`; use an empty string for "
            "items without text. Rerun `dvc repro prepare`."
        )
    return items


# --- outputs ----------------------------------------------------------------------------------------------------


def _atomic_save(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, array)


@dataclass
class _Outputs:
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


# --- inputs -----------------------------------------------------------------------------------------------------


def digests_hash(digests: list[str | None]) -> str:
    """The fingerprint of a modality's encoded content: sha256 over every item's content digest ("-" for none)."""
    return hashlib.sha256("\n".join(d or "-" for d in digests).encode()).hexdigest()


def files_hash(paths: list[str | None]) -> str:
    """sha256 over every image path with its size and mtime: a cheap test that no image changed since embed.

    ``paths`` as :func:`pipeline.data.images.resolve_image_paths` gives them (absolute), so the same files reached
    from another working directory hash the same.
    """
    parts = []
    for path in paths:
        try:
            info = os.stat(path) if path else None
        except OSError:
            info = None
        parts.append(f"{path}|{info.st_size}|{info.st_mtime_ns}" if info is not None else f"{path}|-")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def image_paths(items: pl.DataFrame, prepared_dir: Path) -> tuple[list[str | None], Path | None]:
    """``items``' image files (absolute, :func:`pipeline.data.images.resolve_image_path`) and the folder they must
    resolve into (:func:`pipeline.data.images.image_root`); ``items`` is ``prepared_dir``'s items table."""
    root = image_root(prepared_dir)
    return resolve_image_paths(items["image_path"].to_list(), prepared_dir, root), root


def content_fingerprint(modality: str, items: pl.DataFrame, prepared_dir: Path) -> str:
    """:func:`digests_hash` of what ``items`` (``prepared_dir``'s items table) holds now for ``modality`` (text
    strings, or image file bytes)."""
    if modality == "text":
        return digests_hash(_text_inputs(items["text"].to_list()).digests)
    paths, root = image_paths(items, prepared_dir)
    return digests_hash(_image_inputs(items["item_id"].to_list(), paths, root).digests)


@dataclass
class _Inputs:
    """What one modality reads for every item (index i = item_idx i+1)."""

    digests: list[str | None]  # sha256 of the content, None where the item has none
    counts: dict[str, int]
    examples: dict[str, list[dict[str, str]]] = field(default_factory=dict)


def _text_inputs(texts: list[str]) -> _Inputs:
    digests = [content_digest(t) if t.strip() else None for t in texts]
    empty = sum(d is None for d in digests)
    return _Inputs(digests, {"missing": empty, "empty_text": empty})


def _hash_file(path: str | None, root: Path | None) -> tuple[str, str | None]:
    checked, status = checked_image(path, root)  # resolved and checked against the image folder when opened
    if checked is None:
        return status, None
    try:
        data = checked.read_bytes()
    except FileNotFoundError:
        return "missing_file", None
    except OSError:
        return "unreadable", None
    return "ok", content_digest(data)


def _image_inputs(item_ids: list[str], paths: list[str | None], root: Path | None) -> _Inputs:
    with ThreadPoolExecutor(IO_WORKERS) as pool:
        results = list(pool.map(_hash_file, paths, [root] * len(paths), chunksize=64))
    counts = {"missing": 0, "missing_path": 0, "missing_file": 0, "unreadable": 0, "rejected_outside_root": 0}
    examples: dict[str, list[dict[str, str]]] = {"missing_file": [], "corrupt": []}
    for item_id, path, (status, _) in zip(item_ids, paths, results, strict=True):
        if status == "missing":
            counts["missing_path"] += 1
        elif status == "rejected_outside_root":
            counts[status] += 1
        elif status in ("missing_file", "unreadable"):
            counts[status] += 1
            if len(examples["missing_file"]) < 5:
                examples["missing_file"].append({"item_id": item_id, "path": str(path), "reason": status})
    counts["missing"] = sum(counts[k] for k in ("missing_path", "missing_file", "unreadable", "rejected_outside_root"))
    if counts["missing_file"] + counts["unreadable"]:
        first = examples["missing_file"][0]
        logger.warning(
            "%d image file(s) not found or unreadable, e.g. item %s: %s; masked as missing",
            counts["missing_file"] + counts["unreadable"],
            first["item_id"],
            first["path"],
        )
    return _Inputs([d for _, d in results], counts, examples)


def _decode_image(path: str, encoder: ImageEncoder, root: Path | None) -> tuple[torch.Tensor | None, str | None]:
    """Read, decode and preprocess one image; (None, reason) when it is corrupt or now resolves outside ``root``."""
    checked, status = checked_image(path, root)  # checked again: the file may have been replaced since hashing
    if checked is None:
        return None, status
    try:
        with Image.open(checked) as image:
            image.draft("RGB", (448, 448))  # JPEG: decode at a reduced scale that still covers the model input
            image.load()
            return encoder.preprocess(image), None
    except _IMAGE_ERRORS as error:
        return None, f"{type(error).__name__}: {error}"


# --- encoding ---------------------------------------------------------------------------------------------------


def _batches(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def shard_batches(num_items: int, shard_size: int, batch_size: int) -> tuple[list[list[int]], list[int]]:
    """Positions ``0..num_items-1`` in shards of ``shard_size``, each cut into batches of at most ``batch_size``.

    Returns ``(batches, shard_of)``: the batches in order and the shard number of each; a batch never spans two
    shards, so a shard is complete as soon as its last batch is encoded.
    """
    batches: list[list[int]] = []
    shard_of: list[int] = []
    for shard, start in enumerate(range(0, num_items, shard_size)):
        positions = list(range(start, min(num_items, start + shard_size)))
        for batch in _batches(positions, batch_size):
            batches.append(batch)
            shard_of.append(shard)
    return batches, shard_of


def _encode_texts(
    encoder: TextEncoder, texts: list[str], batches: list[list[int]], want_tokens: bool
) -> Iterator[tuple[int, list[int], Encoded | None]]:
    """Yield (batch number, positions in ``texts`` encoded, outputs) per batch."""
    for b, batch in enumerate(batches):
        yield b, batch, encoder.encode([texts[i] for i in batch], want_tokens)


def _encode_images(
    encoder: ImageEncoder,
    paths: list[str],
    batches: list[list[int]],
    want_tokens: bool,
    corrupt: dict[int, str],
    root: Path | None = None,
) -> Iterator[tuple[int, list[int], Encoded | None]]:
    """Decode the next batch in a thread pool while the current one is encoded; yield (batch number, positions
    encoded, outputs or None when the whole batch was corrupt). Corrupt positions go to ``corrupt`` before the
    batch is yielded."""
    with ThreadPoolExecutor(IO_WORKERS) as pool:

        def submit(batch: list[int]) -> list[Future]:
            return [pool.submit(_decode_image, paths[i], encoder, root) for i in batch]

        pending = submit(batches[0]) if batches else []
        for b, batch in enumerate(batches):
            futures, pending = pending, (submit(batches[b + 1]) if b + 1 < len(batches) else [])
            good, pixels = [], []
            for pos, future in zip(batch, futures, strict=True):
                tensor, reason = future.result()
                if tensor is None:
                    corrupt[pos] = reason or "unreadable"
                else:
                    good.append(pos)
                    pixels.append(tensor)
            yield b, good, (encoder.encode(torch.stack(pixels), want_tokens) if good else None)  # (B, 3, H, W) in


def _dummy_output(encoder: Encoder, want_tokens: bool) -> Encoded:
    """Dims when no item has the modality: encode one blank input."""
    if isinstance(encoder, TextEncoder):
        return encoder.encode(["-"], want_tokens)
    encoder.load()
    return encoder.encode(encoder.preprocess(Image.new("RGB", (224, 224))).unsqueeze(0), want_tokens)


def _encode_missing(
    modality: str,
    encoder: Encoder,
    keys: list[str],
    sources: list[str],
    cache: EmbeddingCache,
    store_tokens: bool,
    shard_size: int,
    ranks: Ranks,
    root: Path | None = None,
) -> None:
    """Encode this process's shards of ``sources`` (cache keys ``keys``) into ``cache``, one flushed shard at a time.

    Corrupt images are recorded in the shard too, so a rerun counts them without decoding them again.
    """
    batches, shard_of = shard_batches(len(keys), shard_size, encoder.config.batch_size)
    mine = [b for b, shard in enumerate(shard_of) if ranks.owns(shard)]
    batches, shard_of = [batches[b] for b in mine], [shard_of[b] for b in mine]
    if not batches:
        return
    encoder.load()
    corrupt: dict[int, str] = {}
    if isinstance(encoder, TextEncoder):
        stream = _encode_texts(encoder, sources, batches, store_tokens)
    else:
        stream = _encode_images(encoder, sources, batches, store_tokens, corrupt, root)
    total = sum(len(batch) for batch in batches)
    bar = tqdm(total=total, desc=f"embed {modality} ({encoder.name})", unit="item", disable=not ranks.is_main)
    try:
        for b, positions, enc in stream:
            for p in batches[b]:
                if p in corrupt and corrupt[p] != "rejected_outside_root":  # a property of the path, not the bytes
                    cache.add_bad(keys[p], corrupt[p])
            if enc is not None:
                pooled = enc.pooled.numpy()  # (B, d)
                tokens = enc.tokens.to(torch.float16).numpy() if store_tokens else None  # (B, T, dt)
                tmask = enc.token_mask.numpy() if store_tokens else None  # (B, T)
                cache.add([keys[p] for p in positions], pooled, tokens, tmask)
            if b + 1 == len(batches) or shard_of[b + 1] != shard_of[b]:
                cache.flush()  # the shard is finished: written (temp file + rename) before the next starts
            bar.update(len(batches[b]))
    finally:
        bar.close()
        cache.flush()  # an interrupted shard keeps what it finished (a SIGKILL loses at most this shard)


def _fill(
    out: _Outputs,
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

    ``items["image_path"]`` holds the files to read (resolved, as :func:`image_paths` gives them).

    Items missing from the cache are encoded in shards of ``shard_size`` unique inputs (``embed.shard_size``);
    each finished shard is written to the cache at once, so a killed run keeps every finished shard. With several
    processes (``ranks``, :mod:`pipeline.features.ranks`) each encodes its share of the shards, and only rank 0
    assembles the outputs from the cache and returns the entry (the others return None).
    """
    start = time.perf_counter()
    n = len(items)
    item_ids = items["item_id"].to_list()
    if modality == "text":
        raw = items["text"].to_list()
        inputs = _text_inputs(raw)
    else:
        raw = items["image_path"].to_list()
        inputs = _image_inputs(item_ids, raw, root)

    identity = encoder.identity()
    identity_hash = sha256_json(identity)
    cache = EmbeddingCache(cache_dir, modality, encoder.name, identity, identity_hash, shard_size=shard_size)

    # Unique keys -> item rows (identical inputs are encoded once).
    rows_by_key: dict[str, list[int]] = {}
    for i, digest in enumerate(inputs.digests):
        if digest is not None:
            rows_by_key.setdefault(item_key(identity_hash, digest), []).append(i + 1)
    known_bad = {k for k in rows_by_key if k in cache.bad}
    miss_keys = [k for k in rows_by_key if not cache.has(k, store_tokens) and k not in known_bad]
    cache_hits = sum(len(v) for k, v in rows_by_key.items() if k not in miss_keys)
    ranks.barrier()  # every process has read the cache before any writes to it: they agree on what is missing

    if miss_keys:
        sources = [raw[rows_by_key[k][0] - 1] for k in miss_keys]  # one input per unique key
        _encode_missing(modality, encoder, miss_keys, sources, cache, store_tokens, shard_size, ranks, root)
    ranks.barrier()  # every process's shards are in the cache
    if not ranks.is_main:
        return None
    if ranks.world > 1:  # read the shards the other processes wrote
        cache = EmbeddingCache(cache_dir, modality, encoder.name, identity, identity_hash, shard_size=shard_size)
    corrupt: dict[str, str] = {k: cache.bad[k] for k in rows_by_key if k in cache.bad}  # key -> reason
    hit_keys = [k for k in rows_by_key if cache.has(k, store_tokens)]
    lost = [k for k in rows_by_key if k not in corrupt and not cache.has(k, store_tokens)]
    if lost:
        raise RuntimeError(
            f"{len(lost)} {modality} input(s) are not in the embedding cache {cache.dir} after encoding (e.g. item "
            f"{item_ids[rows_by_key[lost[0]][0] - 1]!r}); was a shard removed meanwhile? Rerun `dvc repro embed`."
        )
    encoded = sum(1 for k in miss_keys if k not in corrupt)

    out = _Outputs(out_dir, modality, n + 1, store_tokens)
    mask = np.zeros(n + 1, dtype=bool)  # (N+1,)
    pending, reencoded = hit_keys, 0
    while pending:
        done: set[str] = set()
        try:
            _fill(out, mask, cache, pending, rows_by_key, store_tokens, done)
            pending = []
        except CorruptShardError as bad:  # named, skipped, and its inputs encoded again into a new shard
            cache.discard(bad.shard)
            again = [k for k in bad.keys if not cache.has(k, store_tokens)]
            sources = [raw[rows_by_key[k][0] - 1] for k in again]
            _encode_missing(modality, encoder, again, sources, cache, store_tokens, shard_size, SINGLE, root)
            reencoded += len(again)
            pending = [k for k in pending if k not in done and cache.has(k, store_tokens)]
    encoded += reencoded

    if out.pooled is None:
        dummy = _dummy_output(encoder, store_tokens)
        out.ensure(dummy.pooled.shape[1], None if dummy.tokens is None else tuple(dummy.tokens.shape[1:]))
    out.commit(mask)

    corrupt_items = sorted(r for k in corrupt for r in rows_by_key[k])
    examples = inputs.examples
    if corrupt_items:
        examples["corrupt"] = [
            {"item_id": item_ids[rows_by_key[k][0] - 1], "path": str(raw[rows_by_key[k][0] - 1]), "reason": reason}
            for k, reason in list(corrupt.items())[:5]
        ]
        logger.warning("%d corrupt image(s) masked as missing, e.g. %s", len(corrupt_items), examples["corrupt"][0])

    files = feature_files(modality)
    entry: dict[str, Any] = {
        "enabled": True,
        **encoder.describe(),
        "identity_hash": identity_hash,
        "file": files["pooled"],
        "mask_file": files["mask"],
        "dim": int(out.pooled.shape[1]),
        "dtype": "float32",
        "tokens_file": files["tokens"] if store_tokens else None,
        "tokens_mask_file": files["tokens_mask"] if store_tokens else None,
        "tokens_shape": list(out.tokens_shape) if store_tokens else None,
        "tokens_dtype": "float16" if store_tokens else None,
        "items": n,
        "present": int(mask.sum()),
        **inputs.counts,
        "corrupt": len(corrupt_items),
        "cache_hits": cache_hits,
        "cache_misses": sum(len(rows_by_key[k]) for k in miss_keys),
        "encoded": encoded,
        "cache_dir": str(cache.dir),
        "inputs_hash": digests_hash(inputs.digests),  # the content encoded: checked by every reader (store.py)
        **({"files_hash": files_hash(raw)} if modality == "image" else {}),
        "params_hash": sha256_json(asdict(encoder.config)),
        "examples": {k: v for k, v in examples.items() if v},
        "seconds": round(time.perf_counter() - start, 3),
    }
    return entry


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
    items = read_items(items_path, need_images=encoders["image"] is not None)
    root = image_root(items_path.parent)  # every image is checked against it when it is opened
    if encoders["image"] is not None:  # relative paths are relative to the prepared folder, not the working directory
        paths = resolve_image_paths(items["image_path"].to_list(), items_path.parent, root)
        items = items.with_columns(pl.Series("image_path", paths, dtype=pl.String))
    if ranks.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / MANIFEST).unlink(missing_ok=True)  # no manifest until every file below is complete
        for leftover in out_dir.glob(".tmp-*"):  # temporaries of an interrupted run
            leftover.unlink(missing_ok=True)
        if words is None:
            (out_dir / WORDS_FILE).unlink(missing_ok=True)
    logger.info("embed: %d items from %s on %s", len(items), items_path, device)

    modalities: dict[str, Any] = {}
    for modality, encoder in encoders.items():
        if encoder is None:
            if ranks.is_main:
                for name in feature_files(modality).values():
                    (out_dir / name).unlink(missing_ok=True)
            modalities[modality] = {"enabled": False, "encoder": "none"}
            logger.info("embed %s: disabled (embed.%s.name = none)", modality, modality)
            continue
        as_words = modality == "image" and words is not None  # image tokens are then the words, not CLIP patches
        m = embed_modality(
            modality,
            encoder,
            items,
            out_dir,
            cache_dir,
            config.store_tokens and not as_words,
            shard_size=shard_size,
            ranks=ranks,
            root=root,
        )
        if m is None:  # another process than rank 0: its shards are in the cache
            continue
        if as_words:
            m = words.write(m, items, out_dir, cache_dir, config.store_tokens, feature_files(modality))
        elif modality == "image":
            m["representation"] = "embedding"
        modalities[modality] = m
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

    if not ranks.is_main:
        return None
    manifest = {
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
    write_json_atomic(out_dir / MANIFEST, manifest)
    return manifest
