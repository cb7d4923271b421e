"""Your own tables (``data.source: table``): interactions and items as CSV, TSV, Parquet or JSON Lines.

``data.table.interactions`` and ``data.table.items`` are each a file, a folder (every table file under it, in
sorted path order; names starting with ``.`` or ``_``, like Spark's ``_SUCCESS``, are skipped) or a glob
(``events/part-*.parquet``); relative paths are under ``data.path`` when it is set. The format comes from the
extension (``.csv``; ``.tsv``/``.tab``; ``.parquet``/``.pq``; ``.jsonl``/``.ndjson``/``.json``, optionally
``.gz``) or from ``data.table.format``. CSV/TSV files need a header row; every field is read as text.

Interactions: ``data.table.columns`` names the user, item and timestamp columns (and an optional rating). Ids may
be text or numbers (a float id such as ``12.0``, what pandas writes for an int column with nulls, becomes ``"12"``).
Timestamps: epoch numbers (``timestamp_unit``: ``s``/``ms``/``us``/``ns``, or ``auto`` by magnitude), ISO 8601
text, or Parquet date-times; values without a time zone need ``data.table.timezone`` (see
:mod:`pipeline.data.readers.timestamps`). CSV, TSV and Parquet are scanned lazily (only the mapped columns are read,
and prepare streams them), so a multi-GB Parquet file does not need to fit in memory; JSON Lines are read in
blocks keeping only the compact valid rows.

Items: ``data.table.item_columns`` names the id column, one or more text columns (in order; a list column such as
tags is joined with ", "; HTML and whitespace are cleaned as for every source) and an optional image column: a
local path, relative to ``data.images_dir`` (which must then be set), or an http(s) URL that
``python -m stages.download table`` fetches into ``data.images_dir`` (prepare never goes online). A local path
that leaves ``data.images_dir`` (``../x.jpg``, an absolute path elsewhere) is an error naming the file and row.
The item text is the text columns joined: the first unlabelled, the others labelled with their column name (or
``data.table.text_labels``); ``title`` is the first text column.

Bad rows, counted and dropped: ``missing_user``, ``missing_item``, ``missing_timestamp``, ``bad_timestamp``
(unparseable, <= 0 or after 2100), and for JSON Lines ``malformed_json`` and ``blank_line``; ragged CSV rows, a
missing column, an unsupported column type, and ISO timestamps without a zone when none is stated are errors naming
the file, the row or column, and the fix. Item rows without an id, or repeating one (the first is kept), are
skipped and reported in the notes.
"""

from __future__ import annotations

import glob
import json
import logging
import os
from collections import Counter
from pathlib import Path

import polars as pl

from pipeline.config import ConfigError, DataConfig, TableConfig, TableItemColumns
from pipeline.data.paths import inside_root
from pipeline.data.readers.rawio import (
    BlockChecker,
    InteractionCheck,
    check_delimited,
    check_notes,
    open_binary,
    read_json_lines,
    unique_items,
    validate_interactions,
)
from pipeline.data.readers.timestamps import (
    check_timezone,
    datetime_seconds,
    iso_seconds,
    naive_iso,
    numeric_seconds,
    text_seconds,
)
from pipeline.data.schema import DataFormatError, RawData
from pipeline.data.text import clean_text_series, compose_fields
from pipeline.schema import check_value

log = logging.getLogger(__name__)

SOURCE = "table"
FORMATS = {
    ".parquet": "parquet",
    ".pq": "parquet",
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    **dict.fromkeys((".jsonl", ".ndjson", ".json", ".jsonl.gz", ".ndjson.gz", ".json.gz"), "jsonl"),
}
SEPARATORS = {"csv": ",", "tsv": "\t"}
FIX = 'data.source=table reads the files named by data.table (docs/datasets.md, "Your own data")'
_GLOB = "*?["


# ----------------------------------------------------------------------------------------------------------------
# Files.


def _format_of(path: Path) -> str | None:
    name = path.name.lower()
    for suffix in sorted(FORMATS, key=len, reverse=True):
        if name.endswith(suffix):
            return FORMATS[suffix]
    return None


