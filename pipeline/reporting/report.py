"""The evaluate stage's outputs: ``metrics.json`` (DVC metrics), ``report.md``, ``topk.parquet`` and PNG plots.

Tables are generic: a *run* is a name plus ``{stage: {metric: value}}`` (the shape of ``metrics.json`` entries and
of :meth:`EvaluationResult.metrics`), so later sections (ablations, cold-start) append rows from any number of
metrics files (see :mod:`pipeline.reporting.experiments`). Every file is written atomically (temp file + rename).
"""

from __future__ import annotations

import csv
import json
import logging
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display: render straight to PNG
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import polars as pl  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from pipeline.evaluation.metrics import METRIC_NAMES  # noqa: E402
from pipeline.evaluation.ranking import COLD_START, EvaluationResult  # noqa: E402
from pipeline.io import atomic_path, write_json_atomic, write_text_atomic  # noqa: E402

log = logging.getLogger(__name__)

Runs = Mapping[str, Mapping[str, Mapping[str, float]]]  # run name -> stage -> metric -> value
STAGE_ORDER: tuple[str, ...] = ("valid", "test")
_METRIC_KEY = re.compile(r"^(?P<name>[A-Za-z]+)@(?P<k>\d+)$")


@dataclass(frozen=True)
class ReportPaths:
    metrics: Path
    report: Path
    topk: Path
    metrics_vs_k: Path
    training_curves: Path

    @classmethod
    def under(cls, out_dir: Path) -> ReportPaths:
        return cls(
            metrics=out_dir / "metrics.json",
            report=out_dir / "report.md",
            topk=out_dir / "topk.parquet",
            metrics_vs_k=out_dir / "plots" / "metrics_vs_k.png",
            training_curves=out_dir / "plots" / "training_curves.png",
        )


# ----------------------------------------------------------------------------------------------------------------
# Tables.


def runs_of(results: Sequence[EvaluationResult]) -> dict[str, dict[str, dict[str, float]]]:
    """``{run name: {stage: metrics}}``; this is also the content of ``metrics.json``."""
    runs: dict[str, dict[str, dict[str, float]]] = {}
    for result in results:
        if result.name in runs:
            raise ValueError(f"two evaluation results are named {result.name!r}; run names must be unique")
        runs[result.name] = result.metrics()
    return runs


def metric_columns(runs: Runs) -> tuple[list[str], list[str]]:
    """Stages (valid, test, then others as first seen) and metric keys (by k, then HR, NDCG, MRR, then others)."""
    stages: list[str] = []
    keys: set[str] = set()
    for per_stage in runs.values():
        for stage, values in per_stage.items():
            if stage not in stages:
                stages.append(stage)
            keys.update(values)
    seen = list(stages)
    stages.sort(key=lambda s: (STAGE_ORDER.index(s) if s in STAGE_ORDER else len(STAGE_ORDER), seen.index(s)))
    return stages, sorted(keys, key=_metric_sort_key)


def _metric_sort_key(key: str) -> tuple[int, int, str]:
    match = _METRIC_KEY.match(key)
    if not match:
        return (1 << 30, 0, key)
    name = match["name"]
    rank = METRIC_NAMES.index(name) if name in METRIC_NAMES else len(METRIC_NAMES)
    return (int(match["k"]), rank, name)


