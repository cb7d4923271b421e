"""Raw-format readers: ``data.source`` -> a function ``DataConfig -> RawData`` (see ``pipeline.data.schema``).

Adding a source is one line in ``READERS``: ``"name": _lazy("pipeline.data.readers.<module>", "<function>")``. The
module is imported only when its reader is called, so a reader's optional dependencies never slow down the others.

This module also holds the small helpers every line-oriented reader shares: splitting a text file into validated
string fields with exact 1-based line numbers, and strict typed parsing of those fields. Both raise
``DataFormatError`` naming the file, the line, the offending content and the fix, and only search for the bad line
once a vectorised polars check has failed (so a valid 1M-line file parses in well under a second).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path

import polars as pl

from pipeline.config import ConfigError, DataConfig
from pipeline.data.readers.rawio import refuse_non_text
from pipeline.data.schema import DataFormatError, RawData

Reader = Callable[[DataConfig], RawData]


def _lazy(module: str, function: str) -> Reader:
    """A reader that imports ``module`` on first call and forwards to ``module.function``."""

    def reader(cfg: DataConfig) -> RawData:
        return getattr(importlib.import_module(module), function)(cfg)

    reader.__name__ = function
    reader.__qualname__ = f"{module}.{function}"
    return reader


READERS: dict[str, Reader] = {
    "ml1m_recbole": _lazy("pipeline.data.readers.movielens", "read_ml1m_recbole"),
    "movielens": _lazy("pipeline.data.readers.movielens", "read_movielens"),
    "movielens100k": _lazy("pipeline.data.readers.movielens_family", "read_movielens100k"),
    "movielens_csv": _lazy("pipeline.data.readers.movielens_family", "read_movielens_csv"),
    "amazon2018": _lazy("pipeline.data.readers.amazon2018", "read_amazon2018"),
    "amazon2023": _lazy("pipeline.data.readers.amazon2023", "read_amazon2023"),
    "hm": _lazy("pipeline.data.readers.hm", "read_hm"),
    "microlens": _lazy("pipeline.data.readers.microlens", "read_microlens"),
    "recbole": _lazy("pipeline.data.readers.recbole", "read_recbole"),
    "table": _lazy("pipeline.data.readers.table", "read_table"),
}


def get_reader(source: str) -> Reader:
    """The reader registered for ``data.source``; an unknown name is a ``ConfigError`` listing the known ones."""
    if source not in READERS:
        raise ConfigError(f"`data.source` = {source!r} is not a known source; must be one of: {', '.join(READERS)}")
    return READERS[source]


# ----------------------------------------------------------------------------------------------------------------
# Shared helpers for line-oriented text formats.

_SHOWN = 200  # characters of an offending line quoted in an error


def _quote(text: str) -> str:
    return repr(text if len(text) <= _SHOWN else text[:_SHOWN] + "...")


def format_error(path: Path, line: int | None, problem: str, content: str | None, fix: str) -> DataFormatError:
    """``<path>:<line>: <problem>: <content>. Fix: <fix>`` as a ``DataFormatError``."""
    where = f"{path}:{line}" if line is not None else f"{path}"
    shown = f": {_quote(content)}" if content is not None else ""
    return DataFormatError(f"{where}: {problem}{shown}. Fix: {fix}")


def decode_lines(data: bytes, path: Path, notes: list[str] | None = None) -> str:
    """UTF-8 where a line is valid UTF-8, latin-1 (which never fails) for each line that is not; BOM removed.

    The fallback is per line, never per file: one stray byte must not turn every accented title into mojibake.
    Each line read as latin-1 is counted in a note (with the first line number) appended to ``notes``.
    """
    data = data.removeprefix(b"\xef\xbb\xbf")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    lines, fallback, first = [], 0, 0
    for number, raw in enumerate(data.split(b"\n"), start=1):
        try:
            lines.append(raw.decode("utf-8"))
        except UnicodeDecodeError:
            lines.append(raw.decode("latin-1"))
            fallback += 1
            first = first or number
    if notes is not None:
        notes.append(
            f"{path.name}: {fallback:,} line(s) are not valid UTF-8 and were read as latin-1 (first: line {first}); "
            "every other line as UTF-8"
        )
    return "\n".join(lines)


def read_text(path: Path, encoding: str, fix: str, notes: list[str] | None = None) -> str:
    """Decode a whole file (a leading BOM removed). ``encoding="latin-1"``: UTF-8, else latin-1, per line (see
    :func:`decode_lines`). An empty file, or one of blank lines only, is a ``DataFormatError`` naming it, and so is
    one that is not text at all (UTF-16, gzip, zip, NUL bytes: :func:`~pipeline.data.readers.rawio.refuse_non_text`)."""
    if not path.is_file():
        raise format_error(path, None, "file not found", None, fix)
    data = path.read_bytes()
    if not data.strip().removeprefix(b"\xef\xbb\xbf").strip():
        raise format_error(path, None, "the file is empty (no data lines)", None, fix)
    # UTF-16 (Notepad's "Unicode"), gzip, zip: named as such, not split into a first "line" of binary garbage
    refuse_non_text(path, data[:4096], fix, text="UTF-8 text", as_="UTF-8 text")
    if encoding == "latin-1":
        return decode_lines(data, path, notes)
    try:
        return data.decode(encoding).removeprefix("\ufeff")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        bad = data[e.start : e.start + 16]
        raise format_error(path, line, f"not valid {encoding} (byte {bad[:1]!r} at offset {e.start})", None, fix) from e


SPLIT_COLUMNS = ("line", "row")  # what split_lines adds to the file's own columns


def split_lines(
    path: Path,
    text: str,
    sep: str,
    columns: list[str],
    *,
    skip_header: bool,
    layout: str,
    fix: str,
) -> tuple[pl.DataFrame, int]:
    """Split ``text`` into String columns ``columns`` plus ``line`` (1-based, physical) and ``row`` (0-based data row).

    Blank lines (a trailing newline included) are skipped and their number returned so callers can count them.
    A line with the wrong number of fields raises ``DataFormatError`` quoting it; ``layout`` describes the
    expected format in the message (e.g. ``"UserID::MovieID::Rating::Timestamp"``).
    """
    lines = pl.DataFrame({"text": pl.Series(text.split("\n"), dtype=pl.String)})
    lines = lines.with_row_index("line", offset=1).with_columns(
        pl.col("line").cast(pl.Int64), pl.col("text").str.strip_suffix("\r")
    )
    if skip_header:
        lines = lines.slice(1)
    blank = lines["text"].str.strip_chars().str.len_bytes() == 0
    n_blank = int(blank.sum())
    # A trailing newline leaves one empty string after the last line: that is not a blank line of the file.
    if text.endswith("\n") and n_blank and lines.height and bool(blank[-1]):
        n_blank -= 1
    lines = lines.filter(~blank)
    if lines.height == 0:
        problem = "no data lines (only a header)" if skip_header else "no data lines (only blank lines)"
        raise format_error(path, None, problem, None, fix)
    fields = lines["text"].str.split(sep)
    bad = fields.list.len() != len(columns)
    if bad.any():
        first = int(bad.arg_true()[0])
        found = int(fields.list.len()[first])
        raise format_error(
            path,
            int(lines["line"][first]),
            f"expected {len(columns)} fields separated by {sep!r} ({layout}), found {found}",
            lines["text"][first],
            fix,
        )
    frame = pl.DataFrame({"line": lines["line"], "fields": fields}).select(
        *[pl.col("fields").list.get(i).alias(name) for i, name in enumerate(columns)],
        "line",
        pl.int_range(pl.len(), dtype=pl.Int64).alias("row"),
    )
    return frame, n_blank


def _raise_first(path: Path, frame: pl.DataFrame, bad: pl.Series, column: str, problem: str, fix: str) -> None:
    if bad.any():
        first = int(bad.arg_true()[0])
        raise format_error(path, int(frame["line"][first]), f"{problem} in field `{column}`", frame[column][first], fix)


def parse_int(path: Path, frame: pl.DataFrame, column: str, fix: str, *, allow_integral_float: bool) -> pl.Series:
    """``frame[column]`` (String) as Int64; a non-integer value raises ``DataFormatError`` at its line.

    With ``allow_integral_float``, ``"978300760.0"`` is accepted as 978300760 (RecBole declares timestamps float).
    """
    raw = frame[column].str.strip_chars()
    values = raw.str.to_integer(strict=False)
    if allow_integral_float and values.null_count():
        floats = raw.cast(pl.Float64, strict=False)
        integral = floats.is_finite() & (floats == floats.round(0)) & (floats.abs() < 2.0**53)
        as_int = pl.when(integral).then(floats.cast(pl.Int64, strict=False))
        values = pl.select(pl.coalesce(values, as_int)).to_series()
    _raise_first(path, frame, values.is_null(), column, "not an integer", fix)
    return values.alias(column)


def parse_float(path: Path, frame: pl.DataFrame, column: str, fix: str) -> pl.Series:
    """``frame[column]`` (String) as Float64; a value that is not a finite number raises ``DataFormatError``."""
    values = frame[column].str.strip_chars().cast(pl.Float64, strict=False)
    _raise_first(path, frame, values.is_null() | ~values.is_finite(), column, "not a number", fix)
    return values.alias(column)


def check_nonempty(path: Path, frame: pl.DataFrame, columns: tuple[str, ...], fix: str) -> None:
    """An empty (or blank) String field in ``columns`` raises ``DataFormatError`` at its line, quoting the row."""
    for column in columns:
        empty = frame[column].str.strip_chars().str.len_bytes() == 0
        if empty.any():
            first = int(empty.arg_true()[0])
            fields = {k: v for k, v in frame.row(first, named=True).items() if k not in ("line", "row")}
            raise format_error(path, int(frame["line"][first]), f"empty field `{column}`", str(fields), fix)


def check_unique_ids(path: Path, frame: pl.DataFrame, column: str, fix: str) -> None:
    """A repeated id in ``column`` raises ``DataFormatError`` at its second line, naming the first."""
    dup = frame[column].is_duplicated()
    if dup.any():
        item = frame[column][int(dup.arg_true()[0])]
        lines = frame.filter(pl.col(column) == item)["line"].to_list()
        raise format_error(path, lines[1], f"item id {item!r} already defined on line {lines[0]}", item, fix)