def table_files(
    spec: str | None, base: Path | None, key: str, fmt: str, notes: list[str] | None = None
) -> tuple[list[Path], str]:
    """The files of ``data.table.<key>`` (a file, folder or glob) in sorted order, and their one format.

    Each file is resolved (symlinks followed) and kept only inside its root: the folder named (or the glob's
    folder), else ``data.path`` for a relative file name. The others are never read: counted in ``notes`` as
    ``rejected_outside_root`` (and an error when no file is left).
    """
    if spec is None:
        raise ConfigError(
            f"data.source=table needs `data.table.{key}`: a file, folder or glob of {key}, e.g. "
            f"{key}.parquet; see docs/datasets.md"
        )
    path = Path(spec) if Path(spec).is_absolute() or base is None else base / spec
    if any(c in spec for c in _GLOB):
        files = sorted(Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file())
        parts = path.parts
        fixed = next(i for i, part in enumerate(parts) if any(c in part for c in _GLOB))
        root = Path(*parts[:fixed]) if fixed else Path(".")  # the folder before the first wildcard
    elif path.is_dir():
        root = path
        files = sorted(
            p
            for p in path.rglob("*")
            if p.is_file() and _format_of(p) and not any(part[:1] in "._" for part in p.relative_to(path).parts)
        )
    elif path.is_file():
        files, root = [path], (base if base is not None and not Path(spec).is_absolute() else path)
    else:
        raise DataFormatError(
            f"data.table.{key} = {spec!r}: {path} does not exist. Fix: point it at a file, a "
            "folder or a glob (relative paths are under data.path)"
        )
    files = _inside(files, root, key, notes)
    if not files:
        raise DataFormatError(
            f"data.table.{key} = {spec!r}: no table files ({', '.join(FORMATS)}) at {path}. "
            "Fix: point it at the files, or set data.table.format for other extensions"
        )
    if fmt != "auto":
        return files, fmt
    formats = {f: _format_of(f) for f in files}
    unknown = [f for f, kind in formats.items() if kind is None]
    if unknown:
        raise DataFormatError(
            f"{unknown[0]}: unknown table format (extension). Fix: use one of "
            f"{', '.join(FORMATS)}, or set data.table.format: csv | tsv | parquet | jsonl"
        )
    kinds = sorted(set(formats.values()))  # type: ignore[type-var]
    if len(kinds) > 1:
        raise DataFormatError(
            f"data.table.{key} = {spec!r} mixes formats ({', '.join(kinds)}). Fix: keep one "
            "format per table, or narrow the glob"
        )
    return files, kinds[0]  # type: ignore[return-value]


def _inside(files: list[Path], root: Path, key: str, notes: list[str] | None) -> list[Path]:
    """``files`` that resolve inside ``root``; the others are logged and counted as ``rejected_outside_root``."""
    kept = [f for f in files if inside_root(f, root)]
    rejected = [f for f in files if f not in kept]
    if rejected:
        note = (
            f"data.table.{key}: {len(rejected)} file(s) rejected_outside_root (they resolve outside {root}; "
            f"not read), e.g. {rejected[0]}"
        )
        log.warning("%s", note)
        if notes is not None:
            notes.append(note)
    return kept


def _scan(path: Path, fmt: str, notes: list[str]) -> pl.LazyFrame:
    """A lazy scan of one CSV/TSV/Parquet file (CSV/TSV checked for ragged rows first, every field as text)."""
    if fmt == "parquet":
        return pl.scan_parquet(path)
    notes.extend(check_delimited(path, SEPARATORS[fmt], header=True, fix=FIX).notes())
    return pl.scan_csv(path, separator=SEPARATORS[fmt], infer_schema=False, encoding="utf8-lossy")


def _require(path: Path, schema: pl.Schema, wanted: dict[str, str]) -> None:
    """Each column of ``wanted`` (column -> the param naming it) is in ``schema``, once."""
    for column, key in wanted.items():
        if column not in schema:
            names = [name for name in schema.names() if name != "_frow"]  # not the reader's own row counter
            raise DataFormatError(
                f"{path}: no column {column!r} (`{key}`); columns: {', '.join(names)}. "
                f"Fix: set {key} to the column that holds it"
            )
        if f"{column}_duplicated_0" in schema:  # polars' name for a CSV header's second `column`
            raise DataFormatError(
                f"{path}: the header names column {column!r} (`{key}`) more than once, so which one is meant is "
                f"unclear. Fix: rename or remove the other {column!r} column(s)"
            )


