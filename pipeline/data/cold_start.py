"""The item cold-start setting: a fraction of the items is held out of training entirely (the MP4SR paper's
cold-start setting; DESIGN.md: "a held-out fraction of items never appears in training").

Rules, applied by ``prepare`` to the chronological sequences when ``data.cold_start_fraction`` > 0 (the sequences
it writes are already arranged so that the ordinary leave-one-out split of :mod:`pipeline.data.splits` *is* the
cold-start split; every model and stage works unchanged):

1. **Held-out items.** ``round(fraction * N)`` of the item indices 1..N (at least one), drawn uniformly without
   replacement by ``numpy.random.default_rng(data.seed)``: the same data and params always hold out the same items.
   They stay in ``items.parquet`` and get features like every item, since a new item's content is known.
2. **Cold-target users.** A user who interacted with held-out items keeps, as the test target, the *last* of them;
   the history becomes the user's non-held-out items before it, in order, so the sequence stays chronological.
   Needs at least two such items (one to train on, one valid target); the user's other held-out interactions are
   dropped (``cold_start_held_out``), and so are the interactions after the target (``cold_start_after_target``).
3. **Fallback.** A user with fewer than two non-held-out items before the last held-out one loses all held-out
   interactions (``cold_start_held_out``) and is split like a normal user if at least three items remain; otherwise
   the user is dropped (``cold_start_short_user``). Users are then renumbered 0..U-1 in their original order.
4. **Guarantee.** A held-out item is never in a training sequence, never a valid target and never in a test
   history; it occurs only as a test target. Every dropped interaction is counted by reason in ``stats.json``.

Cold-start metrics (:func:`cold_target_mask`) average over the users whose test target appears in no user's test
history (training items + valid targets): exactly the held-out targets in the cold-start setting, and the rare
naturally unseen targets in the normal setting.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import polars as pl

from pipeline.config import ConfigError
from pipeline.data.splits import UserSplit

log = logging.getLogger(__name__)

COLD_START_DROP_REASONS: tuple[str, ...] = ("cold_start_held_out", "cold_start_after_target", "cold_start_short_user")
MIN_WARM_BEFORE_TARGET = 2  # one training item + the valid target
MIN_SEQUENCE = 3  # leave-one-out needs train, valid and test


def check_fraction(fraction: float) -> None:
    if not 0.0 <= fraction < 1.0:
        raise ConfigError(
            f"`data.cold_start_fraction` = {fraction} must be in [0, 1): the fraction of items held out of training "
            "(0 = the normal setting, e.g. 0.1 for the cold-start setting)"
        )


def choose_cold_items(num_items: int, fraction: float, seed: int) -> np.ndarray:
    """Sorted int64 item indices (from 1..N) held out of training; empty when ``fraction`` is 0."""
    check_fraction(fraction)
    if fraction == 0.0 or num_items == 0:
        return np.zeros(0, dtype=np.int64)
    count = min(max(1, round(fraction * num_items)), num_items)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(np.arange(1, num_items + 1, dtype=np.int64), size=count, replace=False))


def apply_cold_start(
    sequences: pl.DataFrame, cold_items: np.ndarray
) -> tuple[pl.DataFrame, dict[str, int], dict[str, Any]]:
    """Rearrange ``sequences.parquet`` rows (user_idx, user_id, items, timestamps) by the module's rules.

    Returns the new sequences (same schema, users renumbered 0..U-1), the dropped interactions per reason
    (:data:`COLD_START_DROP_REASONS`) and a summary for ``stats.json``.
    """
    drops = dict.fromkeys(COLD_START_DROP_REASONS, 0)
    if len(cold_items) == 0:
        return sequences, drops, {"held_out_items": 0, "users_with_cold_target": 0, "users_dropped": 0}
    cold = pl.Series("cold", np.asarray(cold_items, dtype=np.int64)).cast(pl.Int32)
    long = (
        sequences.select(
            "user_idx",
            pl.col("items").alias("item"),
            pl.col("timestamps").alias("ts"),
            pl.int_ranges(0, pl.col("items").list.len()).alias("pos"),
        )
        .explode("item", "ts", "pos")
        .with_columns(pl.col("item").is_in(cold.implode()).alias("cold"))
    )
    last_cold = pl.col("pos").filter(pl.col("cold")).max().over("user_idx")
    long = long.with_columns(last_cold.alias("target_pos"))
    before = pl.col("pos") < pl.col("target_pos")
    long = long.with_columns(
        (before & ~pl.col("cold")).sum().over("user_idx").alias("warm_before"),
        (~pl.col("cold")).sum().over("user_idx").alias("warm_total"),
    )
    has_cold = pl.col("target_pos").is_not_null()
    cold_target = has_cold & (pl.col("warm_before") >= MIN_WARM_BEFORE_TARGET)
    fallback = has_cold & ~cold_target
    dropped_user = fallback & (pl.col("warm_total") < MIN_SEQUENCE)
    keep = (
        ~has_cold
        | (cold_target & ((before & ~pl.col("cold")) | (pl.col("pos") == pl.col("target_pos"))))
        | (fallback & ~dropped_user & ~pl.col("cold"))
    )
    reason = (
        pl.when(keep)
        .then(pl.lit(None, dtype=pl.String))
        .when(dropped_user)
        .then(pl.lit("cold_start_short_user"))
        .when(pl.col("cold"))
        .then(pl.lit("cold_start_held_out"))
        .otherwise(pl.lit("cold_start_after_target"))
    )
    long = long.with_columns(reason.alias("reason"), cold_target.alias("cold_target"))
    for name, count in long.drop_nulls("reason").group_by("reason").len().iter_rows():
        drops[name] = int(count)

    kept = long.filter(pl.col("reason").is_null()).sort("user_idx", "pos")
    rebuilt = (
        kept.group_by("user_idx", maintain_order=True)
        .agg(pl.col("item").alias("items"), pl.col("ts").alias("timestamps"), pl.col("cold_target").first())
        .join(sequences.select("user_idx", "user_id"), on="user_idx", how="left", maintain_order="left")
    )
    users_before = sequences.height
    summary = {
        "held_out_items": len(cold_items),
        "users_with_cold_target": int(rebuilt["cold_target"].sum()),
        "users_dropped": users_before - rebuilt.height,
    }
    rebuilt = rebuilt.with_columns(pl.int_range(pl.len(), dtype=sequences["user_idx"].dtype).alias("user_idx"))
    rebuilt = rebuilt.select(
        "user_idx",
        "user_id",
        pl.col("items").cast(sequences.schema["items"]),
        pl.col("timestamps").cast(sequences.schema["timestamps"]),
    )
    log.info(
        "cold start: %d items held out, %d users with a cold test target, %d users dropped, drops %s",
        summary["held_out_items"],
        summary["users_with_cold_target"],
        summary["users_dropped"],
        drops,
    )
    return rebuilt, drops, summary


def cold_target_mask(split: UserSplit) -> np.ndarray:
    """(U,) bool: users whose test target is in no user's test history (no training item, no valid target)."""
    if len(split) == 0:
        return np.zeros(0, dtype=bool)
    seen_items = np.concatenate([*split.train, split.valid_target]).astype(np.int64)  # every pre-test interaction
    size = int(max(seen_items.max(initial=0), split.test_target.max(initial=0))) + 1
    seen = np.zeros(size, dtype=bool)
    seen[seen_items] = True
    return ~seen[split.test_target]
