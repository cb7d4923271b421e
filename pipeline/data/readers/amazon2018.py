"""Amazon Review Data 2018 (Ni, Li & McAuley): ``<Category>_5.json.gz`` (or the full ``<Category>.json.gz``) +
``meta_<Category>.json.gz``. The 2014 files (``reviews_<Category>_5.json.gz``, Python-literal meta) read too.

Reviews: ``{"overall": 5.0, "verified", "reviewTime": "09 13, 2009", "reviewerID", "asin", "style",
"reviewerName", "reviewText", "summary", "unixReviewTime": 1252800000}``. The item id is ``asin``. Timestamps
are ``unixReviewTime`` (seconds), else ``reviewTime`` parsed as ``%m %d, %Y``; both have **day resolution**, so a
user's reviews on the same day tie (ordered by file row; see the note in stats.json).

Meta: ``{"asin", "title", "brand", "category": [...], "description": [...], "feature", "imageURL": [...],
"imageURLHighRes": [...], "main_cat", ...}`` (2014: ``"categories": [[...]]``, ``"imUrl"``). Item text = title.
Brand. Categories. Description (HTML stripped, entities decoded); ``image_ref`` = first ``imageURLHighRes``, else
first ``imageURL``, else first ``image``/``imUrl`` (a URL, fetched by ``python -m stages.download``).

Bad rows are handled as in the 2023 reader: ``malformed_json``, ``blank_line``, ``missing_user``, ``missing_item``,
``missing_timestamp``, ``bad_timestamp`` are counted and dropped; reviews of items without metadata are left to
prepare (``unknown_item``); skipped meta records are reported in the notes.
"""

from __future__ import annotations

import logging
from pathlib import Path

import polars as pl

from pipeline.config import DataConfig
from pipeline.data.readers.rawio import (
    BlockChecker,
    check_notes,
    epoch_seconds,
    find_category_files,
    read_json_lines,
    read_reviews,
    unique_items,
)
from pipeline.data.schema import DataFormatError, RawData
from pipeline.data.text import clean_text_series, compose_text, join_list, labelled

log = logging.getLogger(__name__)

SOURCE = "amazon2018"
REVIEW_SCHEMA: dict[str, pl.DataType] = {
    "reviewerID": pl.String(),
    "asin": pl.String(),
    "overall": pl.String(),
    "unixReviewTime": pl.String(),
    "reviewTime": pl.String(),
}
META_SCHEMA: dict[str, pl.DataType] = {
    "asin": pl.String(),
    "title": pl.String(),
    "brand": pl.String(),
    "main_cat": pl.String(),
    "category": pl.List(pl.String()),
    "categories": pl.List(pl.List(pl.String())),  # 2014
    "description": pl.List(pl.String()),
    "imageURLHighRes": pl.List(pl.String()),
    "imageURL": pl.List(pl.String()),
    "image": pl.List(pl.String()),
    "imUrl": pl.String(),  # 2014
}


def _first_url(column: str) -> pl.Expr:
    return pl.col(column).list.eval(pl.element().filter(pl.element().str.starts_with("http"))).list.first()


def review_seconds() -> pl.Expr:
    """``ts_raw`` (``unixReviewTime``, else ``reviewTime``) as epoch seconds: a number in any unit, or a
    "MM D, YYYY" date at midnight UTC."""
    text = pl.col("ts_raw").str.strip_chars().str.replace_all(r"\s+", " ")
    date = text.str.strptime(pl.Date, "%m %d, %Y", strict=False).cast(pl.Datetime("ms")).dt.epoch("s")
    return pl.coalesce(epoch_seconds(pl.col("ts_raw")), date)


def _categories() -> pl.Expr:
    """2018 ``category`` (a path) joined with " > "; 2014 ``categories`` (several paths) flattened, unique."""
    flat_2014 = pl.col("categories").list.eval(pl.element().list.join(" > ")).list.unique(maintain_order=True)
    as_2018 = join_list("category", " > ")
    joined_2014 = flat_2014.list.join("; ")
    return pl.coalesce(as_2018, pl.when(joined_2014.str.len_bytes() > 0).then(joined_2014)).alias("categories")


def read_meta(path: Path, wanted: pl.Series | None, notes: list[str]) -> pl.DataFrame:
    """Items frame from a 2018 (or 2014) meta file, restricted to ``wanted`` item ids when given."""
    meta, report = read_json_lines(path, META_SCHEMA)
    notes.extend(report.notes("meta"))
    unique = unique_items(meta.with_columns(pl.col("asin").str.strip_chars()), "asin", path, notes)
    if wanted is not None:
        unique = unique.filter(pl.col("asin").is_in(wanted.implode()))
    clean = {"return_dtype": pl.String}
    frame = unique.select(
        pl.col("asin").alias("item_id"),
        pl.col("title").map_batches(clean_text_series, **clean),
        pl.col("brand").map_batches(clean_text_series, **clean),
        pl.col("main_cat").map_batches(clean_text_series, **clean),
        _categories().map_batches(clean_text_series, **clean),
        join_list("description", " ").map_batches(clean_text_series, **clean),
        pl.coalesce(_first_url("imageURLHighRes"), _first_url("imageURL"), _first_url("image"), pl.col("imUrl"))
        .str.strip_chars()
        .alias("image_ref"),
    )
    return frame.select(
        "item_id",
        compose_text(
            [
                pl.col("title"),
                labelled("Brand", pl.col("brand")),
                labelled("Categories", pl.col("categories")),
                pl.col("description"),
            ]
        ).alias("text"),
        "image_ref",
        pl.col("title").fill_null(""),
        "brand",
        "main_cat",
        "categories",
    )


def read_amazon2018(cfg: DataConfig) -> RawData:
    """Reviews and metadata of one Amazon 2018 category at ``data.path`` (its directory or its reviews file)."""
    if cfg.path is None:
        raise DataFormatError(
            f"data.source={SOURCE} needs data.path: a directory with <Category>_5.json.gz and meta_<Category>.json.gz."
            f" Fix: run python -m stages.download {SOURCE} --category Arts_Crafts_and_Sewing and set data.path to it"
        )
    reviews_path, meta_path, category = find_category_files(Path(cfg.path), SOURCE, "Arts_Crafts_and_Sewing_5.json.gz")
    columns = [
        pl.col("reviewerID").alias("user_id"),
        pl.col("asin").alias("item_id"),
        pl.coalesce("unixReviewTime", "reviewTime").alias("ts_raw"),  # see review_seconds()
        pl.col("overall").alias("rating"),
        pl.col("row"),
    ]
    checker = BlockChecker(columns, timestamp=review_seconds())
    check, drops, report = read_reviews(reviews_path, REVIEW_SCHEMA, checker)
    notes = report.notes("review")
    wanted = check.interactions.select(pl.col("item_id").unique()).collect()["item_id"]
    items = read_meta(meta_path, wanted, notes)
    notes.extend(check_notes(check, SOURCE))
    if reviews_path.name.removesuffix(".gz").removesuffix(".json").endswith("_5"):
        notes.append(
            "5-core Amazon 2018 files have day-resolution timestamps: ties are common and are broken by file row"
        )
    notes.append(f"Amazon Reviews 2018, category {category}; item id = asin")
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