def _json_fields(path: Path) -> dict[str, object]:
    """The first JSON object of a JSON Lines file (to name the fields it has, and their kinds)."""
    with open_binary(path) as f:
        for raw in f:
            try:
                record = json.loads(raw.decode("utf-8", errors="replace").removeprefix("\ufeff"))
            except ValueError:
                continue
            if isinstance(record, dict):
                return record
    return {}


# ----------------------------------------------------------------------------------------------------------------
# Interactions.


def id_text(expr: pl.Expr, dtype: pl.DataType, path: Path, column: str, key: str) -> pl.Expr:
    """An id column as text: strings as they are, integers and integral floats as integers (``12.0`` -> "12")."""
    if dtype == pl.String or isinstance(dtype, pl.Categorical | pl.Enum):
        return expr.cast(pl.String)
    if dtype.is_integer():
        return expr.cast(pl.String)
    if dtype.is_float():
        integral = expr.is_finite() & (expr == expr.floor()) & (expr.abs() < 2.0**53)
        as_int = expr.cast(pl.Int64, strict=False).cast(pl.String)
        finite = pl.when(expr.is_finite()).then(expr.cast(pl.String))  # NaN / inf: null-like, counted as missing
        return pl.when(integral).then(as_int).otherwise(finite)
    raise DataFormatError(
        f"{path}: column {column!r} (`{key}`) has type {dtype}; an id must be text or a number. "
        f"Fix: set {key} to an id column"
    )


def _timestamp_raw(expr: pl.Expr, dtype: pl.DataType, path: Path, column: str, t: TableConfig) -> pl.Expr:
    """``ts_raw``: text as it is, numbers as Float64; date-times converted to epoch seconds (Float64) here."""
    if dtype == pl.String:
        return expr
    if dtype.is_numeric():
        if t.timestamp_unit == "iso":
            raise ConfigError(
                f"`data.table.timestamp_unit` = 'iso', but column {column!r} of {path} holds numbers ({dtype}); "
                "set data.table.timestamp_unit: auto (or its unit: s, ms, us, ns)"
            )
        return expr.cast(pl.Float64)
    if dtype == pl.Date or isinstance(dtype, pl.Datetime):
        if t.timestamp_unit != "auto":
            raise ConfigError(
                f"`data.table.timestamp_unit` = {t.timestamp_unit!r}, but column {column!r} of {path} "
                "holds date-times, which carry their own unit; set data.table.timestamp_unit: auto"
            )
        if t.timezone is None and not getattr(dtype, "time_zone", None):
            raise DataFormatError(
                f"{path}: column {column!r} holds {dtype} values without a time zone. Fix: state "
                "their zone: data.table.timezone: UTC (or e.g. Europe/Paris)"
            )
        return datetime_seconds(expr, dtype, t.timezone).cast(pl.Float64)
    raise DataFormatError(
        f"{path}: column {column!r} (`data.table.columns.timestamp`) has type {dtype}; expected "
        "epoch numbers, ISO 8601 text or date-times. Fix: point it at the time column"
    )


def _seconds(dtype: pl.DataType, t: TableConfig) -> pl.Expr:
    """Epoch seconds from the unified ``ts_raw`` column (String or Float64)."""
    raw = pl.col("ts_raw")
    if dtype == pl.String:
        return text_seconds(raw, t.timestamp_unit, t.timezone)
    if t.timestamp_unit == "iso":
        return pl.lit(None, dtype=pl.Int64)
    return numeric_seconds(raw, dtype, t.timestamp_unit)


def _interaction_columns(t: TableConfig) -> dict[str, str]:
    c = t.columns
    wanted = {c.user: "data.table.columns.user", c.item: "data.table.columns.item"}
    wanted[c.timestamp] = "data.table.columns.timestamp"
    if c.rating is not None:
        wanted[c.rating] = "data.table.columns.rating"
    return wanted


