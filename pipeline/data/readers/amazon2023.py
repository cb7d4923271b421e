"""Amazon Reviews 2023 (McAuley Lab): ``<Category>.jsonl[.gz]`` reviews + ``meta_<Category>.jsonl[.gz]``.

Reviews: ``{"rating": 5.0, "title", "text", "images", "asin", "parent_asin", "user_id", "timestamp":
1588687728923, "helpful_vote", "verified_purchase"}``. The item id is ``parent_asin`` (the product; ``asin`` is
a colour/size variant, and the meta file is keyed by ``parent_asin``). Timestamps are in **milliseconds**; they
are detected by magnitude (see ``rawio.epoch_seconds``) and floored to seconds.

Meta: ``{"main_category", "title", "features": [...], "description": [...], "images": [{"thumb", "large",
"variant", "hi_res"}], "store", "categories": [...], "details": {...}, "parent_asin", ...}``. Item text =
title. Features. Description (HTML stripped). Categories. Store; ``image_ref`` = the first image's ``hi_res``,
else its ``large`` (else the first of either in the list): a URL, fetched by ``python -m stages.download``.

Bad rows, counted in ``RawData.drops``: malformed JSON lines (``malformed_json``), blank lines (``blank_line``),
rows without user, item or timestamp (``missing_user``/``missing_item``/``missing_timestamp``) or with a timestamp
that is not a positive number (``bad_timestamp``). Reviews of items absent from the meta file are kept here and
dropped by prepare as ``unknown_item`` (they have neither text nor image). Lines with invalid UTF-8 are decoded
with U+FFFD and kept (a note says how many). Meta records that are malformed, lack ``parent_asin`` or repeat one
(first kept) are skipped and reported in the notes: they are not interaction rows.
"""

from __future__ import annotations

import logging
from pathlib import Path

import polars as pl

from pipeline.config import DataConfig
from pipeline.data.readers.rawio import (
    CHUNK_BYTES,
    BlockChecker,
    check_notes,
    find_category_files,
    read_json_lines,
    read_reviews,
    unique_items,
)
from pipeline.data.schema import DataFormatError, RawData
from pipeline.data.text import clean_text_series, compose_text, join_list, labelled

log = logging.getLogger(__name__)

SOURCE = "amazon2023"
REVIEW_SCHEMA: dict[str, pl.DataType] = {
    "user_id": pl.String(),
    "parent_asin": pl.String(),
    "timestamp": pl.String(),
    "rating": pl.String(),
}
_IMAGE = pl.Struct({"hi_res": pl.String(), "large": pl.String()})
META_SCHEMA: dict[str, pl.DataType] = {
    "parent_asin": pl.String(),
    "title": pl.String(),
    "features": pl.List(pl.String()),
    "description": pl.List(pl.String()),
    "categories": pl.List(pl.String()),
    "store": pl.String(),
    "main_category": pl.String(),
    "images": pl.List(_IMAGE),
}


def first_image(column: str = "images") -> pl.Expr:
    """The first image's ``hi_res``, else its ``large``; if that one has neither, the first available in the list."""
    per_image = pl.element().struct.field("hi_res").fill_null(pl.element().struct.field("large"))
    return pl.col(column).list.eval(per_image.filter(per_image.str.len_bytes() > 0)).list.first()


def read_meta(path: Path, wanted: pl.Series | None, notes: list[str]) -> pl.DataFrame:
    """Items frame from a 2023 meta file, restricted to ``wanted`` item ids when given."""
    meta, report = read_json_lines(path, META_SCHEMA, chunk_bytes=CHUNK_BYTES)
    notes.extend(report.notes("meta"))
    unique = unique_items(meta.with_columns(pl.col("parent_asin").str.strip_chars()), "parent_asin", path, notes)
    if wanted is not None:
        unique = unique.filter(pl.col("parent_asin").is_in(wanted.implode()))
    frame = unique.select(
        pl.col("parent_asin").alias("item_id"),
        pl.col("title").map_batches(clean_text_series, return_dtype=pl.String),
        join_list("features", ". ").map_batches(clean_text_series, return_dtype=pl.String),
        join_list("description", " ").map_batches(clean_text_series, return_dtype=pl.String),
        join_list("categories", " > ").map_batches(clean_text_series, return_dtype=pl.String),
        pl.col("store").map_batches(clean_text_series, return_dtype=pl.String),
        pl.col("main_category").map_batches(clean_text_series, return_dtype=pl.String),
        first_image().alias("image_ref"),
    )
    return frame.select(
        "item_id",
        compose_text(
            [
                pl.col("title"),
                pl.col("features"),
                pl.col("description"),
                labelled("Categories", pl.col("categories")),
                labelled("Store", pl.col("store")),
            ]
        ).alias("text"),
        "image_ref",
        pl.col("title").fill_null(""),
        pl.col("store"),
        pl.col("main_category"),
        pl.col("categories"),
    )


def read_amazon2023(cfg: DataConfig) -> RawData:
    """Reviews and metadata of one Amazon 2023 category at ``data.path`` (its directory or its reviews file)."""
    if cfg.path is None:
        raise DataFormatError(
            f"data.source={SOURCE} needs data.path: a directory with <Category>.jsonl.gz and meta_<Category>.jsonl.gz."
            f" Fix: run python -m stages.download {SOURCE} --category All_Beauty and set data.path to its --out"
        )
    reviews_path, meta_path, category = find_category_files(Path(cfg.path), SOURCE, "All_Beauty.jsonl.gz")
    columns = ["user_id", pl.col("parent_asin").alias("item_id"), pl.col("timestamp").alias("ts_raw"), "rating", "row"]
    checker = BlockChecker([pl.col(c) if isinstance(c, str) else c for c in columns])
    check, drops, report = read_reviews(reviews_path, REVIEW_SCHEMA, checker)
    notes = report.notes("review")
    wanted = check.interactions.select(pl.col("item_id").unique()).collect()["item_id"]
    items = read_meta(meta_path, wanted, notes)
    notes.extend(check_notes(check, SOURCE))
    notes.append(f"Amazon Reviews 2023, category {category}; item id = parent_asin")
    log.info(
        "%s: kept %s of %s reviews, %s items; drops %s",
        reviews_path.name, f"{check.kept:,}", f"{report.lines:,}", f"{items.height:,}", dict(+drops),
    )  # fmt: skip
    return RawData(
        interactions=check.interactions,
        items=items,
        source_files=[reviews_path, meta_path],
        drops=+drops,
        notes=notes,
    )
