"""Input helpers shared by the real-data readers (Amazon, H&M, MicroLens, MovieLens family).

- :func:`read_json_lines`: a JSON-lines file (plain or ``.gz``) read in ~64 MB blocks, each parsed by polars in
  one call. Only a block that polars rejects is re-read line by line in Python, where each bad line is counted
  (``malformed_json``) and skipped; invalid UTF-8 is decoded with U+FFFD and counted (``non_utf8``, kept); a
  2014-style Python-literal line (``{'asin': ...}``) is accepted through ``ast.literal_eval``. ``row`` is the
  0-based physical line number, so it is the global file order and points at the line in error messages.
- :func:`validate_interactions`: the per-row checks every reader applies, vectorised and lazy: ids present,
  timestamp present and valid (normalised to seconds, see :func:`epoch_seconds`). Each failing row is counted
  under one reason (the first that applies, in that order) and dropped. Interactions with items that have no
  metadata are *not* dropped here: prepare drops and counts them (``unknown_item``) for every source alike.
- :func:`unique_items`: metadata records without an item id, or repeating one, skipped and noted (Amazon, H&M,
  MicroLens, table).
- :func:`find_category_files`: the reviews + ``meta_`` pair of an Amazon category directory; :func:`read_reviews`
  reads the reviews file through a :class:`BlockChecker`.
"""

from __future__ import annotations

import ast
import codecs
import csv
import gzip
import io
import json
import logging
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import polars as pl

from pipeline.data.schema import INTERACTION_SCHEMA, DataFormatError

log = logging.getLogger(__name__)

CHUNK_BYTES = 64 << 20  # uncompressed bytes per block handed to polars
JSON_SUFFIXES = (".jsonl.gz", ".json.gz", ".jsonl", ".json")
_EXAMPLES = 5  # line numbers quoted per problem in logs and notes

# Timestamps: values below 1e11 are seconds (1e11 s is the year 5138); 1e11..1e14 milliseconds (Amazon 2023,
# MicroLens); 1e14..1e17 microseconds; above that nanoseconds. All are floored to whole seconds.
_MS, _US, _NS = 10**11, 10**14, 10**17
# A timestamp (in seconds) after 2100-01-01 is no real event: ``bad_timestamp``, like one <= 0.
MAX_EPOCH_SECONDS = 4_102_444_800


# ----------------------------------------------------------------------------------------------------------------
# JSON lines.


@dataclass
class LinesReport:
    """What :func:`read_json_lines` saw in one file."""

    path: Path
    lines: int = 0  # physical lines, blank ones included
    records: int = 0  # records parsed (before any transform)
    blank: int = 0
    malformed: int = 0  # not JSON, not an object, or none of the requested fields
    non_utf8: int = 0  # lines with invalid UTF-8, decoded with U+FFFD and kept
    python_literal: int = 0  # 2014-style ``{'key': ...}`` lines accepted via ast.literal_eval
    malformed_lines: list[int] = field(default_factory=list)  # 1-based, the first few
    non_utf8_lines: list[int] = field(default_factory=list)

    def notes(self, what: str) -> list[str]:
        out = []
        if self.non_utf8:
            out.append(
                f"{self.path.name}: {self.non_utf8} {what} line(s) had invalid UTF-8 (e.g. line "
                f"{', '.join(map(str, self.non_utf8_lines))}); decoded with U+FFFD replacement and kept"
            )
        if self.python_literal:
            out.append(f"{self.path.name}: {self.python_literal} {what} line(s) in 2014 Python-literal syntax, read")
        if self.malformed:
            out.append(
                f"{self.path.name}: {self.malformed} malformed {what} line(s) skipped (e.g. line "
                f"{', '.join(map(str, self.malformed_lines))})"
            )
        return out


def open_binary(path: Path) -> IO[bytes]:
    """``path`` for binary reading, decompressed on the fly when it ends with ``.gz``."""
    if path.name.endswith(".gz"):
        return gzip.open(path, "rb")
    return open(path, "rb")  # noqa: SIM115 - returned to the caller's `with`