def _fmt(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        return "–"
    return f"{value:.4f}"


def markdown_table(runs: Runs) -> str:
    """Rows = runs; columns = ``<stage> <metric>@k`` for every stage and metric; missing values show "–"."""
    stages, keys = metric_columns(runs)
    header = ["run"] + [f"{stage} {key}" for stage in stages for key in keys]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for name, per_stage in runs.items():
        cells = [name] + [_fmt(per_stage.get(stage, {}).get(key)) for stage in stages for key in keys]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def text_table(runs: Runs) -> str:
    """The same numbers for a terminal: one aligned block per stage, rows = runs, columns = metrics."""
    stages, keys = metric_columns(runs)
    width = max([len("run"), *(len(name) for name in runs)])
    col = max([8, *(len(k) for k in keys)])
    blocks = []
    for stage in stages:
        lines = [f"{stage}:", "  " + "run".ljust(width) + "".join(k.rjust(col + 2) for k in keys)]
        for name, per_stage in runs.items():
            values = per_stage.get(stage, {})
            lines.append("  " + name.ljust(width) + "".join(_fmt(values.get(k)).rjust(col + 2) for k in keys))
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"


# ----------------------------------------------------------------------------------------------------------------
# report.md


PAIRED_KEY = "paired_vs_baseline"  # metrics.json entry of the model - baseline comparison
INDEX_KEY = "index"  # metrics.json entry: the FAISS index that ranked each run (+ recall vs flat if approximate)
CONTROLS_KEY = "controls"  # metrics.json entry: how each control row was fused and its paired comparisons
RESERVED_KEYS = (PAIRED_KEY, INDEX_KEY, CONTROLS_KEY)  # metrics.json entries that are not runs


def paired_table(paired: Mapping[str, Mapping[str, Mapping[str, float]]], model: str, baseline: str) -> str:
    """Markdown: one row per (stage, metric) with both values, the difference, its 95% CI, p and relative gain."""
    lines = [
        f"| stage | metric | {model} | {baseline} | diff | 95% CI | p | relative |",
        "|---|---|---:|---:|---:|---|---:|---:|",
    ]
    for stage, per_metric in paired.items():
        for metric, d in per_metric.items():
            ci = f"[{d['ci_low']:+.4f}, {d['ci_high']:+.4f}]"
            rel = f"{100 * d['relative']:+.1f}%" if not math.isnan(d["relative"]) else "–"
            lines.append(
                f"| {stage} | {metric} | {d['model']:.4f} | {d['baseline']:.4f} | {d['diff']:+.4f} | {ci} | "
                f"{d['p_value']:.4f} | {rel} |"
            )
    return "\n".join(lines) + "\n"


def paired_text(paired: Mapping[str, Mapping[str, Mapping[str, float]]], model: str, baseline: str) -> str:
    """The @10 rows of :func:`paired_table` for a terminal."""
    rows = [f"{model} - {baseline} (paired over users, 95% bootstrap CI, randomization p):"]
    for stage, per_metric in paired.items():
        for metric, d in per_metric.items():
            if metric.endswith("@10"):
                rows.append(
                    f"  {stage:6s} {metric:8s} {d['diff']:+.4f}  [{d['ci_low']:+.4f}, {d['ci_high']:+.4f}]  "
                    f"p={d['p_value']:.4f}  ({100 * d['relative']:+.1f}%)"
                )
    return "\n".join(rows) + "\n"


def _paired_section(paired: Mapping[str, Any]) -> str:
    model, baseline = paired["model"], paired["baseline"]
    return (
        f"## {model} vs the {baseline}\n\n"
        f"Paired over the same users and targets: diff = {model} - {baseline}; 95% percentile bootstrap CI over "
        f"users ({paired['resamples']} resamples, seed {paired['seed']}); p = two-sided paired randomization "
        "(sign-flip) test. A CI that contains 0 means no demonstrated difference. A gain over one baseline alone "
        "is not evidence of multimodal value (see Controls).\n\n" + paired_table(paired["stages"], model, baseline)
    )


def render_report(
    runs: Runs,
    *,
    paired: Mapping[str, Any] | None = None,
    indexes: Mapping[str, Mapping[str, Any]] | None = None,
    num_items: int | None = None,
    stats: Mapping[str, Any] | None = None,
    checkpoint: Mapping[str, Any] | None = None,
    train_summary: Mapping[str, Any] | None = None,
    extra_sections: Sequence[str] = (),
    controls_markdown: str = "",
) -> str:
    """The markdown report: results table, index, data stats, model/train config, training summary, plots."""
    ranked = f" over all {num_items:,} items" if num_items else " over all items"
    parts = [
        "# Evaluation report\n",
        f"Full ranking{ranked}, each user's already-seen items masked (no sampled negatives); leave-one-out "
        "split (valid = second-to-last item, test = last item). HR@k equals Recall@k with one target per user.\n",
        "## Results\n",
        markdown_table(runs),
    ]
    if indexes:
        parts.append(index_section(indexes))
    if paired is not None:
        parts.append(_paired_section(paired))
    if controls_markdown:
        parts.append(controls_markdown)
    if any(COLD_START in per_stage for per_stage in runs.values()):
        parts.append(
            f"`{COLD_START}`: test metrics over the users whose test target is in no user's history (item cold "
            "start; `data.cold_start_fraction` holds items out of training, see pipeline/data/cold_start.py).\n"
        )
    if stats is not None:
        parts.append(_data_section(stats))
    if checkpoint is not None:
        parts.append(_model_section(checkpoint))
    if train_summary is not None:
        parts.append("## Training summary\n\n" + _key_value_table(train_summary))
    parts.append(
        "## Plots\n\n![HR, NDCG and MRR against K](plots/metrics_vs_k.png)\n\n"
        "![Training curves](plots/training_curves.png)\n"
    )
    parts.extend(extra_sections)
    return re.sub(r"\n{3,}", "\n\n", "\n".join(p.rstrip("\n") + "\n" for p in parts))


def index_section(indexes: Mapping[str, Mapping[str, Any]]) -> str:
    """Which FAISS index ranked each run; for approximate ones their recall@K against exact flat search."""
    groups: dict[str, list[str]] = {}
    for run, info in indexes.items():
        params = ", ".join(f"{k} {v}" for k, v in info.get("params", {}).items())
        what = f"`{info['factory']}` ({info['kind']}{'; ' + params if params else ''}) on {info['device']}"
        groups.setdefault(what, []).append(run)
    lines = ["## Retrieval index\n"]
    for what, names in groups.items():
        lines.append(f"- FAISS {what}: {', '.join(f'`{n}`' for n in names)}")
    approx = {run: info for run, info in indexes.items() if info.get("recall_vs_flat")}
    if not approx:
        lines.append("\nExact inner-product search: the metrics are those of a full ranking.")
        return "\n".join(lines) + "\n"
    lines.append(
        "\nApproximate search (each user's history is still masked exactly). recall@k: the share of exact flat "
        "search's top-k that the index's top-k holds, on the same queries; fallback users: users the index found "
        "fewer than k unseen items for, re-ranked exactly.\n"
    )
    cols = list(next(iter(next(iter(approx.values()))["recall_vs_flat"].values())))
    lines += ["| run | stage | " + " | ".join(cols) + " | fallback users |", "|---|---|" + "---|" * (len(cols) + 1)]
    for run, info in approx.items():
        for stage, recall in info["recall_vs_flat"].items():
            fallback = info.get("exact_fallback_users", {}).get(stage, 0)
            lines.append(f"| {run} | {stage} | " + " | ".join(_fmt(recall[c]) for c in cols) + f" | {fallback} |")
    return "\n".join(lines) + "\n"


def images_are_synthetic(stats: Mapping[str, Any]) -> bool:
    images = stats.get("images")
    source = images.get("source", "") if isinstance(images, Mapping) else ""
    notes = stats.get("notes") or []
    return str(source).startswith("synthetic") or any("synthetic" in str(n).lower() for n in notes)


def _data_section(stats: Mapping[str, Any]) -> str:
    lines = ["## Data\n"]
    if images_are_synthetic(stats):
        lines.append(
            "**Images are synthetic**: the source ships no item images, so every image is a title card generated "
            "from the item's title; image features carry title information only.\n"
        )
    lines.append(_key_value_table({k: v for k, v in stats.items() if k != "notes"}))
    notes = stats.get("notes") or []
    if notes:
        lines.append("\nNotes:\n\n" + "\n".join(f"- {note}" for note in notes) + "\n")
    return "\n".join(lines)


def _model_section(checkpoint: Mapping[str, Any]) -> str:
    head = {
        key: checkpoint[key]
        for key in ("model_name", "num_items", "max_seq_len", "epoch", "valid_metrics")
        if key in checkpoint
    }
    parts = ["## Model\n", _key_value_table(head)]
    for key, title in (("model_config", "Model config"), ("train_config", "Train config")):
        if isinstance(checkpoint.get(key), Mapping):
            parts.append(f"\n{title}:\n\n" + _key_value_table(checkpoint[key]))
    return "\n".join(parts)


def _flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping) and value:
            flat |= _flatten(value, name)
        else:
            flat[name] = value
    return flat


