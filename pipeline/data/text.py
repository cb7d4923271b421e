"""Text clean-up shared by the raw-format readers: HTML, entities, unicode and whitespace.

Raw product metadata is dirty: Amazon descriptions carry HTML (``<br>``, ``<b>``, whole ``<script>`` blocks),
entities (``&amp;``, ``&#8217;``), control characters, non-breaking spaces and decomposed accents. Item text
goes through :func:`clean_text_series` before the text encoders see it:

1. ``<script>``/``<style>`` blocks and every other tag become a space (vectorised polars regex);
2. HTML entities are decoded and the text is NFC-normalised (Python, only for values containing ``&`` or
   non-ASCII characters, so ASCII-only text never leaves polars);
3. control characters become spaces, runs of whitespace (unicode-aware, ``\\xa0`` included) collapse to one
   space, and the ends are stripped. Null stays null.

``U+FFFD`` (the replacement character left by decoding invalid UTF-8) is kept: it marks where bytes were lost.
"""

from __future__ import annotations

import html
import re
import unicodedata

import polars as pl

_SCRIPT = r"(?is)<(?:script|style)\b[^>]*>.*?</(?:script|style)\s*>"
_TAG = r"<[^>]*>"
_CONTROL = r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]"
_SPACE = r"\s+"
_TAG_RE = re.compile(_TAG)
_SCRIPT_RE = re.compile(_SCRIPT)
_CONTROL_RE = re.compile(_CONTROL)
_SPACE_RE = re.compile(_SPACE)


def clean_text(value: str | None) -> str:
    """One string through the same steps as :func:`clean_text_series`; ``None`` becomes ``""``."""
    if not value:
        return ""
    value = _TAG_RE.sub(" ", _SCRIPT_RE.sub(" ", value))
    value = unicodedata.normalize("NFC", html.unescape(value))
    return _SPACE_RE.sub(" ", _CONTROL_RE.sub(" ", value)).strip()


def _unescape_normalise(values: list[str | None]) -> list[str | None]:
    return [None if v is None else unicodedata.normalize("NFC", html.unescape(v)) for v in values]


def clean_text_series(values: pl.Series) -> pl.Series:
    """Vectorised :func:`clean_text` over a String series (nulls stay null, name kept)."""
    name = values.name
    s = values.cast(pl.String).str.replace_all(_SCRIPT, " ").str.replace_all(_TAG, " ")
    needs_python = (s.str.contains("&", literal=True) | (s.str.len_bytes() != s.str.len_chars())).fill_null(False)
    if needs_python.any():
        idx = needs_python.arg_true()
        fixed = pl.Series(_unescape_normalise(s.gather(idx).to_list()), dtype=pl.String)
        s = s.scatter(idx, fixed)
    s = s.str.replace_all(_CONTROL, " ").str.replace_all(_SPACE, " ").str.strip_chars()
    return s.alias(name)


def join_list(column: str, separator: str) -> pl.Expr:
    """A ``List(String)`` column as one string: nulls and empty elements dropped, null if nothing is left."""
    joined = (
        pl.col(column)
        .list.eval(pl.element().filter(pl.element().is_not_null() & (pl.element().str.strip_chars() != "")))
        .list.join(separator)
    )
    return pl.when(joined.str.len_bytes() > 0).then(joined).otherwise(None).alias(column)


def compose_text(parts: list[pl.Expr], separator: str = ". ") -> pl.Expr:
    """Concatenate already-cleaned text parts, skipping null or empty ones; never null (``""`` when all are empty).

    With a separator starting with ``.``, a part's own trailing full stop is dropped (no "Title.. Brand").
    """
    cleaned = [pl.when(p.str.len_bytes() > 0).then(p).otherwise(None) for p in parts]
    if separator.startswith("."):
        cleaned = [p.str.strip_suffix(".") for p in cleaned]
    return pl.concat_str(cleaned, separator=separator, ignore_nulls=True).fill_null("")


def labelled(label: str, expr: pl.Expr) -> pl.Expr:
    """``"<label>: <value>"``, or null when the value is null or empty."""
    return pl.when(expr.str.len_bytes() > 0).then(pl.lit(f"{label}: ") + expr).otherwise(None)


def field_label(name: str) -> str:
    """A column or field name as a text label: ``"release_year"`` -> ``"Release year"``."""
    spaced = name.replace("_", " ").strip()
    return spaced[:1].upper() + spaced[1:]


def compose_fields(columns: list[str], labels: dict[str, str]) -> pl.Expr:
    """Item text from String ``columns`` in order: ``"<first>. <Label>: <second>. ..."``.

    A column's label is ``labels[column]`` when given (``""`` = no label), else none for the first column (the
    title, as every reader puts it) and the column name as a label (:func:`field_label`) for the others. Empty
    values are skipped; never null.
    """
    parts = []
    for i, column in enumerate(columns):
        label = labels.get(column, "" if i == 0 else field_label(column))
        parts.append(labelled(label, pl.col(column)) if label else pl.col(column))
    return compose_text(parts)
