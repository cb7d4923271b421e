"""Source-agnostic cleaning of a reader's ``RawData`` into ``items.parquet``, ``sequences.parquet``, ``stats.json``.

Steps, in order (each drop is counted by reason in ``stats.json``; input rows = kept + sum of drops):

1. ``unknown_item``: interactions whose item has no metadata row are dropped;
2. ``min_rating``: with ``data.min_rating`` set, interactions rated below it (or unrated) are dropped;
3. ``duplicate``: ``data.dedupe = user_item`` keeps each user's first interaction with an item (chronological
   order); ``exact`` drops only repeated identical (user, item, timestamp) events, keeping the first by file row;
4. ``history_limit``: with ``data.history_limit`` = N, only each user's N most recent interactions are kept
   (the authors' protocol of ODMT cuts histories to the last 15);
5. ``kcore``: iterative k-core (``data.user_core``, ``data.item_core``) until no user or item falls below its
   threshold (removing users can push items under theirs and back);
6. ``cold_start_*``: with ``data.cold_start_fraction`` > 0, the held-out items' interactions that are not a test
   target, and what must go to keep sequences chronological (rules in :mod:`pipeline.data.cold_start`).

"Chronological" always means ordered by ``(timestamp, row)``, where ``row`` is the reader's file order, so equal
timestamps are broken deterministically and the result never depends on the order of rows in memory.

Id mapping: items are numbered ``1..N`` and users ``0..U-1`` in order of first appearance in the cleaned log
sorted by ``(timestamp, row)``; item index 0 is padding. Full sequences are stored (models truncate to
``data.max_seq_len``).
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from pipeline.config import ConfigError, DataConfig, RecboleConfig, TableConfig
from pipeline.data.cold_start import (
    COLD_START_DROP_REASONS,
    apply_cold_start,
    check_fraction,
    check_share,
    choose_cold_items,
)
from pipeline.data.images import attach_images
from pipeline.data.posters import POSTER_SOURCES, check_posters_dir, poster_lookup, poster_stats
from pipeline.data.readers import get_reader
from pipeline.data.schema import INTERACTION_SCHEMA, ITEM_REQUIRED_COLUMNS, RawData
from pipeline.io import check_disjoint, staged_outputs, write_json_atomic

log = logging.getLogger(__name__)

PADDING_IDX = 0
MIN_USER_CORE = 3  # leave-one-out needs a training item, a valid target and a test target
DROP_REASONS = ("unknown_item", "min_rating", "duplicate", "kcore")
OUTPUTS = ("items.parquet", "sequences.parquet", "images", "stats.json")  # replaced together, or not at all
CHRONO = ["timestamp", "row"]
ID_MAPPING = (
    "items 1..N and users 0..U-1 numbered by first appearance in the cleaned log ordered by (timestamp, row); "
    "item index 0 is padding"
)
SYNTHETIC_IMAGES_NOTE = (
    "{source} ships no item images: every item image is a synthetic title card generated from its title "
    "(data.images_dir: null), so image features carry title information only"
)

POSTERS_NOTE = (
    "item images are real MovieLens-1M posters (data.posters_dir: {posters_dir}): {n} of {items} items have one "
    "({coverage:.1%}); the others have no image and are masked (stats: images.posters)"
)


# ----------------------------------------------------------------------------------------------------------------
# Validation.


def validate_config(cfg: DataConfig) -> None:
    """Reject settings prepare cannot honour, naming the key and the fix."""
    if cfg.user_core < MIN_USER_CORE:
        raise ConfigError(
            f"`data.user_core` = {cfg.user_core}: leave-one-out needs at least {MIN_USER_CORE} interactions per user "
            f"(train, valid, test); set data.user_core >= {MIN_USER_CORE}"
        )
    if cfg.item_core < 1:
        raise ConfigError(f"`data.item_core` = {cfg.item_core} must be >= 1 (1 keeps every item)")
    if cfg.max_seq_len <= 0:
        raise ConfigError(f"`data.max_seq_len` = {cfg.max_seq_len} must be > 0 (e.g. 200)")
    if cfg.min_rating is not None and not math.isfinite(cfg.min_rating):
        raise ConfigError(f"`data.min_rating` = {cfg.min_rating} must be a finite number or null")
    check_fraction(cfg.cold_start_fraction)
    check_share(cfg.cold_target_share)
    if cfg.cold_target_share is not None and cfg.cold_start_fraction == 0.0:
        raise ConfigError(
            f"`data.cold_target_share` = {cfg.cold_target_share} is read only in the cold-start setting, but "
            "data.cold_start_fraction is 0, so it would be ignored; set data.cold_start_fraction (e.g. 0.1) or put "
            "data.cold_target_share back to null"
        )
    _validate_posters(cfg)
    for section, default, reader in (("recbole", RecboleConfig(), "recbole"), ("table", TableConfig(), "table")):
        if cfg.source != reader and getattr(cfg, section) != default:
            raise ConfigError(
                f"`data.{section}` is read only by data.source: {reader}, but data.source is {cfg.source!r}, so its "
                f"changed values would be ignored. Set data.source: {reader}, or put data.{section} back to its "
                "defaults (params.yaml)"
            )


def _validate_posters(cfg: DataConfig) -> None:
    if cfg.posters_dir is None:
        return
    if cfg.source not in POSTER_SOURCES:
        raise ConfigError(
            f"`data.posters_dir` holds MovieLens-1M posters, read only by data.source: {' or '.join(POSTER_SOURCES)}, "
            f"but data.source is {cfg.source!r}, so it would be ignored. Set data.posters_dir: null (real images "
            "of other sources go in data.images_dir)"
        )
    if cfg.images_dir is not None:
        raise ConfigError(
            "`data.posters_dir` and `data.images_dir` are both set; they are two ways to give item images. Keep "
            "data.posters_dir (MovieLens posters named by MovieID) and set data.images_dir: null, or the reverse"
        )
    check_posters_dir(Path(cfg.posters_dir))


def input_folders(cfg: DataConfig) -> dict[str, Path | None]:
    """The folders prepare reads (``data.path``, ``data.images_dir``, ``data.posters_dir``, the folders of
    ``data.table``'s files)."""
    folders: dict[str, Path | None] = {"data.path": _path(cfg.path), "data.images_dir": _path(cfg.images_dir)}
    folders["data.posters_dir"] = _path(cfg.posters_dir)
    for key in ("interactions", "items"):
        spec = getattr(cfg.table, key)
        if cfg.source == "table" and spec is not None:
            path = Path(spec) if Path(spec).is_absolute() or cfg.path is None else Path(cfg.path) / spec
            while any(c in path.name for c in "*?[") or (path.suffix and not path.is_dir()):
                path = path.parent  # a glob or a file: the folder it lives in
            folders[f"data.table.{key}"] = path
    return folders


def _path(value: str | None) -> Path | None:
    return None if value is None else Path(value)


def check_raw(raw: RawData, source: str) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Collect a reader's output and check it honours ``pipeline.data.schema`` (a failure is a reader bug)."""
    schema = raw.interactions.collect_schema()
    for name, dtype in INTERACTION_SCHEMA.items():
        if schema.get(name) != dtype:
            raise TypeError(f"reader {source!r}: interactions column {name!r} must be {dtype}, got {schema.get(name)}")
    for name, dtype in ITEM_REQUIRED_COLUMNS.items():
        if raw.items.schema.get(name) != dtype:
            raise TypeError(
                f"reader {source!r}: items column {name!r} must be {dtype}, got {raw.items.schema.get(name)}"
            )
    interactions = raw.interactions.select(list(INTERACTION_SCHEMA)).collect(engine="streaming")
    nulls = interactions.select(pl.col("user_id", "item_id", "timestamp", "row").null_count()).row(0, named=True)
    if any(nulls.values()):
        raise ValueError(f"reader {source!r} returned null values {nulls}; a reader must drop and count such rows")
    if interactions["row"].n_unique() != interactions.height:
        raise ValueError(f"reader {source!r}: `row` must be unique (the file order used to break timestamp ties)")
    items = raw.items
    if items["item_id"].null_count() or items["item_id"].is_duplicated().any():
        raise ValueError(f"reader {source!r} returned null or duplicate item ids; items must have one row per item")
    return interactions, items


# ----------------------------------------------------------------------------------------------------------------
# Cleaning steps. Each takes and returns interactions with columns user_id, item_id, timestamp, row (ids may be the
# original strings or integer codes) and preserves row order; the int is the number of rows dropped.


def filter_min_rating(df: pl.DataFrame, min_rating: float | None) -> tuple[pl.DataFrame, int]:
    """Keep interactions with ``rating >= min_rating`` (null ratings fail the test); ``None`` keeps all."""
    if min_rating is None:
        return df, 0
    if df.height and df["rating"].null_count() == df.height:
        raise ConfigError(f"`data.min_rating` = {min_rating} but this source has no ratings; set data.min_rating: null")
    kept = df.filter(pl.col("rating") >= min_rating)
    return kept, df.height - kept.height


def dedupe(df: pl.DataFrame, mode: str) -> tuple[pl.DataFrame, int]:
    """``user_item``: a user's first interaction with each item; ``exact``: first of identical (user, item, time)."""
    keys = {"user_item": ["user_id", "item_id"], "exact": ["user_id", "item_id", "timestamp"]}
    if mode not in keys:
        raise ConfigError(f"`data.dedupe` = {mode!r} must be one of 'user_item', 'exact'")
    ordered = df.sort(CHRONO, maintain_order=True)
    kept = ordered.filter(pl.struct(keys[mode]).is_first_distinct())
    return kept, df.height - kept.height


def limit_history(df: pl.DataFrame, limit: int | None) -> tuple[pl.DataFrame, int]:
    """Keep each user's ``limit`` most recent interactions (by ``(timestamp, row)``); ``None`` keeps all."""
    if limit is None:
        return df, 0
    if limit < 3:
        raise ConfigError(f"`data.history_limit` = {limit} must be >= 3 (leave-one-out needs train, valid and test)")
    ordered = df.sort(CHRONO, maintain_order=True)
    from_end = pl.int_range(pl.len(), 0, -1).over("user_id")  # the most recent interaction gets 1
    kept = ordered.filter(from_end <= limit)
    return kept, df.height - kept.height


def k_core(df: pl.DataFrame, user_core: int, item_core: int) -> tuple[pl.DataFrame, int, int]:
    """Iterative k-core: repeat until every user has >= ``user_core`` and every item >= ``item_core`` interactions.

    Returns the kept interactions, the rows dropped and the number of passes (the last pass removes nothing).
    """
    start, passes = df.height, 0
    while True:
        passes += 1
        kept = df.filter((pl.len().over("user_id") >= user_core) & (pl.len().over("item_id") >= item_core))
        if kept.height == df.height:
            return kept, start - kept.height, passes
        df = kept


def timestamp_tie_rate(sequences: pl.DataFrame) -> float:
    """Fraction of interactions whose timestamp equals the previous interaction's in the same user's sequence."""
    flat = sequences.select("user_idx", "timestamps").explode("timestamps")  # (interactions, 2)
    if flat.height == 0:
        return 0.0
    same_user = pl.col("user_idx") == pl.col("user_idx").shift(1)
    same_time = pl.col("timestamps") == pl.col("timestamps").shift(1)
    ties = flat.select((same_user & same_time).fill_null(False).sum()).item()
    return ties / flat.height


def map_ids(df: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """Number items 1..N and users 0..U-1 by first appearance in ``(timestamp, row)`` order.

    Returns interactions with ``user_idx`` (Int32) and ``item_idx`` (Int32) added, and the two lookup tables
    ``(user_id, user_idx)``, ``(item_id, item_idx)``.
    """
    ordered = df.sort(CHRONO, maintain_order=True)
    users = ordered.select(pl.col("user_id").unique(maintain_order=True))
    users = users.with_columns(pl.int_range(pl.len(), dtype=pl.Int32).alias("user_idx"))
    items = ordered.select(pl.col("item_id").unique(maintain_order=True))
    items = items.with_columns((pl.int_range(pl.len(), dtype=pl.Int32) + PADDING_IDX + 1).alias("item_idx"))
    mapped = ordered.join(users, on="user_id", how="left", maintain_order="left").join(
        items, on="item_id", how="left", maintain_order="left"
    )
    return mapped, users, items


def build_sequences(mapped: pl.DataFrame) -> pl.DataFrame:
    """``user_idx, user_id, items (list<int32>), timestamps (list<int64>)``, chronological, sorted by user_idx."""
    ordered = mapped.sort(["user_idx", *CHRONO])
    return (
        ordered.group_by("user_idx", maintain_order=True)
        .agg(
            pl.col("user_id").first(),
            pl.col("item_idx").alias("items"),
            pl.col("timestamp").alias("timestamps"),
        )
        .with_columns(pl.col("items").cast(pl.List(pl.Int32)), pl.col("timestamps").cast(pl.List(pl.Int64)))
    )


def length_quantiles(lengths: np.ndarray) -> dict[str, float]:
    """min, p25, p50, p75, p90, max and mean of the sequence lengths (linear interpolation)."""
    if len(lengths) == 0:
        return {k: 0.0 for k in ("min", "p25", "p50", "p75", "p90", "max", "mean")}
    q = np.percentile(lengths, [25, 50, 75, 90])
    return {
        "min": float(lengths.min()),
        "p25": float(q[0]),
        "p50": float(q[1]),
        "p75": float(q[2]),
        "p90": float(q[3]),
        "max": float(lengths.max()),
        "mean": float(lengths.mean()),
    }


# ----------------------------------------------------------------------------------------------------------------
# The whole step.


def _encode_ids(interactions: pl.DataFrame, items: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame, int]:
    """Replace string ids by UInt32 codes (cheaper to sort and group); drop interactions with unknown items.

    Returns the coded interactions, the user code table ``(user_id, user_code)`` and the unknown-item count.
    Item codes are row positions in ``items`` (see ``_item_codes``).
    """
    coded = interactions.join(_item_codes(items).select("item_id", "item_code"), on="item_id", how="inner")
    unknown = interactions.height - coded.height
    user_codes = coded.select(pl.col("user_id").unique().sort())
    user_codes = user_codes.with_columns(pl.int_range(pl.len(), dtype=pl.UInt32).alias("user_code"))
    coded = coded.join(user_codes, on="user_id", how="inner").select(
        pl.col("user_code").alias("user_id"), pl.col("item_code").alias("item_id"), "timestamp", "rating", "row"
    )
    return coded, user_codes, unknown


def _item_codes(items: pl.DataFrame) -> pl.DataFrame:
    return items.with_columns(pl.int_range(pl.len(), dtype=pl.UInt32).alias("item_code"))


def prepare(cfg: DataConfig, out_dir: Path) -> dict[str, Any]:
    """Read ``cfg.source``, clean it, and write items.parquet, sequences.parquet, images/ and stats.json."""
    validate_config(cfg)
    check_disjoint({"--out": out_dir}, input_folders(cfg))  # before anything is read, written or deleted
    started = time.perf_counter()
    raw = get_reader(cfg.source)(cfg)
    interactions, meta = check_raw(raw, cfg.source)
    input_rows = interactions.height + sum(raw.drops.values())
    drops: Counter[str] = Counter({reason: int(n) for reason, n in raw.drops.items()})

    # += so that a reader's own count under the same reason is added to, never overwritten.
    coded, user_codes, unknown = _encode_ids(interactions, meta)
    drops["unknown_item"] += unknown
    del interactions
    interacted_items = coded["item_id"].n_unique()
    coded, below_rating = filter_min_rating(coded, cfg.min_rating)
    drops["min_rating"] += below_rating
    coded, duplicates = dedupe(coded, cfg.dedupe)
    drops["duplicate"] += duplicates
    coded, beyond_limit = limit_history(coded, cfg.history_limit)
    if cfg.history_limit is not None:
        drops["history_limit"] += beyond_limit
    coded, kcore_dropped, passes = k_core(coded, cfg.user_core, cfg.item_core)
    drops["kcore"] += kcore_dropped
    if coded.height == 0:
        raise ConfigError(
            f"no interactions left after filtering {input_rows:,} rows (dropped: {dict(drops)}); lower "
            "data.user_core / data.item_core or data.min_rating"
        )

    mapped, _, item_map = map_ids(coded)
    del coded
    mapped = mapped.join(user_codes.rename({"user_id": "user_name", "user_code": "user_id"}), on="user_id")
    sequences = build_sequences(mapped.drop("user_id").rename({"user_name": "user_id"}))
    del mapped
    cold_items = choose_cold_items(item_map.height, cfg.cold_start_fraction, cfg.seed)
    sequences, cold_drops, cold_summary = apply_cold_start(sequences, cold_items, cfg.cold_target_share, cfg.seed)
    if len(cold_items):  # the cold_start_* reasons appear in stats.json only in the cold-start setting
        drops.update(cold_drops)
    _check_users_left(cfg, sequences, cold_summary)
    tie_rate = timestamp_tie_rate(sequences)
    catalog = item_map.rename({"item_id": "item_code"}).join(_item_codes(meta), on="item_code").sort("item_idx")

    extra = [c for c in meta.columns if c not in ("item_id", "text", "image_ref")]
    if meta["image_ref"].null_count() < meta.height:
        extra.append("image_ref")
    items = catalog.select("item_idx", "item_id", pl.col("text").fill_null(""), *extra)
    # Every output is written into a staging folder and swapped in together: a failure leaves the old set whole.
    with staged_outputs(out_dir, OUTPUTS) as stage:
        items, image_stats = _attach_images(cfg, items, stage)
        items = items.select("item_idx", "item_id", "text", "image_path", *extra)
        not_in_catalog = {
            "never_interacted": meta.height - interacted_items,
            "filtered_out": interacted_items - items.height,
        }
        stats = _stats(
            cfg, raw, input_rows, drops, passes, not_in_catalog, sequences, items.height, tie_rate, image_stats
        )
        stats["cold_start"] = {"fraction": cfg.cold_start_fraction, **cold_summary}
        items.write_parquet(stage / "items.parquet")
        sequences.write_parquet(stage / "sequences.parquet")
        write_json_atomic(stage / "stats.json", stats)
    log.info("prepared %s in %.1f s", out_dir, time.perf_counter() - started)
    return stats


def _attach_images(cfg: DataConfig, items: pl.DataFrame, stage: Path) -> tuple[pl.DataFrame, dict]:
    """Title cards, ``data.images_dir`` or ``data.posters_dir`` (MovieLens posters found through movies.dat).

    ``image_path`` never depends on the working directory: cards relative to the prepared folder, real images
    absolute (``pipeline.data.images``).
    """
    if cfg.posters_dir is None:
        return attach_images(items, cfg.images_dir, stage)
    posters_dir = Path(cfg.posters_dir)
    lookup = poster_lookup(cfg.source, posters_dir, items["item_id"].to_list())
    items, stats = attach_images(items, str(lookup.images_dir), stage, stems=lookup.stems, source="movielens_posters")
    stats["posters"] = poster_stats(lookup, posters_dir, stats, items.height)
    log.info("posters: %d of %d items have one (%.1f%%); without: %s", stats["present"], items.height,
             100 * stats["posters"]["coverage"], stats["posters"]["items_without_poster"])  # fmt: skip
    return items, stats


def _check_users_left(cfg: DataConfig, sequences: pl.DataFrame, cold_summary: dict[str, Any]) -> None:
    """No user left after the cold-start split is a setting error, reported before any output is touched."""
    if sequences.height == 0:
        raise ConfigError(
            f"`data.cold_start_fraction` = {cfg.cold_start_fraction} holds out {cold_summary['held_out_items']} "
            f"items and leaves no user with enough interactions outside them ({cold_summary['users_dropped']} users "
            "dropped); lower data.cold_start_fraction (e.g. 0.1)"
        )


def _stats(
    cfg: DataConfig,
    raw: RawData,
    input_rows: int,
    drops: Counter[str],
    passes: int,
    not_in_catalog: dict[str, int],
    sequences: pl.DataFrame,
    n_items: int,
    tie_rate: float,
    image_stats: dict[str, Any],
) -> dict[str, Any]:
    lengths = sequences["items"].list.len().to_numpy()
    n_users, n_inter = sequences.height, int(lengths.sum())
    dropped = {reason: int(n) for reason, n in raw.drops.items()} | {r: int(drops[r]) for r in DROP_REASONS}
    dropped |= {r: int(drops[r]) for r in COLD_START_DROP_REASONS if r in drops}
    dropped |= {"history_limit": int(drops["history_limit"])} if "history_limit" in drops else {}
    if input_rows != n_inter + sum(dropped.values()):  # an internal invariant: every row is kept or counted
        raise RuntimeError(f"row accounting is off: {input_rows} in, {n_inter} kept, dropped {dropped}")
    notes = list(raw.notes)
    if image_stats["source"] == "synthetic_title_cards":
        notes.append(SYNTHETIC_IMAGES_NOTE.format(source=cfg.source))
    if "posters" in image_stats:
        notes.append(POSTERS_NOTE.format(n=image_stats["present"], items=n_items, **image_stats["posters"]))
    return {
        "source": cfg.source,
        "source_files": [_portable(p) for p in raw.source_files],
        "input_rows": input_rows,
        "users": n_users,
        "items": n_items,
        "interactions": n_inter,
        "density": n_inter / (n_users * n_items),
        "sequence_length": length_quantiles(lengths),
        "timestamp_tie_rate": tie_rate,
        "dropped": dropped,
        "kcore_passes": passes,
        "metadata_items": n_items + sum(not_in_catalog.values()),
        "metadata_items_not_in_catalog": not_in_catalog,
        "id_mapping": ID_MAPPING,
        "images": image_stats,
        "notes": notes,
    }


def _portable(path: Path) -> str:
    """A source path that is the same on every machine: site-packages files are named from their package."""
    parts = Path(path).parts
    if "site-packages" in parts:
        return "/".join(parts[parts.index("site-packages") + 1 :])
    return str(path)
