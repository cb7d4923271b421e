"""MicroLens (Ni et al. 2023, westlake-repl/MicroLens): interaction pairs + item titles + cover images.

Files in ``data.path`` (names as published for MicroLens-100k; any ``*pairs*.csv`` / ``*title*.csv`` works):

- ``MicroLens-100k_pairs.csv``: ``user,item,timestamp`` (header optional; ``userID,videoID`` also accepted).
  Timestamps are in **milliseconds** (detected by magnitude and floored to seconds).
- ``MicroLens-100k_title_en.csv``: ``item,title`` without header, and titles are *not* quoted: everything after the
  first comma is the title (``12,Funny cat, part 2``). A quoted title is unquoted.
- ``MicroLens-100k_covers/<item>.jpg``: set ``data.images_dir`` to this folder (then images are found by item id);
  ``image_ref`` is filled with the cover path when the folder is found under ``data.path``.

Bad rows: ``missing_user``, ``missing_item``, ``missing_timestamp``, ``bad_timestamp`` are counted and dropped;
pairs of items without a title are dropped by prepare (``unknown_item``). Title lines without an id and repeated
ids (first kept) are skipped and reported in the notes.
"""

from __future__ import annotations

import logging
from pathlib import Path

import polars as pl

from pipeline.config import DataConfig
from pipeline.data.paths import safe_file_stem_expr
from pipeline.data.readers.rawio import check_delimited, check_notes, unique_items, validate_interactions
from pipeline.data.schema import DataFormatError, RawData
from pipeline.data.text import clean_text_series

log = logging.getLogger(__name__)

SOURCE = "microlens"
USER_NAMES = ("user", "userid", "user_id")
ITEM_NAMES = ("item", "videoid", "item_id", "video_id")
TIME_NAMES = ("timestamp", "time", "ts")
FIX = (
    "data.source=microlens reads <name>_pairs.csv (user,item,timestamp) and <name>_title_en.csv (item,title) from "
    "data.path; download MicroLens-100k from https://recsys.westlake.edu.cn/MicroLens-100k-Dataset/"
)


def _find(root: Path, patterns: tuple[str, ...], what: str) -> Path:
    """The one file matching the first pattern that matches anything."""
    found: list[Path] = []
    for pattern in patterns:
        found = sorted(p for p in root.glob(pattern) if p.is_file())
        if found:
            break
    if not found:
        raise DataFormatError(f"data.source={SOURCE}: no {what} file ({', '.join(patterns)}) in {root}. Fix: {FIX}")
    if len(found) > 1:
        names = ", ".join(p.name for p in found)
        raise DataFormatError(f"data.source={SOURCE}: several {what} files in {root} ({names}). Fix: keep one")
    return found[0]


def _column(names: list[str], wanted: tuple[str, ...], path: Path) -> str:
    for name in names:
        if name.strip().lower() in wanted:
            return name
    header = ", ".join(names)
    raise DataFormatError(f"{path}: no column named one of {', '.join(wanted)} (header: {header}). Fix: {FIX}")


def scan_pairs(path: Path, notes: list[str]) -> pl.LazyFrame:
    """``user_id, item_id, ts_raw, rating (null), row`` from a pairs CSV with or without header."""
    with open(path, "rb") as f:
        first = f.readline().decode("utf-8", errors="replace").strip().lstrip("\ufeff")
    has_header = not first.split(",")[0].strip().isdigit()
    notes.extend(check_delimited(path, ",", header=has_header, fix=FIX).notes())
    scan = pl.scan_csv(path, has_header=has_header, infer_schema=False, encoding="utf8-lossy")
    names = scan.collect_schema().names()
    if has_header:
        user, item, ts = (_column(names, w, path) for w in (USER_NAMES, ITEM_NAMES, TIME_NAMES))
    elif len(names) >= 3:
        user, item, ts = names[:3]
    else:
        raise DataFormatError(f"{path}: expected 3 comma-separated fields (user,item,timestamp). Fix: {FIX}")
    return scan.with_row_index("row").select(
        pl.col(user).alias("user_id"),
        pl.col(item).alias("item_id"),
        pl.col(ts).alias("ts_raw"),
        pl.lit(None, dtype=pl.Float64).alias("rating"),
        pl.col("row").cast(pl.Int64),
    )


