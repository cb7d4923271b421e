"""Controls for a multimodal claim: rows a model must beat before its gain is credited to content (issue 21).

- ``id_ensemble`` (b): k ID-only SASRecs of the baseline's recipe (other seeds), fused exactly as ODMT fuses its
  heads: the weighted sum of their raw scores, weights chosen on valid
  (:func:`pipeline.evaluation.fusion.select_weights`). A gain over one SASRec can be an ensemble gain; a gain over this
  row cannot.
- ``late_fusion_knn`` (c): the baseline fused with the content kNN reference (:mod:`pipeline.evaluation.references`;
  text and image cosines added) on the same grid. The two scores live on different scales (logits vs cosines), so each
  is first divided by its standard deviation over the valid scores (:func:`pipeline.evaluation.fusion.score_scales`);
  otherwise the grid could barely move the cosine's share.

Weights are chosen on VALID NDCG@10 only; the row is then evaluated like any model (:func:`evaluate_vectors`).
The early-fusion SASRec (d) is a model of its own (:mod:`pipeline.models.sasrec_fusion`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pipeline.config import IndexConfig
from pipeline.data.cold_start import ColdItems
from pipeline.data.splits import UserSplit
from pipeline.evaluation import faiss_index
from pipeline.evaluation.fusion import WEIGHT_GRID_STEP, Scorer, fuse, scaled, score_scales, select_weights
from pipeline.evaluation.ranking import STAGES, EvaluationResult, evaluate_vectors, model_queries
from pipeline.evaluation.references import KNN_MODALITIES, history_means, knn_name, normalized_rows
from pipeline.features.embed import MANIFEST
from pipeline.features.encoders import MODALITIES
from pipeline.features.store import load_catalog
from pipeline.serving.inference import item_table

ID_ENSEMBLE = "id_ensemble"
LATE_FUSION = "late_fusion_knn"
CONTROL_RUNS = (ID_ENSEMBLE, LATE_FUSION)


@dataclass
class Member:
    """A trained ranker and the input length it was trained with (the checkpoint's ``max_seq_len``)."""

    name: str
    model: nn.Module
    max_seq_len: int


@dataclass
class RankingOptions:
    ks: Sequence[int]
    batch_size: int = 1024
    device: torch.device | str = "cpu"
    cold: ColdItems | None = None
    index: IndexConfig = faiss_index.FLAT


@dataclass
class ControlResult:
    result: EvaluationResult
    info: dict[str, Any] = field(default_factory=dict)  # members, weights, scales: what report.md shows


def model_scorer(member: Member, split: UserSplit, options: RankingOptions) -> Scorer:
    """A trained model as a scorer: its item table and every stage's user queries."""
    queries = {
        stage: model_queries(member.model, split, stage, member.max_seq_len, options.batch_size, options.device)
        for stage in STAGES
    }  # stage -> (U, D)
    return Scorer(member.name, item_table(member.model), queries)


def knn_scorer(split: UserSplit, tables: Mapping[str, np.ndarray], last: int) -> Scorer | None:
    """The content kNN reference over every embedded modality (cosines added), or None without features."""
    modalities = max((m for m in KNN_MODALITIES if all(x in tables for x in m)), key=len, default=())
    if not modalities:
        return None
    if last < 1:
        raise ValueError(f"evaluate.knn_history = {last} must be >= 1")
    normalized = [normalized_rows(tables[m]) for m in modalities]  # per modality (N+1, d_m)
    queries = {
        stage: np.concatenate([history_means(t, split.history(stage), last) for t in normalized], axis=1)
        for stage in STAGES
    }  # stage -> (U, sum d)
    return Scorer(knn_name(modalities), np.concatenate(normalized, axis=1), queries)


def fused_control(
    name: str, scorers: Sequence[Scorer], split: UserSplit, options: RankingOptions, standardize: bool
) -> ControlResult:
    """Weights on the simplex grid chosen on valid NDCG@10 (valid targets and histories only), then evaluated."""
    histories = split.history("valid")
    scales = score_scales(scorers, histories, options.batch_size) if standardize else np.ones(len(scorers))
    unit = [scaled(s, 1.0 / float(c)) for s, c in zip(scorers, scales, strict=True)]
    weights, valid_ndcg = select_weights(unit, split.target("valid"), histories, batch_size=options.batch_size)
    fused = fuse(name, unit, weights)
    result = evaluate_vectors(
        name,
        split,
        fused.items,
        lambda stage: fused.queries[stage],
        options.ks,
        STAGES,
        options.index,
        options.device,
        cold=options.cold,
    )
    info = {
        "members": [s.name for s in scorers],
        "weights": [round(float(w), 6) for w in weights],
        "score_scales": [float(c) for c in scales] if standardize else None,
        "grid_step": WEIGHT_GRID_STEP,
        "valid_NDCG@10_selected": valid_ndcg,
    }
    return ControlResult(result, info)


def id_ensemble(members: Sequence[Member], split: UserSplit, options: RankingOptions) -> ControlResult:
    """(b): SASRecs of one recipe and different seeds, raw scores fused with weights chosen on valid."""
    if len(members) < 2:
        raise ValueError(f"an ID-only ensemble needs at least 2 members, got {len(members)}")
    scorers = [model_scorer(m, split, options) for m in members]
    return fused_control(ID_ENSEMBLE, scorers, split, options, standardize=False)


def late_fusion(
    baseline: Member, tables: Mapping[str, np.ndarray], knn_history: int, split: UserSplit, options: RankingOptions
) -> ControlResult | None:
    """(c): the baseline and the content kNN, each score standardised, fused with a weight chosen on valid; None
    without content features."""
    knn = knn_scorer(split, tables, knn_history)
    if knn is None:
        return None
    return fused_control(LATE_FUSION, [model_scorer(baseline, split, options), knn], split, options, standardize=True)


def check_members(baseline: Mapping[str, Any], members: Sequence[Mapping[str, Any]], paths: Sequence[str]) -> None:
    """Ensemble members must be SASRec checkpoints of the baseline's model config at seeds of their own."""
    seeds = {baseline.get("train_config", {}).get("seed"): "the baseline"}
    for path, ckpt in zip(paths, members, strict=True):
        if ckpt.get("model_name") != "sasrec":
            raise ValueError(f"{path}: a {ckpt.get('model_name')} checkpoint; ensemble members must be sasrec")
        if ckpt.get("model_config") != baseline.get("model_config") or ckpt["max_seq_len"] != baseline["max_seq_len"]:
            raise ValueError(
                f"{path}: model config {ckpt.get('model_config')} (max_seq_len {ckpt['max_seq_len']}) differs from "
                f"the baseline's {baseline.get('model_config')} ({baseline['max_seq_len']}); members must share the "
                "baseline's recipe (train them with the baseline params and another train.seed)"
            )
        seed = ckpt.get("train_config", {}).get("seed")
        if seed in seeds:
            raise ValueError(f"{path}: train.seed {seed} is also {seeds[seed]}'s; each member needs a seed of its own")
        seeds[seed] = path


def content_tables(features_dir: Path, prepared_dir: Path) -> dict[str, np.ndarray]:
    """``{modality: (N+1, d) pooled features}`` of every embedded modality; ``{}`` where ``embed`` wrote none."""
    manifest = features_dir / MANIFEST
    if not manifest.exists():
        return {}
    entries = json.loads(manifest.read_text(encoding="utf-8")).get("modalities", {})
    if not any(entries.get(m, {}).get("enabled", False) for m in MODALITIES):
        return {}
    catalog = load_catalog(features_dir, prepared_dir, tuple(MODALITIES), all_modalities_required=False)
    return {m: t.numpy() for m, t in catalog.features.items()}


def evaluation_controls(
    baseline: Member,
    members: Sequence[Member],
    tables: Mapping[str, np.ndarray],
    knn_history: int,
    split: UserSplit,
    options: RankingOptions,
) -> list[ControlResult]:
    """The evaluate stage's control rows: (b) when ensemble members are given, (c) when content features exist."""
    out = [id_ensemble([baseline, *members], split, options)] if members else []
    fused = late_fusion(baseline, tables, knn_history, split, options)
    return out + ([fused] if fused is not None else [])
