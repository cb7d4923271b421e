"""The item cold-start setting: a fraction of the items is held out of training entirely (the MP4SR paper's
cold-start setting; DESIGN.md: "a held-out fraction of items never appears in training").

Protocol, applied by ``prepare`` to the chronological sequences when ``data.cold_start_fraction`` > 0 (the sequences
it writes are already arranged so that the ordinary leave-one-out split of :mod:`pipeline.data.splits` *is* the
cold-start split; every model and stage works unchanged):

1. **Held-out items, two disjoint halves.** ``max(2, round(fraction * N))`` of the item indices 1..N, drawn
   uniformly without replacement by ``numpy.random.default_rng(data.seed)`` (the same data and params always hold
   out the same items), then split at random (seeded) into *cold-validation* items (half, rounded down) and
   *cold-test* items (the rest). They stay in ``items.parquet`` and get features like every item, since a new
   item's content is known. No held-out item is ever in a training sequence.
2. **Cold-target users, at a realistic share.** ``round(share * U)`` users get a cold-test item as their test
   target and as many *other* users a cold-validation item as their valid target, drawn at random (seeded) among
   the eligible users. ``share`` is ``data.cold_target_share``; null means the held-out items' share of all
   interactions in the data (the share of next interactions new items of that popularity would receive, ~ the
   held-out fraction), so "rank every unseen item first" costs the warm majority what it gains on the cold users.
   - *cold-test user*: the target is the user's last interaction with a cold-test item; the history is the user's
     warm items before it (at least two: one to train on, the valid target).
   - *cold-validation user*: the valid target is the user's last interaction with a cold-validation item that is
     followed by a warm item; the training items are the warm items before it (at least one) and the test target
     is the first warm item after it, so this user's test history ends with a cold-validation item (a new item
     seen as input; it is never a training item or a candidate for training).
   Everything else such a user did is dropped: held-out items (``cold_start_held_out``) and what came after the
   target (``cold_start_after_target``).
3. **Everyone else** loses every held-out interaction (``cold_start_held_out``) and is split like a normal user if
   at least three items remain; otherwise the user is dropped (``cold_start_short_user``). Users are then
   renumbered 0..U-1 in their original order. Every dropped interaction is counted by reason in ``stats.json``,
   which also lists the two item halves (``cold_start.valid_items`` / ``test_items``) for ``evaluate``.

Metrics (``evaluate``, :mod:`pipeline.evaluation.ranking`), for every run:

- ``valid`` / ``test``: every user, all items ranked — the realistic population (share of cold targets as above).
- ``<stage>_cold_start``: the cold-target users only, still ranked among **all** items (history masked).
- ``<stage>_warm_start``: the other users (what a cold-start trick costs the warm majority).
- ``<stage>_cold_among_cold``: the cold-target users, ranked among that stage's held-out items only (the paper's
  "new items only" view; independent of how cold scores compare with warm ones).

Comparable: any two runs on the same prepared data (same fraction, share and seed), row by row. Not comparable:
``*_cold_start`` across different shares or fractions, ``*_cold_among_cold`` across fractions (the candidate
count changes), and any of these with the normal setting's metrics (other users, other targets). Model selection
(early stopping, ODMT's head weights, MP4SR's cold-score offset) reads validation only, whose cold targets are
cold-validation items: no test item or target is ever looked at before the test ranking.

:func:`cold_target_mask` / :func:`cold_valid_mask` find the cold-target users from the split alone: targets that
occur in no training sequence (and, for test, are no valid target) — exactly the held-out targets in the cold-start
setting, and the rare naturally unseen targets in the normal setting.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from pipeline.config import ConfigError
from pipeline.data.splits import Stage, UserSplit
from pipeline.io import read_json

log = logging.getLogger(__name__)

COLD_START_DROP_REASONS: tuple[str, ...] = ("cold_start_held_out", "cold_start_after_target", "cold_start_short_user")
MIN_WARM_BEFORE_TEST = 2  # one training item + the valid target
MIN_WARM_BEFORE_VALID = 1  # one training item
MIN_SEQUENCE = 3  # leave-one-out needs train, valid and test


@dataclass(frozen=True)
class ColdItems:
    """The held-out items, split into the halves whose users are validated and tested on them."""

    valid: np.ndarray  # sorted int64 item indices: cold-validation items
    test: np.ndarray  # sorted int64 item indices: cold-test items

    @property
    def all(self) -> np.ndarray:
        return np.union1d(self.valid, self.test)

    def __len__(self) -> int:
        return len(self.valid) + len(self.test)

    def for_stage(self, stage: Stage) -> np.ndarray:
        return self.valid if stage == "valid" else self.test

    @staticmethod
    def empty() -> ColdItems:
        return ColdItems(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64))


def check_fraction(fraction: float) -> None:
    if not 0.0 <= fraction < 1.0:
        raise ConfigError(
            f"`data.cold_start_fraction` = {fraction} must be in [0, 1): the fraction of items held out of training "
            "(0 = the normal setting, e.g. 0.1 for the cold-start setting)"
        )


def check_share(share: float | None) -> None:
    if share is not None and not 0.0 < share < 1.0:
        raise ConfigError(
            f"`data.cold_target_share` = {share} must be in (0, 1) or null (null = the held-out items' share of the "
            "interactions): the share of users whose valid (resp. test) target is a held-out item"
        )


def choose_cold_items(num_items: int, fraction: float, seed: int) -> ColdItems:
    """The held-out items (both halves empty when ``fraction`` is 0)."""
    check_fraction(fraction)
    if fraction == 0.0 or num_items == 0:
        return ColdItems.empty()
    count = min(max(2, round(fraction * num_items)), num_items)
    if count < 2:
        raise ConfigError(
            f"`data.cold_start_fraction` = {fraction}: the catalog has {num_items} item(s); the cold-start setting "
            "needs at least 2 held-out items (one to validate on, one to test on) — set it to 0"
        )
    rng = np.random.default_rng(seed)
    held = rng.choice(np.arange(1, num_items + 1, dtype=np.int64), size=count, replace=False)
    order = np.random.default_rng([seed, 1]).permutation(np.sort(held))
    num_valid = count // 2
    return ColdItems(np.sort(order[:num_valid]), np.sort(order[num_valid:]))


def apply_cold_start(
    sequences: pl.DataFrame, cold: ColdItems, share: float | None = None, seed: int = 0
) -> tuple[pl.DataFrame, dict[str, int], dict[str, Any]]:
    """Rearrange ``sequences.parquet`` rows (user_idx, user_id, items, timestamps) by the module's rules.

    Returns the new sequences (same schema, users renumbered 0..U-1), the dropped interactions per reason
    (:data:`COLD_START_DROP_REASONS`) and a summary for ``stats.json``.
    """
    check_share(share)
    drops = dict.fromkeys(COLD_START_DROP_REASONS, 0)
    if len(cold) == 0:
        return sequences, drops, {"held_out_items": 0, "users_with_cold_target": 0, "users_dropped": 0}
    items = [np.asarray(s, dtype=np.int64) for s in sequences["items"].to_list()]
    times = sequences["timestamps"].to_list()
    size = int(max(max((int(s.max()) for s in items if len(s)), default=0), cold.all.max())) + 1
    is_valid_item, is_test_item = np.zeros(size, dtype=bool), np.zeros(size, dtype=bool)
    is_valid_item[cold.valid], is_test_item[cold.test] = True, True

    test_at = np.full(len(items), -1)  # position of each user's cold test target candidate; -1 = not eligible
    valid_at = np.full(len(items), -1)
    held_out_interactions = 0
    warm_masks = []  # per user (len,) bool: the positions of non-held-out items
    for u, s in enumerate(items):
        ct, cv = is_test_item[s], is_valid_item[s]
        warm = ~(ct | cv)
        warm_masks.append(warm)
        held_out_interactions += int((~warm).sum())
        warm_before = np.concatenate([[0], np.cumsum(warm)])[:-1]  # warm items strictly before each position
        if ct.any():
            t = int(np.flatnonzero(ct)[-1])
            if warm_before[t] >= MIN_WARM_BEFORE_TEST:
                test_at[u] = t
        warm_after = np.cumsum(warm[::-1])[::-1] - warm  # warm items strictly after each position
        ok = cv & (warm_after > 0) & (warm_before >= MIN_WARM_BEFORE_VALID)
        if ok.any():
            valid_at[u] = int(np.flatnonzero(ok)[-1])

    total = sum(len(s) for s in items)
    natural_share = held_out_interactions / max(total, 1)
    target_share = natural_share if share is None else share
    wanted = round(target_share * len(items))
    rng = np.random.default_rng([seed, 2])
    test_users = _draw(np.flatnonzero(test_at >= 0), wanted, rng)
    valid_pool = np.setdiff1d(np.flatnonzero(valid_at >= 0), test_users)
    valid_users = _draw(valid_pool, wanted, rng)
    role = np.zeros(len(items), dtype=np.int8)  # 0 warm, 1 cold-test target, 2 cold-valid target
    role[test_users], role[valid_users] = 1, 2

    kept_rows, kept_users = [], []
    for u, s in enumerate(items):
        held = ~warm_masks[u]
        if role[u] == 1:
            t = test_at[u]
            keep = ~held & (np.arange(len(s)) < t)
            keep[t] = True
        elif role[u] == 2:
            v = valid_at[u]
            after = np.flatnonzero(~held & (np.arange(len(s)) > v))[0]  # the first warm item after the target
            keep = ~held & (np.arange(len(s)) < v)
            keep[[v, after]] = True
        else:
            keep = ~held
            if keep.sum() < MIN_SEQUENCE:
                drops["cold_start_short_user"] += len(s)
                continue
        drops["cold_start_held_out"] += int((held & ~keep).sum())
        drops["cold_start_after_target"] += int((~held & ~keep).sum())
        kept_rows.append((s[keep], [times[u][i] for i in np.flatnonzero(keep)]))
        kept_users.append(u)

    kept = np.asarray(kept_users, dtype=np.int64)
    rebuilt = pl.DataFrame(
        {
            "user_idx": pl.Series(np.arange(len(kept)), dtype=sequences.schema["user_idx"]),
            "user_id": sequences["user_id"].gather(kept),
            "items": pl.Series([r[0].tolist() for r in kept_rows], dtype=sequences.schema["items"]),
            "timestamps": pl.Series([r[1] for r in kept_rows], dtype=sequences.schema["timestamps"]),
        }
    )
    summary = {
        "held_out_items": len(cold),
        "cold_valid_items": len(cold.valid),
        "cold_test_items": len(cold.test),
        "held_out_interaction_share": round(natural_share, 6),
        "target_share": round(target_share, 6),
        "users_eligible_cold_test": int((test_at >= 0).sum()),
        "users_eligible_cold_valid": int((valid_at >= 0).sum()),
        "users_with_cold_target": len(test_users),
        "users_with_cold_valid_target": len(valid_users),
        "users_dropped": len(items) - len(kept),
        "valid_items": cold.valid.tolist(),
        "test_items": cold.test.tolist(),
    }
    for name, got in (("test", test_users), ("valid", valid_users)):
        if len(got) < wanted:
            log.warning("cold start: only %d users can get a cold %s target (%d wanted)", len(got), name, wanted)
    log.info(
        "cold start: %d items held out (%d valid, %d test); %d cold test and %d cold valid targets of %d users "
        "(share %.3f); %d users dropped, drops %s",
        len(cold),
        len(cold.valid),
        len(cold.test),
        len(test_users),
        len(valid_users),
        len(kept),
        target_share,
        summary["users_dropped"],
        drops,
    )
    return rebuilt, drops, summary


def _draw(pool: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted sample of ``min(count, len(pool))`` users; the rng is advanced the same way for the same pool."""
    if count >= len(pool):
        return np.sort(pool)
    return np.sort(rng.choice(pool, size=count, replace=False))