def _blocks(path: Path, chunk_bytes: int) -> Iterator[bytes]:
    """Blocks of whole lines (each but the last ends with a newline, so no UTF-8 sequence is ever cut)."""
    try:
        with open_binary(path) as f:
            first = True
            while True:
                block = f.read(chunk_bytes)
                if first:  # a UTF-8 byte order mark is not part of line 1's JSON
                    block, first = block.removeprefix(b"\xef\xbb\xbf"), False
                if not block:
                    return
                if not block.endswith(b"\n"):
                    block += f.readline()
                yield block
    except (EOFError, gzip.BadGzipFile, zlib.error, OSError) as e:
        raise DataFormatError(
            f"{path}: cannot be read to the end ({type(e).__name__}: {e}). Fix: the file is truncated or corrupt "
            "(an interrupted download?): delete it and fetch it again (python -m stages.download verifies files)"
        ) from e


def _prefetch(blocks: Iterator[bytes]) -> Iterator[bytes]:
    """Read (and decompress) the next block in a thread while the caller parses the current one."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="read-ahead") as pool:
        future = pool.submit(next, blocks, None)
        try:
            while True:
                block = future.result()
                if block is None:
                    return
                future = pool.submit(next, blocks, None)
                yield block
        finally:
            future.cancel()
            try:
                future.result()
            except Exception:  # noqa: BLE001 - the consumer already stopped; its own error is the one that matters
                pass
            blocks.close()


def _no_constants(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")


def _parse_line(raw: bytes, report: LinesReport, line_no: int) -> dict | None:
    """One line as a dict, or None (malformed). Invalid UTF-8 is replaced and counted."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("utf-8", errors="replace")
        report.non_utf8 += 1
        if len(report.non_utf8_lines) < _EXAMPLES:
            report.non_utf8_lines.append(line_no)
    try:
        obj = json.loads(text, parse_constant=_no_constants)
    except ValueError:
        obj = None
        if text.lstrip().startswith("{'"):
            try:
                obj = ast.literal_eval(text.strip())
                report.python_literal += 1
            except (ValueError, SyntaxError, MemoryError, RecursionError):
                obj = None
    return obj if isinstance(obj, dict) else None


def _slow_block(block: bytes, first: int, schema: dict[str, pl.DataType], report: LinesReport) -> pl.DataFrame:
    """Parse ``block`` line by line; returns the good records (with ``row``) in file order."""
    kept: list[str] = []
    rows: list[int] = []
    for offset, raw in enumerate(block.split(b"\n")):
        if not raw.strip():
            continue
        obj = _parse_line(raw, report, first + offset + 1)
        if obj is None:
            report.malformed += 1
            if len(report.malformed_lines) < _EXAMPLES:
                report.malformed_lines.append(first + offset + 1)
            continue
        kept.append(json.dumps(obj, ensure_ascii=False, default=str))
        rows.append(first + offset)
    if not kept:
        return pl.DataFrame(schema=schema).with_columns(row=pl.Series([], dtype=pl.Int64))
    frame = pl.read_ndjson(io.BytesIO("\n".join(kept).encode("utf-8")), schema=schema, ignore_errors=True)
    return frame.with_columns(row=pl.Series(rows, dtype=pl.Int64))


def _coerce(obj: object, dtype: pl.DataType) -> object:
    """``obj`` (parsed JSON) shaped to ``dtype``; a mismatching part becomes None (numbers read as strings)."""
    if obj is None:
        return None
    if isinstance(dtype, pl.List):
        return [_coerce(e, dtype.inner) for e in obj] if isinstance(obj, list) else None
    if isinstance(dtype, pl.Struct):
        return {f.name: _coerce(obj.get(f.name), f.dtype) for f in dtype.fields} if isinstance(obj, dict) else None
    if isinstance(obj, bool):
        return str(obj).lower()
    if isinstance(obj, str | int | float):
        return str(obj)
    return None