def _scan_interactions(files: list[Path], fmt: str, t: TableConfig, notes: list[str]) -> pl.LazyFrame:
    """All shards as one lazy frame: ``user_id, item_id, ts_raw, rating, _file, _frow, row``."""
    c = t.columns
    frames = []
    for i, path in enumerate(files):
        scan = _scan(path, fmt, notes)
        schema = scan.collect_schema()
        _require(path, schema, _interaction_columns(t))
        rating = pl.col(c.rating) if c.rating else pl.lit(None, dtype=pl.Float64)  # cast when checked
        frames.append(
            scan.with_row_index("_frow").select(
                id_text(pl.col(c.user), schema[c.user], path, c.user, "data.table.columns.user").alias("user_id"),
                id_text(pl.col(c.item), schema[c.item], path, c.item, "data.table.columns.item").alias("item_id"),
                _timestamp_raw(pl.col(c.timestamp), schema[c.timestamp], path, c.timestamp, t).alias("ts_raw"),
                rating.alias("rating"),
                pl.lit(i, dtype=pl.UInt32).alias("_file"),
                pl.col("_frow").cast(pl.Int64),
            )
        )
    frame = frames[0] if len(frames) == 1 else pl.concat(frames, how="vertical_relaxed")
    return frame.with_row_index("row").with_columns(pl.col("row").cast(pl.Int64))


def _raise_naive(files: list[Path], found: tuple[int, int, str] | None) -> None:
    if found is not None:
        file, row, value = found
        raise DataFormatError(
            f"{files[file]}: row {row + 1}: ISO 8601 timestamp {value!r} has no time zone. Fix: state the zone of "
            "such values: data.table.timezone: UTC (or e.g. Europe/Paris), or write them with an offset "
            "(2024-03-01T12:30:00Z, 2024-03-01T12:30:00+01:00)"
        )


def _naive_filter() -> pl.Expr:
    raw = pl.col("ts_raw")
    return naive_iso(raw) & iso_seconds(raw, "UTC").is_not_null()


def _first_naive(frame: pl.LazyFrame) -> tuple[int, int, str] | None:
    """``(file index, row in file, value)`` of the first ISO timestamp without a zone, or None (one more pass)."""
    hit = frame.filter(_naive_filter()).select("_file", "_frow", "ts_raw").head(1).collect(engine="streaming")
    return None if hit.height == 0 else (int(hit["_file"][0]), int(hit["_frow"][0]), str(hit["ts_raw"][0]))


def _read_scanned(files: list[Path], fmt: str, t: TableConfig, notes: list[str]) -> InteractionCheck:
    frame = _scan_interactions(files, fmt, t, notes)
    dtype = frame.collect_schema()["ts_raw"]
    check = validate_interactions(frame, timestamp=_seconds(dtype, t))
    if (
        check.drops["bad_timestamp"]
        and t.timezone is None
        and dtype == pl.String
        and t.timestamp_unit in ("auto", "iso")
    ):
        _raise_naive(files, _first_naive(frame))
    return check


class _JsonBlocks:
    """``read_json_lines`` transform for one shard: rename, count non-null mapped fields, find naive ISO values."""

    def __init__(self, checker: BlockChecker, t: TableConfig, offset: int, file: int) -> None:
        self.checker, self.t, self.offset, self.file = checker, t, offset, file
        self.present: Counter[str] = Counter()
        self.naive: tuple[int, int, str] | None = None

    def __call__(self, block: pl.DataFrame) -> pl.DataFrame:
        c = self.t.columns
        for column in _interaction_columns(self.t):
            self.present[column] += block.height - block[column].null_count()
        frame = block.select(
            pl.col(c.user).alias("user_id"),
            pl.col(c.item).alias("item_id"),
            pl.col(c.timestamp).alias("ts_raw"),
            (pl.col(c.rating) if c.rating else pl.lit(None, dtype=pl.String)).alias("rating"),
            pl.col("row").alias("_frow"),
            (pl.col("row") + self.offset).alias("row"),
        )
        if self.naive is None and self.t.timezone is None:
            hit = frame.filter(_naive_filter()).head(1)
            if hit.height:
                self.naive = (self.file, int(hit["_frow"][0]), str(hit["ts_raw"][0]))
        return self.checker(frame.drop("_frow"))


