"""Paired comparison of two rankers over the same users: mean difference, bootstrap CI and a paired p-value.

Both rankers are evaluated on the same users and targets, so the per-user metric values are paired. For a metric
(e.g. NDCG@10) with per-user values ``a`` (model) and ``b`` (baseline), ``d = a - b`` per user, and:

- ``diff``: the mean of ``d`` (= metric(model) - metric(baseline));
- ``ci_low``, ``ci_high``: the 95% percentile bootstrap interval of the mean of ``d``, resampling users with
  replacement (Efron & Tibshirani 1993), ``resamples`` times with a fixed seed;
- ``p_value``: two-sided paired randomization (sign-flip) test of "no difference": under the null each user's
  ``d`` is as likely to be ``-d``; the p-value is the share of sign flips whose mean is at least as far from 0 as
  the observed one, with the +1 correction so it is never 0 (Smucker, Allan & Carterette, CIKM 2007, recommend this
  test for IR metrics);
- ``relative``: ``diff / metric(baseline)`` (NaN when the baseline is 0).

Everything is deterministic for a given seed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from pipeline.evaluation.metrics import per_user_values

CONFIDENCE = 0.95
DEFAULT_RESAMPLES = 2000
_CHUNK = 250  # resamples per vectorised batch (bounds memory at ~U x 250 values)


@dataclass(frozen=True)
class PairedDifference:
    model: float  # metric of the model
    baseline: float  # metric of the baseline
    diff: float  # model - baseline
    ci_low: float  # 95% bootstrap interval of diff
    ci_high: float
    p_value: float  # two-sided paired randomization test
    relative: float  # diff / baseline

    def significant(self) -> bool:
        """The CI excludes 0."""
        return self.ci_low > 0 or self.ci_high < 0


def paired_difference(
    model: np.ndarray, baseline: np.ndarray, resamples: int = DEFAULT_RESAMPLES, seed: int = 0
) -> PairedDifference:
    """Per-user values ``model`` and ``baseline`` (U,) of one metric -> :class:`PairedDifference`."""
    a, b = np.asarray(model, dtype=np.float64), np.asarray(baseline, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired values must be two (users,) arrays of one shape, got {a.shape} and {b.shape}")
    if len(a) == 0:
        raise ValueError("a paired comparison needs at least one user")
    if resamples < 1:
        raise ValueError(f"resamples = {resamples} must be >= 1")
    d = a - b  # (U,)
    rng = np.random.default_rng(seed)
    boot = np.concatenate([_bootstrap_means(d, n, rng) for n in _chunks(resamples)])  # (R,)
    low, high = np.quantile(boot, [(1 - CONFIDENCE) / 2, (1 + CONFIDENCE) / 2])
    observed = abs(d.mean())
    flips = np.concatenate([np.abs(_sign_flip_means(d, n, rng)) for n in _chunks(resamples)])  # (R,)
    p_value = (1 + int(np.count_nonzero(flips >= observed - 1e-12))) / (resamples + 1)
    base = float(b.mean())
    return PairedDifference(
        model=float(a.mean()),
        baseline=base,
        diff=float(d.mean()),
        ci_low=float(low),
        ci_high=float(high),
        p_value=float(p_value),
        relative=float(d.mean() / base) if base != 0 else float("nan"),
    )


def _chunks(total: int) -> list[int]:
    return [min(_CHUNK, total - start) for start in range(0, total, _CHUNK)]


def _bootstrap_means(d: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    picks = rng.integers(0, len(d), size=(n, len(d)))  # (n, U) users drawn with replacement
    return d[picks].mean(axis=1)  # (n,)


def _sign_flip_means(d: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    signs = rng.integers(0, 2, size=(n, len(d)), dtype=np.int8) * 2 - 1  # (n, U) of +-1
    return (signs * d).mean(axis=1)  # (n,)


def compare_ranks(
    model_ranks: Mapping[str, np.ndarray],
    baseline_ranks: Mapping[str, np.ndarray],
    metrics: Sequence[str],
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> dict[str, dict[str, dict[str, float]]]:
    """``{stage: (U,) 1-based target ranks (0 = miss)}`` for both rankers -> ``{stage: {metric: difference}}``.

    ``metrics`` are keys such as ``"NDCG@10"``; each difference is :class:`PairedDifference` as a plain dict.
    """
    out: dict[str, dict[str, dict[str, float]]] = {}
    for stage, ranks in model_ranks.items():
        if stage not in baseline_ranks:
            continue
        base = baseline_ranks[stage]
        if len(base) != len(ranks):
            raise ValueError(f"{stage}: the model ranks {len(ranks)} users but the baseline {len(base)}")
        out[stage] = {}
        for i, metric in enumerate(metrics):
            a, b = per_user_values(ranks, metric), per_user_values(base, metric)
            out[stage][metric] = asdict(paired_difference(a, b, resamples, seed + i))
    return out