def _key_value_table(data: Mapping[str, Any]) -> str:
    lines = ["| key | value |", "|---|---|"]
    for key, value in _flatten(data).items():
        if isinstance(value, float):
            text = f"{value:.6g}"
        elif isinstance(value, list | tuple):
            text = ", ".join(str(v) for v in value)
        else:
            text = str(value)
        lines.append(f"| {key} | {text.replace('|', '/')} |")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------------------------
# topk.parquet


def topk_frame(result: EvaluationResult, user_ids: Sequence[str] | np.ndarray) -> pl.DataFrame:
    """One row per (user, stage): user_idx, user_id, stage, items list<int32>, scores list<float32>, target.

    Rows with fewer unseen items than K keep the pads (-1, -inf) so every list has K entries.
    """
    user_ids = np.asarray(user_ids, dtype=object)
    if len(user_ids) != len(result.user_idx):
        raise ValueError(f"got {len(user_ids)} user ids for {len(result.user_idx)} evaluated users")
    frames = []
    for stage, stage_result in result.stages.items():
        frames.append(
            pl.DataFrame(
                {
                    "user_idx": result.user_idx.astype(np.int64),
                    "user_id": pl.Series(user_ids.tolist(), dtype=pl.String),
                    "stage": [stage] * len(result.user_idx),
                    "items": pl.Series(stage_result.items.astype(np.int32)).cast(pl.List(pl.Int32)),
                    "scores": pl.Series(stage_result.scores.astype(np.float32)).cast(pl.List(pl.Float32)),
                    "target": stage_result.targets.astype(np.int64),
                }
            )
        )
    return pl.concat(frames)


