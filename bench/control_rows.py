"""Control rows of an experiment suite (pipeline/evaluation/controls.py), built from the suite's SASRec seed runs, no
training.

    id_ensemble: {control: id_ensemble, members: 3}   # the SASRec row's first 3 seed runs, fused on valid
    late_fusion_knn: {control: late_fusion}           # each SASRec seed run fused with content kNN on valid

A control row may add `data.*` overrides (e.g. the cold-start split) to pick the SASRec row on that data. Its
outputs (metrics.json with the chosen weights, topk.parquet) go to ``runs/<suite>/<row>/`` like any run's, so the
paired comparisons read them the same way. The ensemble is one run over several seeds (``"seed": None``): it is
paired with every seed of the other row (see :func:`paired_rows`).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from pipeline.config import EvaluateConfig, load_section
from pipeline.data.cold_start import load_cold_items
from pipeline.data.splits import load_split
from pipeline.evaluation.controls import (
    ID_ENSEMBLE,
    LATE_FUSION,
    ControlResult,
    Member,
    RankingOptions,
    content_tables,
    id_ensemble,
    late_fusion,
)
from pipeline.evaluation.ranking import load_user_ids
from pipeline.io import atomic_path, write_json_atomic
from pipeline.reporting.experiments import seed_averaged_paired
from pipeline.reporting.report import CONTROLS_KEY, topk_frame
from pipeline.serving.inference import load_trained

CONTROLS = {"id_ensemble": ID_ENSEMBLE, "late_fusion": LATE_FUSION}
ROW_KEYS = ("seeds", "control", "members")  # keys of a suite row that are not param overrides


def control_kind(spec: dict[str, Any] | None) -> str | None:
    """``id_ensemble`` / ``late_fusion`` for a control row, None for a trained row; an unknown kind is an error."""
    kind = (spec or {}).get("control")
    if kind is not None and kind not in CONTROLS:
        raise ValueError(f"bench/experiments.yaml: control: {kind!r} must be one of {', '.join(CONTROLS)}")
    return kind


def _key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:12]


def _checkpoint_sha(run: dict[str, Any]) -> str:
    """The member's checkpoint bytes: a SASRec seed run retrained with --force gives a new control run."""
    return hashlib.sha256((Path(run["run_dir"]) / "models" / "model.pt").read_bytes()).hexdigest()[:12]


def _options(run: dict[str, Any], prepared: Path) -> tuple[RankingOptions, int]:
    """Ranking options and ``knn_history`` from the ``evaluate`` section the SASRec run was evaluated with."""
    cfg: EvaluateConfig = load_section(EvaluateConfig, "evaluate", Path(run["run_dir"]) / "params.yaml")
    cold = load_cold_items(prepared)
    return RankingOptions(cfg.ks, cfg.batch_size, "cpu", cold, cfg.index_config), cfg.knn_history


def _write_run(
    out: Path, control: ControlResult, prepared: Path, seed: int | None, key: str, **extra: Any
) -> dict[str, Any]:
    """metrics.json + topk.parquet under ``out/reports``; returns the run record."""
    split = load_split(prepared)
    name = control.result.name
    metrics = {name: control.result.metrics(), CONTROLS_KEY: {"rows": {name: control.info}}}
    write_json_atomic(out / "reports" / "metrics.json", metrics)
    with atomic_path(out / "reports" / "topk.parquet") as tmp:
        topk_frame(control.result, load_user_ids(prepared, split)).write_parquet(tmp)
    record = {"seed": seed, "params_key": key, "run_dir": str(out), "metrics": metrics, "train": None}
    record |= {"pretrain": None, "stages": {}, **extra}
    write_json_atomic(out / "record.json", record)
    return record


def _finished(out: Path, key: str) -> dict[str, Any] | None:
    path = out / "record.json"
    if path.exists() and (record := json.loads(path.read_text())).get("params_key") == key:
        return record
    return None


def control_runs(
    kind: str, spec: dict[str, Any], reference: dict[str, Any], out: Path, shared: tuple[Path, Path]
) -> list[dict[str, Any]]:
    """The run records of one control row from the reference (SASRec) row's seed runs; finished ones are reused.

    ``shared`` = (prepared, features) folders of the reference row's data."""
    prepared, features = shared
    runs = reference["runs"]
    if kind == "id_ensemble":
        k = int(spec.get("members", len(runs)))
        if not 2 <= k <= len(runs):
            raise ValueError(
                f"{out.name}: members: {k} needs 2..{len(runs)} seed runs of row {reference['name']}; add seeds there"
            )
        key = _key(kind, [(r["params_key"], _checkpoint_sha(r)) for r in runs[:k]])
        if (done := _finished(out, key)) is not None:
            return [done]
        members = [_member(r, prepared, features) for r in runs[:k]]
        control = id_ensemble(members, load_split(prepared), _options(runs[0], prepared)[0])
        return [_write_run(out, control, prepared, None, key, members=[r["seed"] for r in runs[:k]])]
    tables = content_tables(features, prepared)
    if not tables:
        raise ValueError(f"{out.name}: late fusion needs content features, but {features} holds none")
    records = []
    for run in runs:
        options, knn_history = _options(run, prepared)
        seed_out = out / f"seed{run['seed']}"
        key = _key(kind, run["params_key"], _checkpoint_sha(run), knn_history)
        if (done := _finished(seed_out, key)) is None:
            control = late_fusion(_member(run, prepared, features), tables, knn_history, load_split(prepared), options)
            done = _write_run(seed_out, control, prepared, run["seed"], key)
        records.append(done)
    return records


def _member(run: dict[str, Any], prepared: Path, features: Path) -> Member:
    model, checkpoint, _ = load_trained(Path(run["run_dir"]) / "models" / "model.pt", features, prepared)
    return Member(f"seed{run['seed']}", model, int(checkpoint["max_seq_len"]))


def paired_rows(result: dict[str, Any], other: dict[str, Any] | None) -> dict[str, Any] | None:
    """Seed-averaged paired comparison ``result - other`` from their topk.parquet: runs of the same seed are
    paired; a run over several seeds (the ensemble, ``seed`` None) is paired with every run of the other row."""
    if other is None or other.get("name") == result.get("name"):
        return None
    return paired_by_seed(result, other)


def paired_by_seed(result: dict[str, Any], other: dict[str, Any]) -> dict[str, Any] | None:
    """:func:`paired_rows` for any two rows, the same row of two suites included (posters against title cards);
    None where no seed pairs or a topk file is not here."""
    mine, theirs = result["runs"], other["runs"]
    if any(r["seed"] is None for r in mine + theirs):
        pairs = [(a, b) for a in mine for b in theirs]
    else:
        by_seed = {r["seed"]: r for r in theirs}
        pairs = [(r, by_seed[r["seed"]]) for r in mine if r["seed"] in by_seed]
    paths = [(_topk(a), _topk(b)) for a, b in pairs]
    if not paths or not all(a.exists() and b.exists() for a, b in paths):
        return None
    paired = seed_averaged_paired([a for a, _ in paths], [b for _, b in paths])
    seeds = [a["seed"] if a["seed"] is not None else b["seed"] for a, b in pairs]
    return paired | {"seeds": seeds}


def _topk(run: dict[str, Any]) -> Path:
    return Path(run.get("run_dir", "")) / "reports" / "topk.parquet"