def decode_nested(text: pl.Series, dtype: pl.DataType) -> pl.Series:
    """A String column of JSON text (as polars gives nested values read as String) decoded to ``dtype``.

    For ``List(String)``, a plain string value becomes a one-element list (some files hold ``"description":
    "..."`` instead of a list). Other values of the wrong shape become null. ``str.json_decode`` does the work;
    only when it rejects a value does a Python pass shape the column value by value.
    """
    opener = "[" if isinstance(dtype, pl.List) else "{"
    stripped = text.str.strip_chars()
    is_json = stripped.str.starts_with(opener).fill_null(False)
    candidates = pl.select(pl.when(is_json).then(stripped)).to_series()
    try:
        decoded = candidates.str.json_decode(dtype)
    except pl.exceptions.PolarsError:
        values = [None if v is None else _coerce(_loads_or_none(v), dtype) for v in candidates.to_list()]
        decoded = pl.Series(values, dtype=dtype)
    if dtype == pl.List(pl.String):
        plain = ~is_json & ~stripped.str.starts_with("{").fill_null(True)  # an object is not a string
        if plain.any():
            decoded = pl.select(pl.when(plain).then(pl.concat_list(text)).otherwise(decoded)).to_series()
    return decoded.alias(text.name)


def _loads_or_none(value: str) -> object:
    try:
        return json.loads(value)
    except ValueError:
        return None


def read_json_lines(
    path: Path,
    schema: dict[str, pl.DataType],
    *,
    chunk_bytes: int = CHUNK_BYTES,
    transform: Callable[[pl.DataFrame], pl.DataFrame] | None = None,
) -> tuple[pl.DataFrame, LinesReport]:
    """The fields in ``schema`` of every record in ``path``, plus ``row`` (0-based physical line, Int64).

    A field with a value of the wrong type is null (``ignore_errors``). Numbers are best requested as
    ``pl.String`` (polars gives their text) and parsed afterwards, so ``"1588687728923"`` and ``1588687728923``
    read the same. Records where every requested field is null (not an object, or none of the fields) count as
    malformed. Nested fields (lists, structs) are read as JSON text and decoded with :func:`decode_nested`
    (several times faster than polars' nested JSON reader). ``transform``, when given, is applied to each
    block (with ``row``) and its result kept instead. Memory: one block plus what is kept.
    """
    if not path.is_file():
        raise DataFormatError(f"{path}: file not found")
    nested = {name: dtype for name, dtype in schema.items() if dtype.is_nested()}
    schema = {name: (pl.String() if name in nested else dtype) for name, dtype in schema.items()}
    report = LinesReport(path=path)
    frames: list[pl.DataFrame] = []
    first = 0  # physical line index of the block's first line
    for block in _prefetch(_blocks(path, chunk_bytes)):
        n_lines = block.count(b"\n") + (0 if block.endswith(b"\n") else 1)
        try:
            frame = pl.read_ndjson(io.BytesIO(block), schema=schema, ignore_errors=True)
        except pl.exceptions.PolarsError:
            frame = None
        if frame is not None and frame.height == n_lines:
            frame = frame.with_columns(row=pl.int_range(first, first + n_lines, dtype=pl.Int64))
        else:  # a bad line, a blank line or invalid UTF-8 somewhere in this block
            before = report.malformed
            frame = _slow_block(block, first, schema, report)
            report.blank += n_lines - frame.height - (report.malformed - before)
        empty = pl.all_horizontal([pl.col(c).is_null() for c in schema])
        n_empty = int(frame.select(empty.sum()).item())
        if n_empty:
            bad_rows = frame.filter(empty)["row"].head(_EXAMPLES - len(report.malformed_lines)).to_list()
            report.malformed_lines.extend(r + 1 for r in bad_rows)
            report.malformed += n_empty
            frame = frame.filter(~empty)
        if nested:
            frame = frame.with_columns([decode_nested(frame[name], dtype) for name, dtype in nested.items()])
        report.records += frame.height
        frames.append(frame if transform is None else transform(frame))
        first += n_lines
    report.lines = first
    if not report.records:
        raise DataFormatError(
            f"{path}: no records ({report.lines:,} line(s): {report.malformed:,} malformed, {report.blank:,} blank). "
            "Fix: the file is empty or not JSON lines; fetch it again (python -m stages.download verifies files)"
        )
    if not frames:
        empty_frame = pl.DataFrame(schema={**schema, **nested}).with_columns(row=pl.Series([], dtype=pl.Int64))
        out = empty_frame if transform is None else transform(empty_frame)
    else:
        out = pl.concat(frames, how="vertical", rechunk=False)
    report.malformed_lines.sort()
    if report.malformed:
        log.warning("%s: skipped %d malformed line(s), e.g. line %s", path, report.malformed, report.malformed_lines)
    if report.non_utf8:
        log.warning("%s: %d line(s) with invalid UTF-8 decoded with U+FFFD", path, report.non_utf8)
    return out, report