# ----------------------------------------------------------------------------------------------------------------
# Plots.


def plot_metrics_vs_k(path: Path, runs: Runs) -> None:
    """HR, NDCG and MRR against K; one line per run and stage (valid dashed, test solid)."""
    stages, keys = metric_columns(runs)
    fig, axes = plt.subplots(1, len(METRIC_NAMES), figsize=(4.2 * len(METRIC_NAMES), 3.6), squeeze=False)
    for ax, metric in zip(axes[0], METRIC_NAMES, strict=True):
        ks = sorted({int(m["k"]) for key in keys if (m := _METRIC_KEY.match(key)) and m["name"] == metric})
        for run_i, (name, per_stage) in enumerate(runs.items()):
            for stage in stages:
                values = [per_stage.get(stage, {}).get(f"{metric}@{k}", float("nan")) for k in ks]
                style = "--" if stage == "valid" else "-"
                ax.plot(ks, values, style, marker="o", color=f"C{run_i}", label=f"{name} {stage}")
        ax.set_title(metric)
        ax.set_xlabel("K")
        ax.set_xticks(ks)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)


def read_dvclive_tsvs(dvclive_dir: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{metric path: (steps, values)}`` from DVCLive's ``plots/metrics/**/*.tsv`` (columns step, <metric>)."""
    root = dvclive_dir / "plots" / "metrics"
    curves: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for tsv in sorted(root.rglob("*.tsv")):
        with tsv.open(encoding="utf-8", newline="") as handle:
            rows = list(csv.DictReader(handle, delimiter="\t"))
        if not rows:
            continue
        columns = [c for c in rows[0] if c not in ("step", "timestamp")]
        if "step" not in rows[0] or len(columns) != 1:
            raise ValueError(f"{tsv}: expected DVCLive columns `step` and one metric, got {list(rows[0])}")
        steps = np.array([int(r["step"]) for r in rows])
        values = np.array([float(r[columns[0]]) for r in rows])
        curves[tsv.relative_to(root).with_suffix("").as_posix()] = (steps, values)
    return curves


def plot_training_curves(path: Path, dvclive_dir: Path | None) -> int:
    """One panel per logged series (every loss component, valid metric, timing) against epoch step.

    Returns the number of series; with none (no DVCLive dir) the PNG says so, so the plots output always exists.
    """
    curves = read_dvclive_tsvs(dvclive_dir) if dvclive_dir is not None and dvclive_dir.exists() else {}
    if not curves:
        fig, ax = plt.subplots(figsize=(5, 2))
        ax.axis("off")
        ax.text(0.5, 0.5, f"no training curves found under\n{dvclive_dir}", ha="center", va="center")
        _save(fig, path)
        return 0
    cols = min(3, len(curves))
    rows = math.ceil(len(curves) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False)
    for ax, (name, (steps, values)) in zip(axes.flat, curves.items(), strict=False):
        ax.plot(steps, values, marker="o", markersize=3)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("step (epoch)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(curves) :]:
        ax.axis("off")
    fig.tight_layout()
    _save(fig, path)
    return len(curves)


def _save(fig: plt.Figure, path: Path) -> None:
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=110)
    finally:
        plt.close(fig)


# ----------------------------------------------------------------------------------------------------------------
# Everything at once (the evaluate stage).


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err}); rerun the stage that writes it") from err


