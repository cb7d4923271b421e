"""What the embed stage reads: ``items.parquet`` checked, each item's input per modality, and their fingerprints.

An item's input is its text (non-empty) or its image file's bytes; :func:`text_inputs` and :func:`image_inputs` give
each item's content digest (:func:`pipeline.features.cache.content_digest`, the half of a cache key that depends on
the item) and count the items without one by reason. :func:`digests_hash` and :func:`files_hash` are the
fingerprints ``manifest.json`` records, which every reader of the features checks (``pipeline.features.store``).
"""

from __future__ import annotations

import hashlib
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from pipeline.data.images import checked_image, image_root, resolve_image_paths
from pipeline.features.cache import content_digest
from pipeline.io import read_parquet

logger = logging.getLogger(__name__)

IO_WORKERS = min(8, os.cpu_count() or 1)


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


# --- fingerprints -----------------------------------------------------------------------------------------------


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
        return digests_hash(text_inputs(items["text"].to_list()).digests)
    paths, root = image_paths(items, prepared_dir)
    return digests_hash(image_inputs(items["item_id"].to_list(), paths, root).digests)


# --- each item's input ------------------------------------------------------------------------------------------


@dataclass
class Inputs:
    """What one modality reads for every item (index i = item_idx i+1)."""

    digests: list[str | None]  # sha256 of the content, None where the item has none
    counts: dict[str, int]
    examples: dict[str, list[dict[str, str]]] = field(default_factory=dict)


def text_inputs(texts: list[str]) -> Inputs:
    """Every item's text digest; an empty (or blank) text is no input."""
    digests = [content_digest(t) if t.strip() else None for t in texts]
    empty = sum(d is None for d in digests)
    return Inputs(digests, {"missing": empty, "empty_text": empty})


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


def image_inputs(item_ids: list[str], paths: list[str | None], root: Path | None) -> Inputs:
    """Every item's image file digest (files read in a thread pool); a missing, unreadable or outside-``root`` file
    is no input, counted by reason (a few named in ``examples``)."""
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
    return Inputs([d for _, d in results], counts, examples)