def load_cold_items(prepared_dir: Path) -> ColdItems | None:
    """The held-out halves that ``prepare`` listed in ``stats.json``; None in the normal setting."""
    path = prepared_dir / "stats.json"
    if not path.exists():
        return None
    stats = read_json(path, "Run `dvc repro prepare`.")
    summary = stats.get("cold_start", {}) if isinstance(stats, dict) else {}
    if not summary.get("held_out_items"):
        return None
    if "valid_items" not in summary:
        raise ValueError(
            f"{path}: a cold-start split from an older version (no valid/test item halves); rerun `dvc repro prepare`"
        )
    return ColdItems(
        np.asarray(summary["valid_items"], dtype=np.int64), np.asarray(summary["test_items"], dtype=np.int64)
    )


def _seen(arrays: list[np.ndarray], targets: np.ndarray) -> np.ndarray:
    seen_items = np.concatenate([np.zeros(0, dtype=np.int64), *arrays]).astype(np.int64)
    size = int(max(seen_items.max(initial=0), targets.max(initial=0))) + 1
    seen = np.zeros(size, dtype=bool)
    seen[seen_items] = True
    return seen


def cold_target_mask(split: UserSplit) -> np.ndarray:
    """(U,) bool: users whose test target is in no user's test history (no training item, no valid target)."""
    if len(split) == 0:
        return np.zeros(0, dtype=bool)
    return ~_seen([*split.train, split.valid_target], split.test_target)[split.test_target]


def cold_valid_mask(split: UserSplit) -> np.ndarray:
    """(U,) bool: users whose valid target is in no training sequence."""
    if len(split) == 0:
        return np.zeros(0, dtype=bool)
    return ~_seen(list(split.train), split.valid_target)[split.valid_target]


def cold_mask(split: UserSplit, stage: Stage) -> np.ndarray:
    return cold_valid_mask(split) if stage == "valid" else cold_target_mask(split)