# ----------------------------------------------------------------------------------------------------------------
# Delimited text (CSV, TSV, ``|``).


@dataclass
class DelimitedCheck:
    """What :func:`check_delimited` saw in one file."""

    path: Path
    data_lines: int  # non-blank lines after the header
    replaced: int = 0  # U+FFFD characters once decoded (each invalid UTF-8 sequence becomes one)
    replaced_lines: int = 0
    first_replaced_line: int | None = None

    def notes(self) -> list[str]:
        if not self.replaced:
            return []
        return [
            f"{self.path.name}: {self.replaced:,} invalid UTF-8 byte sequence(s) on {self.replaced_lines:,} line(s) "
            f"(first: line {self.first_replaced_line}) were replaced with U+FFFD; those rows are kept"
        ]


def _first_line(path: Path) -> tuple[int, str] | None:
    """The first non-blank line (1-based number, text without BOM), or None for an empty file."""
    with open(path, encoding="utf-8", errors="replace", newline="") as f:
        for number, line in enumerate(f, start=1):
            text = line.removeprefix("\ufeff").rstrip("\r\n")
            if text.strip():
                return number, text
    return None


def _csv_fields(line: str, sep: str, quoting: bool) -> int:
    if not quoting:
        return line.count(sep) + 1
    return len(next(csv.reader([line], delimiter=sep)))


def _first_bad_record(path: Path, sep: str, expected: int, skip: int) -> tuple[int, int, str] | None:
    """``(line, fields, text)`` of the first record (quotes honoured, after ``skip`` lines) with another count."""
    with open(path, encoding="utf-8", errors="replace", newline="") as f:
        reader = csv.reader(f, delimiter=sep)
        for row in reader:
            if reader.line_num <= skip or not row or (len(row) == 1 and not row[0].strip()):
                continue
            if len(row) != expected:
                return reader.line_num, len(row), sep.join(row)
    return None


# What a file read as CSV/TSV text may really be, told by its first bytes: (magics, what it is, what to do).
_NOT_TEXT: tuple[tuple[tuple[bytes, ...], str, str], ...] = (
    ((b"PAR1",), "a Parquet file", "read it as Parquet (data.table.format: auto or parquet) or export it as CSV"),
    ((b"\x1f\x8b",), "gzip-compressed", "decompress it (gunzip)"),
    ((b"PK\x03\x04",), "a zip archive (or an Excel .xlsx workbook)", "unzip it, or save the sheet as CSV (UTF-8)"),
    ((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE), "UTF-16 text", "save it as UTF-8 (e.g. iconv -f UTF-16 -t UTF-8)"),
)


def _refuse_non_text(path: Path, fix: str) -> None:
    """A file that is not UTF-8 delimited text (Parquet, gzip, zip/xlsx, UTF-16, other binary) is one error line
    saying what it is, before its bytes are parsed as rows (which reported a ragged last line of garbage)."""
    with open(path, "rb") as f:
        refuse_non_text(path, f.read(4096), fix)


def refuse_non_text(
    path: Path, head: bytes, fix: str, text: str = "delimited UTF-8 text", as_: str = "UTF-8 CSV"
) -> None:
    """A one-line ``DataFormatError`` when ``head`` (the first bytes of ``path``) shows that the file is not
    ``text``: Parquet, gzip, zip/xlsx, UTF-16 (told by their first bytes) or NUL bytes; ``as_``: what to save it as."""
    for magics, what, todo in _NOT_TEXT:
        if head.startswith(magics):
            raise DataFormatError(f"{path}: {what}, not {text}. Fix: {todo}; {fix}")
    if b"\x00" in head:  # UTF-16 without a byte order mark, or another binary format
        raise DataFormatError(
            f"{path}: holds NUL bytes (UTF-16 text without a byte order mark, or a binary file), not {text}. "
            f"Fix: save it as {as_}; {fix}"
        )


