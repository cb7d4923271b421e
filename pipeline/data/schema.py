"""The contract between a raw-format reader and the cleaning step (see DESIGN.md, data contracts).

A reader turns one source's files into two polars frames with fixed column names and types; everything after
that (dedupe, k-core, tie-breaking, id mapping, splits) is source-agnostic and lives in ``pipeline.data.prepare``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

# Interactions, one row per event. ``row`` is the 0-based position in the source (file order), used to break
# timestamp ties deterministically. ``rating`` may be null where the source has none.
INTERACTION_SCHEMA: dict[str, pl.DataType] = {
    "user_id": pl.String(),
    "item_id": pl.String(),
    "timestamp": pl.Int64(),
    "rating": pl.Float64(),
    "row": pl.Int64(),
}

# Items, one row per item id. ``text`` is what text encoders read (may be empty, never null). ``image_ref`` is a
# local path or URL of the item's image, or null. Readers may add source-specific attribute columns.
ITEM_REQUIRED_COLUMNS: dict[str, pl.DataType] = {
    "item_id": pl.String(),
    "text": pl.String(),
    "image_ref": pl.String(),
}


@dataclass
class RawData:
    """What a reader returns."""

    interactions: pl.LazyFrame
    items: pl.DataFrame
    source_files: list[Path]
    # Rows the reader itself dropped (malformed line, missing field, ...), counted by reason. Never drop silently.
    drops: Counter[str] = field(default_factory=Counter)
    notes: list[str] = field(default_factory=list)  # human-readable remarks copied into stats.json


class DataFormatError(ValueError):
    """A raw file is malformed. The message names the file, the line (1-based) and how to fix it."""
