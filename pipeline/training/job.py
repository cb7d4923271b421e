"""One training job from stage inputs to ``<out>/model.pt``: the body shared by the `train` and `baseline` stages;
and :func:`pretrain_to_dir`, the `pretrain` stage's body.

Loads the catalog (the features the model needs) and the leave-one-out split, seeds, builds the model, applies
pre-trained weights (MP4SR; a no-op otherwise), fits with DVCLive logging under ``<out>/dvclive`` and writes
``<out>/model.pt`` (with the fingerprint of the ``items.parquet`` it was trained on,
:mod:`pipeline.training.checkpoint`) and ``<out>/train_summary.json``.

Under ``torchrun`` every rank runs this with the same inputs, inside :func:`pipeline.training.distributed.session`
(joined by the stage); only rank 0 logs to DVCLive and writes ``<out>``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from dvclive import Live

from pipeline.config import ModelConfig, TrainConfig
from pipeline.data.splits import load_split
from pipeline.features.store import load_catalog
from pipeline.io import check_disjoint
from pipeline.models import contract, registry
from pipeline.training import distributed
from pipeline.training.checkpoint import data_fingerprint, read_checkpoint, save_checkpoint, verify_data
from pipeline.training.fit import (
    CHECKPOINT_NAME,
    TrainResult,
    fit,
    peak_rss_mb,
    seed_everything,
    write_summary,
)
from pipeline.training.pretrain import (
    PRETRAIN_NAME,
    SUMMARY_NAME,
    PretrainConfig,
    init_from_pretrained,
    pretrain,
    skip_reason,
    write_marker,
)
from pipeline.training.resume import state_path

OUTPUTS = (CHECKPOINT_NAME, "train_summary.json", "dvclive")  # published together (pipeline.io.staged_outputs)
PRETRAIN_OUTPUTS = (PRETRAIN_NAME, SUMMARY_NAME, "dvclive")  # a marker too (dvclive/ then empty)


def train_to_dir(
    model_name: str,
    model_config: Any,
    train_cfg: TrainConfig,
    max_seq_len: int,
    prepared: Path,
    features: Path,
    out: Path,
    pretrained: Path | None = None,
    baseline: Path | None = None,
) -> TrainResult:
    """Train ``model_name`` with its config; raises ValueError/FileNotFoundError on bad inputs before training.

    ``baseline``: the SASRec baseline's checkpoint, read only by a model configured to start from it (ODMT's
    ``init_from_baseline``)."""
    check_disjoint(
        {"--out": out}, {"--prepared": prepared, "--features": features},
        {"--pretrained": pretrained, "--baseline": baseline}, published=OUTPUTS,
    )  # fmt: skip
    spec = registry.spec(model_name)
    device = distributed.device_for(train_cfg.device)
    catalog = load_catalog(features, prepared, spec.needs_features, max_seq_len, spec.all_modalities_required)
    split = load_split(prepared)
    fingerprint = data_fingerprint(prepared)  # of the data read now, before the (long) training
    seed_everything(train_cfg.seed)  # before building: weight init is part of "same seed, same metrics"
    model = registry.build_model(model_name, model_config, catalog, max_seq_len)
    if pretrained is not None:
        init_from_pretrained(model, pretrained)  # MP4SR: the pre-trained weights; other models or a marker: no-op
    if contract.starts_from_baseline(model):  # ODMT's init_from_baseline
        if baseline is None:
            raise ValueError("model.init_from_baseline is true but no baseline checkpoint was given (--baseline)")
        checkpoint = read_checkpoint(baseline)
        verify_data(baseline, checkpoint, prepared)  # the baseline must have been trained on these items
        if checkpoint.get("model_name") != "sasrec":
            raise ValueError(f"{baseline}: a {checkpoint.get('model_name')} checkpoint; the baseline must be sasrec")
        model.init_id_head_from_sasrec(checkpoint["state_dict"], str(baseline))
    start = time.perf_counter()
    # Rank 0 writes model.pt, train_summary.json and dvclive/ into a staging folder, swapped in together at the end:
    # a failed or interrupted run leaves the previous three whole (pipeline.io.staged_outputs).
    with distributed.published(out, OUTPUTS) as stage:
        with distributed.main_only(lambda: Live(dir=str(stage / "dvclive"), dvcyaml=False, save_dvc_exp=False)) as live:
            # None: the checkpoint is written below; an interrupted run resumes from out/.resume (kept off the outputs)
            result = fit(model, split, train_cfg, max_seq_len, None, live=live, resume_path=state_path(out, "train"))
        if distributed.is_main():
            _write_outputs(stage, model, model_name, result, train_cfg, max_seq_len, fingerprint, device, start)
    return result


def _write_outputs(
    stage: Path,
    model: Any,
    model_name: str,
    result: TrainResult,
    train_cfg: TrainConfig,
    max_seq_len: int,
    fingerprint: Any,
    device: Any,
    start: float,
) -> None:
    best = (result.best_epoch, result.best_valid)  # fit has loaded the best epoch's weights back into the model
    save_checkpoint(stage / CHECKPOINT_NAME, model, max_seq_len, train_cfg, *best, fingerprint=fingerprint)
    write_summary(
        stage / "train_summary.json",
        result,
        model_name=model_name,
        device=str(device),
        num_parameters=sum(p.numel() for p in model.parameters()),
        total_seconds=time.perf_counter() - start,
        peak_rss_mb=peak_rss_mb(),
    )


def pretrain_to_dir(
    model_cfg: ModelConfig,
    params: Path,
    pretrain_cfg: PretrainConfig,
    train_cfg: TrainConfig,
    max_seq_len: int,
    prepared: Path,
    features: Path,
    out: Path,
) -> TrainResult | None:
    """Pre-train the selected model (MP4SR) into ``<out>/pretrain.pt`` (best valid epoch kept), with
    ``pretrain_summary.json`` and ``dvclive/``; or, when it has no pre-training phase or ``pretrain.enabled`` is
    false, write the marker checkpoint and return None.

    Inside :func:`pipeline.training.distributed.session` (joined here) under torchrun: rank 0 writes ``out``. The three
    outputs are swapped in together at the end, or not at all (:func:`pipeline.training.distributed.published`).
    """
    check_disjoint({"--out": out}, {"--prepared": prepared, "--features": features})
    reason = skip_reason(model_cfg.name, pretrain_cfg)
    if reason is None:
        spec = registry.spec(model_cfg.name, params)
        catalog = load_catalog(features, prepared, spec.needs_features, max_seq_len, spec.all_modalities_required)
        split = load_split(prepared)
    with (
        distributed.session(train_cfg.device),
        distributed.published(out, PRETRAIN_OUTPUTS) as stage,  # rank 0: swapped in together, or not at all
        distributed.main_only(lambda: Live(dir=str(stage / "dvclive"), dvcyaml=False, save_dvc_exp=False)) as live,
    ):
        if reason is not None:
            if distributed.is_main():
                write_marker(stage / PRETRAIN_NAME, reason)
            return None
        seed_everything(train_cfg.seed)  # before building: weight init is part of "same seed, same metrics"
        model = registry.build_model(model_cfg.name, model_cfg.build(params), catalog, max_seq_len)
        start = time.perf_counter()
        result = pretrain(model, split, pretrain_cfg, train_cfg, max_seq_len, stage / PRETRAIN_NAME, live=live,
                          resume_path=state_path(out, "pretrain"))  # fmt: skip
        if distributed.is_main():
            device, seconds = str(distributed.device_for(train_cfg.device)), time.perf_counter() - start
            write_summary(stage / SUMMARY_NAME, result, enabled=True, model_name=model_cfg.name, device=device,
                          total_seconds=seconds, peak_rss_mb=peak_rss_mb())  # fmt: skip
    return result