def check_delimited(
    path: Path, sep: str, *, header: bool, fix: str, quoting: bool = True, fields: bool = True
) -> DelimitedCheck:
    """Check a delimited file before polars reads it: every record has as many fields as the first line (quotes
    honoured when ``quoting``), there is at least one data line, and invalid UTF-8 is counted.

    A ragged row is a ``DataFormatError`` naming the file and line, never cut to fit or padded with nulls; an empty
    or header-only file is one too, and so is a file that is not UTF-8 text at all (Parquet, gzip, zip/xlsx,
    UTF-16: told by its first bytes). One streaming pass counts separators per line; only when a line holds a quote
    character is the file parsed record by record with :mod:`csv` to find the exact record in error.
    """
    if not path.is_file():
        raise DataFormatError(f"{path}: file not found. Fix: {fix}")
    _refuse_non_text(path, fix)
    first = _first_line(path)
    if first is None:
        raise DataFormatError(f"{path}: the file is empty. Fix: {fix}")
    first_number, first_text = first
    expected = _csv_fields(first_text, sep, quoting)
    line = pl.col("line")
    blank = line.is_null() | (line.str.strip_chars().str.len_bytes() == 0)
    n_fields = line.str.count_matches(sep, literal=True) + 1
    counts = (
        pl.scan_csv(
            path,
            separator="\x1f",
            quote_char=None,
            has_header=False,
            new_columns=["line"],
            infer_schema=False,
            encoding="utf8-lossy",
            truncate_ragged_lines=True,
        )  # fmt: skip
        .with_row_index("number", offset=1)
        .filter(pl.col("number") > (first_number if header else first_number - 1))
        .select(
            (~blank).sum().alias("data"),
            line.str.contains('"', literal=True).fill_null(False).sum().alias("quoted"),
            pl.col("number").filter(~blank & (n_fields != expected)).first().alias("bad"),
            line.str.count_matches("\ufffd", literal=True).sum().alias("replaced"),
            line.str.contains("\ufffd", literal=True).fill_null(False).sum().alias("replaced_lines"),
            pl.col("number").filter(line.str.contains("\ufffd", literal=True)).first().alias("first_replaced"),
        )
        .collect(engine="streaming")
        .row(0, named=True)
    )
    if not counts["data"]:
        raise DataFormatError(f"{path}: no data rows (only a header line). Fix: {fix}")
    if fields:
        _raise_ragged(path, sep, expected, first_number, header, quoting and counts["quoted"] > 0, counts["bad"], fix)
    return DelimitedCheck(
        path=path,
        data_lines=int(counts["data"]),
        replaced=int(counts["replaced"] or 0),
        replaced_lines=int(counts["replaced_lines"] or 0),
        first_replaced_line=counts["first_replaced"],
    )


def _raise_ragged(
    path: Path, sep: str, expected: int, first: int, header: bool, quoted: bool, bad: int | None, fix: str
) -> None:
    found = _first_bad_record(path, sep, expected, first if header else first - 1) if quoted else None
    if found is None and bad is not None and not quoted:
        with open(path, encoding="utf-8", errors="replace", newline="") as f:
            text = next(t for n, t in enumerate(f, start=1) if n == bad).rstrip("\r\n")
        found = (bad, text.count(sep) + 1, text)
    if found is not None:
        line, n, text = found
        what = "the header" if header else "line 1"
        raise DataFormatError(
            f"{path}:{line}: expected {expected} fields separated by {sep!r} (as in {what}), found {n}: "
            f'{text[:200]!r}. Fix: quote a field that contains {sep!r} ("a, b"), or repair the line; {fix}'
        )


# ----------------------------------------------------------------------------------------------------------------
# Interaction checks.


def epoch_seconds(raw: pl.Expr) -> pl.Expr:
    """Epoch seconds (Int64) from integer or decimal text/numbers in s, ms, us or ns; null if not a number.

    The unit is decided per value by magnitude (seconds up to 1e11, i.e. until the year 5138; ms up to 1e14;
    us up to 1e17; ns above), then floored to whole seconds.
    """
    text = raw.cast(pl.String).str.strip_chars()
    as_float = text.cast(pl.Float64, strict=False)
    as_int = pl.coalesce(
        text.str.to_integer(strict=False),
        pl.when(as_float.is_finite()).then(as_float.floor()).cast(pl.Int64, strict=False),
    )
    return seconds_by_magnitude(as_int)


