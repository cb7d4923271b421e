"""H&M Personalized Fashion Recommendations (Kaggle): ``transactions_train.csv`` + ``articles.csv`` + ``images/``.

- ``transactions_train.csv``: ``t_dat,customer_id,article_id,price,sales_channel_id`` (31.8M rows). ``t_dat`` is
  a date (``2018-09-20``): **day resolution**, so a customer's purchases on one day tie and keep file order.
  ``article_id`` is a 10-character string with a leading zero (``0663713001``); it is read as text and left-padded
  to 10 digits, so a file re-saved by a tool that dropped the zero still matches ``articles.csv``. There is no
  rating (``rating`` is null); ``price`` and ``sales_channel_id`` are not used.
- ``articles.csv``: item text = prod_name. product_type_name. colour_group_name graphical_appearance_name.
  Section: section_name. Garment: garment_group_name. detail_desc.
- Images: ``images/<first 3 digits>/<article_id>.jpg`` (the id made safe as a file name by
  ``pipeline.data.paths.safe_file_stem``, so ``../x`` cannot leave the folder). ``image_ref`` is that path relative to
  ``data.images_dir`` when it is set (point it at the ``images`` folder), else the absolute path under
  ``<data.path>/images``; whether the file exists is checked later, when images are attached.

Bad rows: ``missing_user``, ``missing_item``, ``missing_timestamp``, ``bad_timestamp`` (not a ``YYYY-MM-DD``
date) are counted and dropped; transactions of articles missing from ``articles.csv`` are dropped by prepare
(``unknown_item``). Transactions are scanned lazily: counting the drops is one streaming pass, and the rows are
only materialised by prepare.
"""

from __future__ import annotations

import logging
from pathlib import Path

import polars as pl

from pipeline.config import DataConfig
from pipeline.data.paths import safe_file_stem_expr
from pipeline.data.readers.rawio import check_delimited, check_notes, unique_items, validate_interactions
from pipeline.data.schema import DataFormatError, RawData
from pipeline.data.text import clean_text_series, compose_text, labelled

log = logging.getLogger(__name__)

SOURCE = "hm"
TRANSACTIONS = "transactions_train.csv"
ARTICLES = "articles.csv"
TX_COLUMNS = ("t_dat", "customer_id", "article_id")
TEXT_COLUMNS = (
    "prod_name", "product_type_name", "colour_group_name", "graphical_appearance_name", "section_name",
    "garment_group_name", "detail_desc",
)  # fmt: skip
FIX = (
    "data.source=hm reads the Kaggle H&M files from data.path: transactions_train.csv, articles.csv (and images/). "
    "Download them from https://www.kaggle.com/competitions/h-and-m-personalized-fashion-recommendations/data"
)


def _require(path: Path, columns: list[str], wanted: tuple[str, ...]) -> None:
    if not path.is_file():
        raise DataFormatError(f"{path}: file not found. Fix: {FIX}")
    missing = [c for c in wanted if c not in columns]
    if missing:
        raise DataFormatError(
            f"{path}: missing column(s) {', '.join(missing)} (header: {', '.join(columns)}). Fix: {FIX}"
        )


def article_id(expr: pl.Expr) -> pl.Expr:
    """Article ids as 10-digit strings (``"663713001"`` -> ``"0663713001"``); other text is kept as it is."""
    s = expr.cast(pl.String).str.strip_chars()
    return pl.when(s.str.contains(r"^\d{1,9}$")).then(s.str.zfill(10)).otherwise(s)


def read_articles(path: Path, images_root: Path, relative: bool, notes: list[str]) -> pl.DataFrame:
    """Items frame from ``articles.csv`` (all columns read as text)."""
    if not path.is_file():
        raise DataFormatError(f"{path}: file not found. Fix: {FIX}")
    notes.extend(check_delimited(path, ",", header=True, fix=FIX).notes())
    raw = pl.read_csv(path, infer_schema=False, encoding="utf8-lossy")
    _require(path, raw.columns, ("article_id", "prod_name"))
    raw = raw.with_columns(
        [pl.lit(None, dtype=pl.String).alias(c) for c in TEXT_COLUMNS if c not in raw.columns]
    ).with_columns(article_id(pl.col("article_id")))
    cleaned = unique_items(raw, "article_id", path, notes).with_columns(
        [pl.col(c).map_batches(clean_text_series, return_dtype=pl.String) for c in TEXT_COLUMNS]
    )
    stem = safe_file_stem_expr(pl.col("article_id"))  # an id like "../x" must not leave the images folder
    folder = stem.str.slice(0, 3)
    prefix = "" if relative else f"{images_root}/"
    return cleaned.select(
        pl.col("article_id").alias("item_id"),
        compose_text(
            [
                pl.col("prod_name"),
                pl.col("product_type_name"),
                pl.concat_str(["colour_group_name", "graphical_appearance_name"], separator=" ", ignore_nulls=True),
                labelled("Section", pl.col("section_name")),
                labelled("Garment", pl.col("garment_group_name")),
                pl.col("detail_desc"),
            ]
        ).alias("text"),
        pl.concat_str([pl.lit(prefix), folder, pl.lit("/"), stem, pl.lit(".jpg")]).alias("image_ref"),
        pl.col("prod_name").fill_null("").alias("title"),
        pl.col("product_type_name"),
        pl.col("colour_group_name"),
    )


def read_hm(cfg: DataConfig) -> RawData:
    """H&M transactions and articles at ``data.path``."""
    if cfg.path is None:
        raise DataFormatError(f"data.source={SOURCE} needs data.path. Fix: {FIX}")
    root = Path(cfg.path)
    tx_path, articles_path = root / TRANSACTIONS, root / ARTICLES
    images_root = Path(cfg.images_dir) if cfg.images_dir is not None else (root / "images").resolve()
    notes = ["H&M t_dat has day resolution: a customer's purchases on the same day tie and are ordered by file row"]
    items = read_articles(articles_path, images_root, relative=cfg.images_dir is not None, notes=notes)

    if not tx_path.is_file():
        raise DataFormatError(f"{tx_path}: file not found. Fix: {FIX}")
    notes.extend(check_delimited(tx_path, ",", header=True, fix=FIX).notes())
    scan = pl.scan_csv(tx_path, infer_schema=False, encoding="utf8-lossy")
    _require(tx_path, scan.collect_schema().names(), TX_COLUMNS)
    frame = scan.with_row_index("row").select(
        pl.col("customer_id").alias("user_id"),
        article_id(pl.col("article_id")).alias("item_id"),
        pl.col("t_dat").alias("ts_raw"),
        pl.lit(None, dtype=pl.Float64).alias("rating"),
        pl.col("row").cast(pl.Int64),
    )
    day = pl.col("ts_raw").str.strip_chars().str.strptime(pl.Date, "%Y-%m-%d", strict=False)
    seconds = day.cast(pl.Datetime("ms")).dt.epoch("s")
    check = validate_interactions(frame, timestamp=seconds)
    drops = check.drops
    notes.extend(n for n in check_notes(check, SOURCE) if "midnight" not in n)
    log.info("%s: kept %s transactions, %s articles; drops %s", tx_path, f"{check.kept:,}", items.height, dict(drops))
    return RawData(
        interactions=check.interactions,
        items=items,
        source_files=[tx_path, articles_path],
        drops=+drops,
        notes=notes,
    )
