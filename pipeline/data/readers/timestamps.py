"""Timestamps of user tables as epoch seconds: numbers in a stated or detected unit, ISO 8601 text, date-times.

- Numbers (or numeric text): ``unit`` ``s``, ``ms``, ``us`` or ``ns``, or ``auto``: decided per value by magnitude
  (see :func:`pipeline.data.readers.rawio.seconds_by_magnitude`). Decimals are floored to whole seconds.
- ISO 8601 text: ``2024-03-01``, ``2024-03-01T12:30``, ``2024-03-01 12:30:05.25``, each optionally followed by
  ``Z`` or an offset (``+02:00``, ``+0200``, ``-05``). A value with an offset is exact. A value without one is read
  in ``timezone`` (an IANA name such as ``UTC`` or ``Europe/Paris``; a local time that does not exist in that zone,
  skipped by a DST change, is null; an ambiguous one takes the earlier instant); with ``timezone`` None it is null,
  and the reader turns that into an error asking for the zone (:func:`naive_iso`).
- Parquet ``Datetime``/``Date`` columns: with a time zone they are exact; naive ones are read in ``timezone``.

Everything is a vectorised polars expression, so a lazy scan stays lazy and streams.
"""

from __future__ import annotations

import zoneinfo

import polars as pl

from pipeline.config import ConfigError
from pipeline.data.readers.rawio import seconds_by_magnitude

UNITS = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}
ISO_8601 = (
    r"^(?P<date>\d{4}-\d{2}-\d{2})"
    r"(?:[T ](?P<h>\d{2}):(?P<m>\d{2})(?::(?P<s>\d{2})(?:[.,]\d+)?)?)?"
    r"\s*(?P<offset>[Zz]|[+-]\d{2}(?::?\d{2})?)?$"
)


def check_timezone(timezone: str | None, key: str) -> None:
    """``timezone`` is None or a known IANA zone name; otherwise a ``ConfigError`` naming ``key``."""
    if timezone is None:
        return
    try:
        zoneinfo.ZoneInfo(timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError) as e:
        raise ConfigError(
            f"`{key}` = {timezone!r} is not a time zone name; use an IANA name such as UTC, "
            "Europe/Paris or America/New_York"
        ) from e


def _integer(expr: pl.Expr, dtype: pl.DataType) -> pl.Expr:
    """Whole numbers (Int64) from integers, floats (floored) or numeric text; null otherwise."""
    if dtype.is_integer():
        return expr.cast(pl.Int64)
    if dtype.is_float():
        return pl.when(expr.is_finite()).then(expr.floor()).cast(pl.Int64, strict=False)
    text = expr.cast(pl.String).str.strip_chars()
    as_float = text.cast(pl.Float64, strict=False)
    return pl.coalesce(
        text.str.to_integer(strict=False),
        pl.when(as_float.is_finite()).then(as_float.floor()).cast(pl.Int64, strict=False),
    )


def numeric_seconds(expr: pl.Expr, dtype: pl.DataType, unit: str) -> pl.Expr:
    """Epoch seconds from numbers (or numeric text) in ``unit`` (``auto``: by magnitude)."""
    as_int = _integer(expr, dtype)
    return seconds_by_magnitude(as_int) if unit == "auto" else as_int // UNITS[unit]


def _local_to_utc(local: pl.Expr, timezone: str | None) -> pl.Expr:
    """Epoch seconds of a wall-clock time (given as seconds since 1970-01-01 00:00 on that clock) in ``timezone``."""
    if timezone is None:
        return pl.lit(None, dtype=pl.Int64)
    if timezone == "UTC":
        return local
    wall = pl.from_epoch(local, time_unit="s")
    zoned = wall.dt.replace_time_zone(timezone, ambiguous="earliest", non_existent="null")
    return zoned.dt.epoch("s")


def iso_seconds(expr: pl.Expr, timezone: str | None) -> pl.Expr:
    """Epoch seconds from ISO 8601 text (see the module docstring); null where the text is not ISO 8601."""
    parts = expr.cast(pl.String).str.strip_chars().str.extract_groups(ISO_8601)
    days = parts.struct.field("date").str.to_date("%Y-%m-%d", strict=False).cast(pl.Int64)
    h, m, s = (parts.struct.field(k).cast(pl.Int64).fill_null(0) for k in ("h", "m", "s"))
    valid_time = (h < 24) & (m < 60) & (s <= 60)
    local = pl.when(valid_time).then(days * 86_400 + h * 3_600 + m * 60 + s)
    offset = parts.struct.field("offset")
    digits = offset.str.replace_all(":", "", literal=True).str.slice(1)
    sign = pl.when(offset.str.starts_with("-")).then(-1).otherwise(1)
    offset_s = sign * (
        digits.str.slice(0, 2).cast(pl.Int64, strict=False).fill_null(0) * 3_600
        + digits.str.slice(2, 2).cast(pl.Int64, strict=False).fill_null(0) * 60
    )
    exact = pl.when(offset.str.to_uppercase() == "Z").then(local).otherwise(local - offset_s)
    return pl.when(offset.is_null()).then(_local_to_utc(local, timezone)).otherwise(exact)


def naive_iso(expr: pl.Expr) -> pl.Expr:
    """True where the text is ISO 8601 without ``Z`` or an offset (needs a stated time zone)."""
    parts = expr.cast(pl.String).str.strip_chars().str.extract_groups(ISO_8601)
    return parts.struct.field("date").is_not_null() & parts.struct.field("offset").is_null()


def datetime_seconds(expr: pl.Expr, dtype: pl.DataType, timezone: str | None) -> pl.Expr:
    """Epoch seconds of a ``Date`` or ``Datetime`` column (naive values read in ``timezone``)."""
    if dtype == pl.Date:
        return _local_to_utc(expr.cast(pl.Int64) * 86_400, timezone)
    if getattr(dtype, "time_zone", None):
        return expr.dt.epoch("s")
    return _local_to_utc(expr.dt.epoch("s"), timezone)


def text_seconds(expr: pl.Expr, unit: str, timezone: str | None) -> pl.Expr:
    """Epoch seconds from a String column: numbers in ``unit``, ISO 8601 (``unit`` ``iso``), or either (``auto``)."""
    if unit == "iso":
        return iso_seconds(expr, timezone)
    numbers = numeric_seconds(expr, pl.String(), unit)
    return pl.coalesce(numbers, iso_seconds(expr, timezone)) if unit == "auto" else numbers