def seconds_by_magnitude(as_int: pl.Expr) -> pl.Expr:
    """Integer epoch timestamps in s, ms, us or ns (decided per value by magnitude) as whole seconds."""
    magnitude = as_int.abs()
    return (
        pl.when(magnitude < _MS)
        .then(as_int)
        .when(magnitude < _US)
        .then(as_int // 1_000)
        .when(magnitude < _NS)
        .then(as_int // 1_000_000)
        .otherwise(as_int // 1_000_000_000)
    )


def _bad_seconds(seconds: pl.Expr) -> pl.Expr:
    return seconds.is_null() | (seconds <= 0) | (seconds > MAX_EPOCH_SECONDS)


def drop_bad_timestamps(interactions: pl.DataFrame) -> tuple[pl.DataFrame, int]:
    """Drop rows whose ``timestamp`` (epoch seconds) is null, <= 0 or after 2100; returns them and the count.

    For readers that parse seconds themselves (GroupLens ``.dat``, RecBole): ``bad_timestamp`` for every source.
    """
    kept = interactions.filter(~_bad_seconds(pl.col("timestamp")))
    return kept, interactions.height - kept.height


def _blank(expr: pl.Expr) -> pl.Expr:
    return expr.is_null() | (expr.cast(pl.String).str.strip_chars().str.len_bytes() == 0)


@dataclass
class InteractionCheck:
    """Result of :func:`validate_interactions` / :class:`BlockChecker`."""

    interactions: pl.LazyFrame  # INTERACTION_SCHEMA, bad rows removed
    drops: Counter[str] = field(default_factory=Counter)
    kept: int = 0
    subsecond_rows: int = 0  # kept rows whose timestamp was given in ms/us/ns
    midnight_rows: int = 0  # kept rows whose timestamp is a multiple of 86400 (day resolution)
    bad_rating_rows: int = 0  # kept rows whose rating is given but is not a number (kept as unrated)
    bad_rating_example: str | None = None  # one such value, as written

    @property
    def midnight_fraction(self) -> float:
        return self.midnight_rows / self.kept if self.kept else 0.0


def _staged(frame: pl.LazyFrame, timestamp: pl.Expr | None) -> pl.LazyFrame:
    """``frame`` with typed, stripped columns and ``_reason`` (null for a valid row)."""
    ts_raw = pl.col("ts_raw")
    seconds = epoch_seconds(ts_raw) if timestamp is None else timestamp
    reason = (
        pl.when(_blank(pl.col("user_id")))
        .then(pl.lit("missing_user"))
        .when(_blank(pl.col("item_id")))
        .then(pl.lit("missing_item"))
        .when(_blank(ts_raw))
        .then(pl.lit("missing_timestamp"))
        .when(_bad_seconds(pl.col("timestamp")))
        .then(pl.lit("bad_timestamp"))
    )
    raw_num = ts_raw.cast(pl.String).str.strip_chars().cast(pl.Float64, strict=False).abs()
    rating_text = pl.col("rating").cast(pl.String).str.strip_chars()
    rating = rating_text.cast(pl.Float64, strict=False)
    return frame.with_columns(
        pl.col("user_id").cast(pl.String).str.strip_chars(),
        pl.col("item_id").cast(pl.String).str.strip_chars(),
        seconds.alias("timestamp"),
        rating.alias("rating"),
        (raw_num >= _MS).alias("_subsecond"),
        pl.when(rating.is_null() & (rating_text != "")).then(rating_text).alias("_bad_rating"),  # given, not a number
    ).with_columns(reason.otherwise(pl.lit(None, dtype=pl.String)).alias("_reason"))


def _summary(staged: pl.LazyFrame | pl.DataFrame) -> pl.LazyFrame:
    return (
        staged.lazy()
        .group_by("_reason")
        .agg(
            pl.len().alias("n"),
            pl.col("_subsecond").sum().alias("subsecond"),
            ((pl.col("timestamp") % 86_400) == 0).sum().alias("midnight"),
            pl.col("_bad_rating").is_not_null().sum().alias("bad_rating"),
            pl.col("_bad_rating").drop_nulls().first().alias("bad_rating_example"),
        )
    )


def _valid(staged: pl.LazyFrame) -> pl.LazyFrame:
    return staged.filter(pl.col("_reason").is_null()).select(
        [pl.col(name).cast(dtype) for name, dtype in INTERACTION_SCHEMA.items()]
    )


def _tally(summary: pl.DataFrame, check: InteractionCheck) -> None:
    for row in summary.iter_rows(named=True):
        if row["_reason"] is None:
            check.kept += row["n"]
            check.subsecond_rows += row["subsecond"] or 0
            check.midnight_rows += row["midnight"] or 0
            check.bad_rating_rows += row["bad_rating"] or 0
            check.bad_rating_example = check.bad_rating_example or row["bad_rating_example"]
        else:
            check.drops[row["_reason"]] += row["n"]


def validate_interactions(frame: pl.LazyFrame, timestamp: pl.Expr | None = None) -> InteractionCheck:
    """Apply the shared per-row checks to ``frame`` (``user_id``, ``item_id``, ``ts_raw``, ``rating``, ``row``).

    ``timestamp`` turns ``ts_raw`` into epoch seconds (default :func:`epoch_seconds`); a null result for a
    non-null ``ts_raw``, or a result <= 0, is ``bad_timestamp``. Reasons, first match wins: ``missing_user``,
    ``missing_item``, ``missing_timestamp``, ``bad_timestamp``. One streaming pass computes the counts; the
    returned frame stays lazy (for CSV sources prepare scans the file again).
    """
    staged = _staged(frame, timestamp)
    check = InteractionCheck(interactions=_valid(staged))
    _tally(_summary(staged).collect(engine="streaming"), check)
    return check


class BlockChecker:
    """:func:`validate_interactions` applied to each block of a file read in blocks (``read_json_lines``'s
    ``transform``), so only compact valid rows are kept: no second pass and no raw text columns in memory."""

    def __init__(self, select: list[pl.Expr], timestamp: pl.Expr | None = None) -> None:
        self.select, self.timestamp = select, timestamp
        self.check = InteractionCheck(interactions=pl.LazyFrame(schema=INTERACTION_SCHEMA))
        self.frames: list[pl.DataFrame] = []

    def __call__(self, block: pl.DataFrame) -> pl.DataFrame:
        staged = _staged(block.lazy().select(self.select), self.timestamp).collect()
        _tally(_summary(staged).collect(), self.check)
        valid = _valid(staged.lazy()).collect()
        self.frames.append(valid)
        return valid.head(0)  # read_json_lines keeps nothing itself

    def result(self) -> InteractionCheck:
        if self.frames:
            self.check.interactions = pl.concat(self.frames, how="vertical", rechunk=False).lazy()
        return self.check


META_ISSUES = {
    "missing_item": "record(s) without an item id skipped",
    "duplicate_item": "repeated item id(s) skipped (first kept)",
}


def meta_note(path: Path, issues: Counter[str]) -> list[str]:
    """A note on skipped metadata records. They are not interaction rows, so they are not in ``RawData.drops``
    (prepare counts input rows as kept interactions + drops)."""
    parts = [f"{issues[k]:,} {text}" for k, text in META_ISSUES.items() if issues[k]]
    return [f"{path.name}: {'; '.join(parts)}"] if parts else []


def unique_items(meta: pl.DataFrame, key: str, path: Path, notes: list[str]) -> pl.DataFrame:
    """``meta`` without the records whose item id ``key`` is null or empty and without repeats of an id (first
    kept); both are counted in a :func:`meta_note` on ``path``, added to ``notes``. Strip the ids first."""
    missing = meta[key].is_null() | (meta[key] == "")
    issues: Counter[str] = Counter(missing_item=int(missing.sum()))
    meta = meta.filter(~missing)
    unique = meta.unique(subset=key, keep="first", maintain_order=True)
    issues["duplicate_item"] = meta.height - unique.height
    notes.extend(meta_note(path, issues))
    return unique


def check_notes(check: InteractionCheck, source: str) -> list[str]:
    """Human-readable remarks on timestamp units and resolution, and on ratings that are not numbers, for
    ``RawData.notes``."""
    notes = []
    if check.bad_rating_rows:
        notes.append(
            f"{source}: {check.bad_rating_rows:,} kept interaction(s) have a rating that is not a number (e.g. "
            f"{check.bad_rating_example!r}); they count as unrated, so data.min_rating, when set, drops them "
            "(as min_rating). Fix: write ratings as numbers if they matter"
        )
    if check.subsecond_rows:
        notes.append(
            f"{source}: {check.subsecond_rows:,} timestamps were in milliseconds (or finer) and were converted to "
            "whole seconds; events within the same second tie and are ordered by file row"
        )
    if check.kept and check.midnight_fraction >= 0.9:
        notes.append(
            f"{source}: {check.midnight_fraction:.0%} of timestamps fall on midnight UTC (day resolution): a user's "
            "events on the same day tie and are ordered by file row, which inflates results when the file is "
            "sorted by item; treat sequence order within a day as unknown"
        )
    return notes


# ----------------------------------------------------------------------------------------------------------------
# Amazon category files.


def read_reviews(
    path: Path, schema: dict[str, pl.DataType], checker: BlockChecker
) -> tuple[InteractionCheck, Counter[str], LinesReport]:
    """The valid interactions of a JSON-lines reviews file, checked block by block by ``checker``; the drops
    include its malformed and blank lines."""
    _, report = read_json_lines(path, schema, transform=checker)  # keeps only valid, typed rows
    check = checker.result()
    drops: Counter[str] = Counter(malformed_json=report.malformed, blank_line=report.blank)
    drops.update(check.drops)
    return check, drops, report


def _strip_suffix(name: str) -> tuple[str, str] | None:
    for suffix in JSON_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)], suffix
    return None


def find_category_files(path: Path, source: str, example: str) -> tuple[Path, Path, str]:
    """``(reviews, meta, category)`` for ``data.path`` = a category directory or its reviews file.

    The reviews file is the one JSON-lines file not named ``meta_*`` (``manifest.json`` of the downloader is
    ignored); the meta file is ``meta_<category>.<json|jsonl>[.gz]`` beside it, where ``<category>`` is the
    reviews name without ``reviews_`` / ``_5``. ``example`` is shown in errors (e.g. ``All_Beauty.jsonl.gz``).
    """
    fix_dir = f"point data.path at a directory holding one category's reviews file ({example}) and its meta_ file"
    if path.is_file():
        reviews, folder = path, path.parent
    elif path.is_dir():
        folder = path
        found = sorted(
            p
            for p in path.iterdir()
            if p.is_file() and _strip_suffix(p.name) and not p.name.startswith("meta_") and p.name != "manifest.json"
        )
        if not found:
            raise DataFormatError(
                f"data.source={source}: no reviews file (*.jsonl[.gz], *.json[.gz]) in {path}. "
                f"Fix: {fix_dir}, or run python -m stages.download {source} --category <Category>"
            )
        if len(found) > 1:
            names = ", ".join(p.name for p in found)
            raise DataFormatError(
                f"data.source={source}: {path} holds several reviews files ({names}). Fix: set data.path to one of "
                "them (its meta_ file must sit beside it), or keep one category per directory"
            )
        reviews = found[0]
    else:
        raise DataFormatError(f"data.source={source}: data.path = {str(path)!r} does not exist. Fix: {fix_dir}")
    parsed = _strip_suffix(reviews.name)
    if parsed is None:
        raise DataFormatError(f"{reviews}: not a JSON-lines file (expected {', '.join(JSON_SUFFIXES)}). Fix: {fix_dir}")
    category = parsed[0].removeprefix("reviews_").removesuffix("_5")
    for suffix in JSON_SUFFIXES:
        meta = folder / f"meta_{category}{suffix}"
        if meta.is_file():
            return reviews, meta, category
    raise DataFormatError(
        f"data.source={source}: no metadata file for {reviews.name}: expected {folder / f'meta_{category}'}"
        f"{{{','.join(JSON_SUFFIXES)}}}. Fix: download meta_{category} (python -m stages.download {source} "
        f"--category {category}) into {folder}; item text and images come from it"
    )