def _read_json(files: list[Path], t: TableConfig, notes: list[str], drops: Counter[str]) -> InteractionCheck:
    """JSON Lines shards in blocks: only compact valid rows are kept; malformed and blank lines are counted."""
    columns = list(_interaction_columns(t))
    checker = BlockChecker(
        [pl.col(n) for n in ("user_id", "item_id", "ts_raw", "rating", "row")], timestamp=_seconds(pl.String(), t)
    )
    offset = 0
    for i, path in enumerate(files):
        blocks = _JsonBlocks(checker, t, offset, i)
        _, report = read_json_lines(path, dict.fromkeys(columns, pl.String()), transform=blocks)
        for column, key in _interaction_columns(t).items():
            if not blocks.present[column]:
                fields = ", ".join(_json_fields(path)) or "none"
                raise DataFormatError(
                    f"{path}: no record has a field {column!r} (`{key}`); fields of the first "
                    f"record: {fields}. Fix: set {key} to the field that holds it"
                )
        _raise_naive(files, blocks.naive)
        drops.update(malformed_json=report.malformed, blank_line=report.blank)
        notes.extend(report.notes("interaction"))
        offset += report.lines
    return checker.result()


# ----------------------------------------------------------------------------------------------------------------
# Items.


def _text_expr(column: str, dtype: pl.DataType, path: Path) -> pl.Expr:
    """A text column as String: lists joined with ", ", numbers as text; structs are refused."""
    col = pl.col(column)
    if isinstance(dtype, pl.List | pl.Array):
        inner = col.cast(pl.List(pl.String), strict=False) if dtype != pl.List(pl.String) else col
        joined = inner.list.eval(pl.element().filter(pl.element().str.strip_chars() != "")).list.join(", ")
        return pl.when(joined.str.len_bytes() > 0).then(joined).alias(column)
    if dtype.is_nested() or dtype == pl.Binary:
        raise DataFormatError(
            f"{path}: text column {column!r} (`data.table.item_columns.text`) has type {dtype}. "
            "Fix: list text columns holding text, numbers or lists of text"
        )
    return col.cast(pl.String).alias(column)


def _item_columns(t: TableConfig) -> dict[str, str]:
    ic = t.item_columns
    wanted = {ic.id: "data.table.item_columns.id"}
    wanted |= dict.fromkeys(ic.text, "data.table.item_columns.text")
    if ic.image is not None:
        wanted[ic.image] = "data.table.item_columns.image"
    return wanted


def _scan_items(files: list[Path], fmt: str, t: TableConfig, notes: list[str]) -> pl.DataFrame:
    """``item_id, <text columns>, image_ref, _file, _frow`` of every item row (text as String, not yet cleaned)."""
    ic = t.item_columns
    frames = []
    for i, path in enumerate(files):
        if fmt == "jsonl":
            first = _json_fields(path)
            schema = {
                c: pl.List(pl.String()) if isinstance(first.get(c), list) else pl.String() for c in _item_columns(t)
            }
            frame, report = read_json_lines(path, schema)
            notes.extend(report.notes("item"))
            frame = frame.rename({"row": "_frow"})
            for column, key in _item_columns(t).items():
                if frame[column].null_count() == frame.height:
                    raise DataFormatError(
                        f"{path}: no record has a field {column!r} (`{key}`); fields of the first "
                        f"record: {', '.join(first) or 'none'}. Fix: set {key} to that field"
                    )
            scan = frame.lazy()
        else:
            scan = _scan(path, fmt, notes).with_row_index("_frow")
        schema = scan.collect_schema()
        _require(path, schema, _item_columns(t))
        image = pl.col(ic.image).cast(pl.String) if ic.image else pl.lit(None, dtype=pl.String)
        frames.append(
            scan.select(
                id_text(pl.col(ic.id), schema[ic.id], path, ic.id, "data.table.item_columns.id").alias("item_id"),
                *[_text_expr(c, schema[c], path) for c in ic.text],
                image.str.strip_chars().alias("image_ref"),
                pl.lit(i, dtype=pl.UInt32).alias("_file"),
                pl.col("_frow").cast(pl.Int64),
            ).collect(engine="streaming")
        )
    return pl.concat(frames, how="vertical_relaxed")