def write_report(
    out_dir: Path,
    model_result: EvaluationResult,
    baselines: Sequence[EvaluationResult] = (),
    *,
    user_ids: Sequence[str] | np.ndarray,
    num_items: int | None = None,
    checkpoint: Mapping[str, Any] | None = None,
    stats_path: Path | None = None,
    train_summary_path: Path | None = None,
    dvclive_dir: Path | None = None,
    extra_sections: Sequence[str] = (),
    paired: Mapping[str, Any] | None = None,
    controls: Mapping[str, Any] | None = None,
    controls_markdown: str = "",
) -> ReportPaths:
    """Write metrics.json, report.md, topk.parquet (the model's lists) and both plots under ``out_dir``.

    ``paired``: ``{"model", "baseline", "resamples", "seed", "stages": {stage: {metric: difference}}}`` from
    :func:`pipeline.evaluation.ranking.paired_comparison`; its numbers go to ``metrics.json`` under
    ``paired_vs_baseline``. ``controls``: how the control rows (:mod:`pipeline.evaluation.controls`) were built and
    their paired comparisons, stored under ``controls``; ``controls_markdown``
    (:func:`pipeline.evaluation.claims.controls_section`) follows the paired section.
    """
    paths = ReportPaths.under(out_dir)
    runs = runs_of([model_result, *baselines])
    for reserved in RESERVED_KEYS:
        if reserved in runs:
            raise ValueError(f"a run may not be named {reserved!r}: metrics.json keeps another entry there")
    indexes = {r.name: r.index for r in (model_result, *baselines) if r.index}
    extra = ({PAIRED_KEY: paired["stages"]} if paired is not None else {}) | ({INDEX_KEY: indexes} if indexes else {})
    extra |= {CONTROLS_KEY: dict(controls)} if controls else {}
    write_json_atomic(paths.metrics, runs | extra)
    with atomic_path(paths.topk) as tmp:
        topk_frame(model_result, user_ids).write_parquet(tmp)
    plot_metrics_vs_k(paths.metrics_vs_k, runs)
    plot_training_curves(paths.training_curves, dvclive_dir)
    stats = read_json(stats_path) if stats_path is not None and stats_path.exists() else None
    summary = read_json(train_summary_path) if train_summary_path is not None and train_summary_path.exists() else None
    meta = {k: v for k, v in (checkpoint or {}).items() if k != "state_dict"} if checkpoint is not None else None
    text = render_report(
        runs,
        paired=paired,
        indexes=indexes,
        num_items=num_items,
        stats=stats,
        checkpoint=meta,
        train_summary=summary,
        extra_sections=extra_sections,
        controls_markdown=controls_markdown,
    )
    write_text_atomic(paths.report, text)
    log.info("wrote %s, %s, %s and plots under %s", paths.metrics, paths.report, paths.topk, paths.metrics_vs_k.parent)
    return paths