def read_titles(path: Path, notes: list[str]) -> pl.DataFrame:
    """``item_id, title`` from an unquoted ``item,title`` file (the title may contain commas)."""
    notes.extend(check_delimited(path, ",", header=False, fix=FIX, fields=False).notes())
    lines = pl.read_csv(
        path,
        has_header=False,
        separator="\x1f",  # never in the file: one column holding the whole line
        quote_char=None,
        new_columns=["line"],
        infer_schema=False,
        encoding="utf8-lossy",
        truncate_ragged_lines=True,
    )
    parts = lines["line"].str.strip_prefix("\ufeff").str.splitn(",", 2).struct.rename_fields(["item_id", "title"])
    frame = (
        pl.DataFrame({"parts": parts})
        .unnest("parts")
        .with_columns(pl.col("item_id").str.strip_chars().str.strip_chars('"'), pl.col("title").str.strip_chars())
    )
    if frame.height and not frame["item_id"][0].isdigit() and frame["item_id"][0].lower() in ITEM_NAMES:
        frame = frame.slice(1)  # a header line
    title = pl.col("title")
    quoted = title.str.starts_with('"') & title.str.ends_with('"') & (title.str.len_chars() > 1)
    unquoted = title.str.slice(1, title.str.len_chars() - 2).str.replace_all('""', '"')
    frame = frame.with_columns(pl.when(quoted).then(unquoted).otherwise(title).alias("title"))
    unique = unique_items(frame, "item_id", path, notes)
    return unique.with_columns(pl.col("title").map_batches(clean_text_series, return_dtype=pl.String).fill_null(""))


def _covers_dir(root: Path, images_dir: str | None) -> Path | None:
    if images_dir is not None:
        return Path(images_dir)
    found = sorted(p for p in root.iterdir() if p.is_dir() and "cover" in p.name.lower())
    return found[0].resolve() if found else None


def read_microlens(cfg: DataConfig) -> RawData:
    """MicroLens-style pairs + titles (+ covers) at ``data.path``."""
    if cfg.path is None:
        raise DataFormatError(f"data.source={SOURCE} needs data.path. Fix: {FIX}")
    root = Path(cfg.path)
    if not root.is_dir():
        raise DataFormatError(f"data.source={SOURCE}: data.path = {str(root)!r} is not a directory. Fix: {FIX}")
    pairs_path = _find(root, ("*pairs*.csv",), "interaction pairs")
    titles_path = _find(root, ("*title_en*.csv", "*title*.csv"), "item titles")
    notes = [f"MicroLens pairs from {pairs_path.name}, titles from {titles_path.name}"]
    titles = read_titles(titles_path, notes)
    covers = _covers_dir(root, cfg.images_dir)
    image_ref = (
        pl.concat_str([pl.lit(f"{covers}/"), safe_file_stem_expr(pl.col("item_id")), pl.lit(".jpg")])
        if covers is not None
        else pl.lit(None, dtype=pl.String)
    )
    items = titles.select("item_id", pl.col("title").alias("text"), image_ref.alias("image_ref"), "title")
    check = validate_interactions(scan_pairs(pairs_path, notes))
    drops = check.drops
    notes.extend(check_notes(check, SOURCE))
    if covers is None:
        notes.append("no covers folder found under data.path; set data.images_dir to the MicroLens covers folder")
    log.info("%s: kept %s pairs, %s items; drops %s", pairs_path, f"{check.kept:,}", items.height, dict(drops))
    return RawData(
        interactions=check.interactions,
        items=items,
        source_files=[pairs_path, titles_path],
        drops=+drops,
        notes=notes,
    )