def check_image_refs(frame: pl.DataFrame, files: list[Path], images_dir: Path) -> None:
    """Every local image path stays inside ``images_dir`` (lexically; symlinks are checked when images are
    attached) and every URL is http(s); otherwise a ``DataFormatError`` naming the file, the row and the value."""
    root = os.path.normpath(os.path.abspath(images_dir))
    refs = frame.filter(pl.col("image_ref").is_not_null() & (pl.col("image_ref") != ""))
    urls = refs.filter(pl.col("image_ref").str.contains("://", literal=True))
    bad_url = urls.filter(~pl.col("image_ref").str.contains(r"^(?i:https?)://"))
    if bad_url.height:
        ref, file, row = bad_url.select("image_ref", "_file", "_frow").row(0)
        raise DataFormatError(
            f"{files[file]}: row {row + 1}: image {ref!r} is a URL that is not http(s). Fix: "
            "give an http(s) URL or a path relative to data.images_dir"
        )
    local = refs.filter(~pl.col("image_ref").str.contains("://", literal=True))
    for ref, file, row in local.select("image_ref", "_file", "_frow").iter_rows():
        full = os.path.normpath(os.path.join(root, ref))
        if full != root and not full.startswith(root + os.sep):
            raise DataFormatError(
                f"{files[file]}: row {row + 1}: image path {ref!r} leaves data.images_dir ({root}). Fix: give image "
                "paths relative to data.images_dir and inside it, or set data.images_dir to a folder containing them"
            )


def read_table_items(cfg: DataConfig, notes: list[str] | None = None) -> tuple[pl.DataFrame, list[Path]]:
    """The items frame (``item_id, text, image_ref, title``) from ``data.table.items``, and the files read."""
    t = cfg.table
    notes = notes if notes is not None else []
    if not t.item_columns.text:
        raise ConfigError("`data.table.item_columns.text` = [] must name at least one text column, e.g. [title]")
    check_value(TableItemColumns, "text", t.item_columns.text, None, "data.table.item_columns.text")
    for column in t.text_labels:
        if column not in t.item_columns.text:
            raise ConfigError(
                f"`data.table.text_labels` labels {column!r}, which is not one of "
                f"data.table.item_columns.text ({', '.join(t.item_columns.text)})"
            )
    if t.item_columns.image is not None and cfg.images_dir is None:
        raise ConfigError(
            f"`data.table.item_columns.image` = {t.item_columns.image!r} needs data.images_dir: the "
            "folder its local paths are relative to, where URLs are fetched to (python -m "
            "stages.download table)"
        )
    base = Path(cfg.path) if cfg.path is not None else None
    files, fmt = table_files(t.items, base, "items", t.format, notes)
    raw = _scan_items(files, fmt, t, notes)
    if cfg.images_dir is not None and t.item_columns.image is not None:
        check_image_refs(raw, files, Path(cfg.images_dir))
    where = files[0] if len(files) == 1 else files[0].parent
    unique = unique_items(raw.with_columns(pl.col("item_id").str.strip_chars()), "item_id", where, notes)
    text = t.item_columns.text
    cleaned = unique.with_columns([pl.col(c).map_batches(clean_text_series, return_dtype=pl.String) for c in text])
    items = cleaned.select(
        "item_id",
        compose_fields(text, t.text_labels).alias("text"),
        pl.when(pl.col("image_ref") != "").then(pl.col("image_ref")).alias("image_ref"),
        pl.when(pl.col(text[0]).str.len_bytes() > 0).then(pl.col(text[0])).alias("title"),
    )
    return items, files


# ----------------------------------------------------------------------------------------------------------------
# The reader.


def read_table(cfg: DataConfig) -> RawData:
    """Interactions and items from the tables named by ``data.table``."""
    t = cfg.table
    check_timezone(t.timezone, "data.table.timezone")
    base = Path(cfg.path) if cfg.path is not None else None
    notes: list[str] = []
    items, item_files = read_table_items(cfg, notes)
    files, fmt = table_files(t.interactions, base, "interactions", t.format, notes)
    drops: Counter[str] = Counter()
    check = _read_json(files, t, notes, drops) if fmt == "jsonl" else _read_scanned(files, fmt, t, notes)
    drops.update(check.drops)
    notes.extend(check_notes(check, SOURCE))
    shards = f"{len(files)} {fmt} file(s)"
    notes.insert(0, f"table: {check.kept:,} interactions from {shards} ({files[0]}{', ...' if len(files) > 1 else ''})")
    log.info(
        "%s: kept %s interactions from %s, %s items; drops %s",
        SOURCE,
        f"{check.kept:,}",
        shards,
        f"{items.height:,}",
        dict(+drops),
    )
    return RawData(
        interactions=check.interactions,
        items=items,
        source_files=[*files, *item_files],
        drops=+drops,
        notes=notes,
    )
