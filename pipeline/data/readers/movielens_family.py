"""GroupLens MovieLens 100K and 20M/25M/32M/latest (the 1M ``.dat`` files are read by ``movielens.py``).

- **100K** (``ml-100k/``): ``u.data`` = ``user \\t item \\t rating \\t timestamp`` (seconds), ``u.item`` =
  ``movie id | title | release date | video release date | IMDb URL | 19 genre flags`` in **latin-1**,
  ``u.genre`` = ``name|index`` (the built-in list is used when it is absent).
- **20M / 25M / 32M / latest** (``ml-25m/``): ``ratings.csv`` = ``userId,movieId,rating,timestamp`` (seconds, with
  header), ``movies.csv`` = ``movieId,title,genres`` (UTF-8, titles with commas quoted, genres ``A|B`` or
  ``(no genres listed)``). Ratings are scanned lazily (32M rows): one streaming pass counts the drops.

Item text is the same as for ML-1M: "Toy Story (1995). Genres: Animation, Children's, Comedy", with ``title``
(without the year), ``year`` and ``genres`` kept as attributes. MovieLens has no images: ``image_ref`` is null
(set ``data.images_dir`` to a folder of ``<movieId>.jpg`` posters to use real images).

Bad rows: ``missing_user``, ``missing_item``, ``missing_timestamp``, ``bad_timestamp`` are counted and dropped;
ratings of movie ids absent from the movie list are dropped by prepare (``unknown_item``); a rating that is not a
number becomes null (counted in a note). Movies without an id and repeated movie ids in the movie list are skipped
(first kept) and counted in the notes.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path

import polars as pl

from pipeline.config import DataConfig
from pipeline.data.readers import decode_lines
from pipeline.data.readers.movielens import movie_items_frame, split_title_year
from pipeline.data.readers.rawio import check_delimited, check_notes, unique_items, validate_interactions
from pipeline.data.schema import DataFormatError, RawData

log = logging.getLogger(__name__)

GENRES_100K = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip
FIX_100K = (
    "data.source=movielens100k reads u.data and u.item from data.path (the extracted ml-100k folder); get it with "
    "python -m stages.download movielens100k, or from https://grouplens.org/datasets/movielens/100k/"
)
FIX_CSV = (
    "data.source=movielens_csv reads ratings.csv and movies.csv from data.path (an extracted ml-20m, ml-25m, ml-32m "
    "or ml-latest folder); get one with python -m stages.download movielens25m"
)


def _decode(path: Path, fix: str, notes: list[str] | None = None) -> str:
    """The file as text: UTF-8, else latin-1 (the GroupLens 100K files), decided per line."""
    if not path.is_file():
        raise DataFormatError(f"{path}: file not found. Fix: {fix}")
    return decode_lines(path.read_bytes(), path, notes)


def movie_items(
    movie_id: pl.Series, full_title: pl.Series, genres: pl.Series, path: Path, notes: list[str]
) -> pl.DataFrame:
    """``item_id, text, image_ref, title, year, genres`` with text "Title (year). Genres: a, b" (as for ML-1M);
    movies without an id are skipped, a repeated id keeps its first row, both counted in a note on ``path``."""
    title, year = split_title_year(full_title)
    frame = pl.DataFrame(
        {
            "item_id": movie_id.cast(pl.String).str.strip_chars(),
            "title": title.fill_null(""),
            "year": year,
            "genres": genres.cast(pl.List(pl.String)),
        }
    )
    frame = unique_items(frame, "item_id", path, notes)
    return movie_items_frame(frame["item_id"], frame["title"], frame["year"], frame["genres"])


def _result(frame: pl.LazyFrame, items: pl.DataFrame, files: list[Path], source: str, file_notes: list[str]) -> RawData:
    check = validate_interactions(frame)
    drops = check.drops
    notes = [
        "MovieLens timestamps have one-second resolution; equal timestamps are ordered by file row.",
        *file_notes,
        *check_notes(check, source),
    ]
    log.info("%s: kept %s ratings, %s movies; drops %s", files[0], f"{check.kept:,}", items.height, dict(+drops))
    return RawData(interactions=check.interactions, items=items, source_files=files, drops=+drops, notes=notes)


def read_movielens100k(cfg: DataConfig) -> RawData:
    """GroupLens ``ml-100k`` (``u.data``, ``u.item``) at ``data.path``."""
    if cfg.path is None:
        raise DataFormatError(f"data.source=movielens100k needs data.path. Fix: {FIX_100K}")
    root = Path(cfg.path)
    data_path, item_path = root / "u.data", root / "u.item"
    if not data_path.is_file():
        raise DataFormatError(f"{data_path}: file not found. Fix: {FIX_100K}")
    names = list(GENRES_100K)
    if (root / "u.genre").is_file():
        pairs = [line.rsplit("|", 1) for line in _decode(root / "u.genre", FIX_100K).splitlines() if "|" in line]
        by_index = {int(i): n for n, i in pairs if i.strip().isdigit()}
        names = [by_index.get(i, n) for i, n in enumerate(GENRES_100K)]
    file_notes = check_delimited(data_path, "\t", header=False, fix=FIX_100K).notes()
    check_delimited(item_path, "|", header=False, fix=FIX_100K, quoting=False)  # latin-1: decoded per line below
    text = _decode(item_path, FIX_100K, file_notes)
    meta = pl.read_csv(
        io.BytesIO(text.encode("utf-8")), separator="|", has_header=False, quote_char=None, infer_schema=False
    )
    if meta.width < 5 + len(names):
        raise DataFormatError(f"{item_path}: expected {5 + len(names)} '|'-separated fields, found {meta.width}. "
                              f"Fix: {FIX_100K}")  # fmt: skip
    flags = meta.columns[5 : 5 + len(names)]
    genres = meta.select(
        pl.concat_list([pl.when(pl.col(c) == "1").then(pl.lit(n)) for c, n in zip(flags, names, strict=True)])
        .list.drop_nulls()
        .alias("genres")
    )["genres"]
    items = movie_items(meta[meta.columns[0]], meta[meta.columns[1]], genres, item_path, file_notes)
    scan = pl.scan_csv(
        data_path, separator="\t", has_header=False, new_columns=["user_id", "item_id", "rating", "ts_raw"],
        infer_schema=False, encoding="utf8-lossy",
    )  # fmt: skip
    frame = scan.with_row_index("row").select(
        "user_id", "item_id", "ts_raw", pl.col("rating"), pl.col("row").cast(pl.Int64)
    )
    return _result(frame, items, [data_path, item_path], "movielens100k", file_notes)


def read_movielens_csv(cfg: DataConfig) -> RawData:
    """GroupLens ``ml-20m`` / ``ml-25m`` / ``ml-32m`` / ``ml-latest`` (``ratings.csv``, ``movies.csv``)."""
    if cfg.path is None:
        raise DataFormatError(f"data.source=movielens_csv needs data.path. Fix: {FIX_CSV}")
    root = Path(cfg.path)
    ratings_path, movies_path = root / "ratings.csv", root / "movies.csv"
    file_notes = [
        *check_delimited(ratings_path, ",", header=True, fix=FIX_CSV).notes(),
        *check_delimited(movies_path, ",", header=True, fix=FIX_CSV).notes(),
    ]
    movies = pl.read_csv(movies_path, infer_schema=False, encoding="utf8-lossy")
    scan = pl.scan_csv(ratings_path, infer_schema=False, encoding="utf8-lossy")
    for path, columns, wanted in (
        (movies_path, movies.columns, ("movieId", "title", "genres")),
        (ratings_path, scan.collect_schema().names(), ("userId", "movieId", "rating", "timestamp")),
    ):
        missing = [c for c in wanted if c not in columns]
        if missing:
            raise DataFormatError(f"{path}: missing column(s) {', '.join(missing)}. Fix: {FIX_CSV}")
    genres = (
        movies["genres"]
        .fill_null("")
        .str.split("|")
        .list.eval(pl.element().filter((pl.element() != "") & (pl.element() != "(no genres listed)")))
    )
    items = movie_items(movies["movieId"], movies["title"], genres, movies_path, file_notes)
    frame = scan.with_row_index("row").select(
        pl.col("userId").alias("user_id"),
        pl.col("movieId").alias("item_id"),
        pl.col("timestamp").alias("ts_raw"),
        pl.col("rating"),
        pl.col("row").cast(pl.Int64),
    )
    return _result(frame, items, [ratings_path, movies_path], "movielens_csv", file_notes)


def read_movielens_family(cfg: DataConfig) -> RawData:
    """Any GroupLens layout at ``data.path``: ``u.data`` (100K), ``ratings.csv`` (20M+) or ``ratings.dat`` (1M/10M)."""
    root = Path(cfg.path) if cfg.path is not None else None
    if root is not None and (root / "u.data").is_file():
        return read_movielens100k(cfg)
    if root is not None and (root / "ratings.csv").is_file():
        return read_movielens_csv(cfg)
    if root is not None and (root / "ratings.dat").is_file():
        from pipeline.data.readers.movielens import read_movielens

        return read_movielens(cfg)
    raise DataFormatError(
        f"data.path = {cfg.path!r} holds no MovieLens ratings (u.data, ratings.csv or ratings.dat). Fix: point "
        "data.path at an extracted GroupLens folder (python -m stages.download movielens25m)"
    )
