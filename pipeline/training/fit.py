"""The one training loop every model uses, plus checkpoints and the inference helpers evaluation needs.

Phases (MP4SR's pre-training and fine-tuning) are data: :func:`fit` enters ``phase`` in a phased model, tells an
epoch-aware model each epoch (ODMT's distillation ramp) and lets a model tuned on validation choose after each epoch
(the capabilities of :mod:`pipeline.models.contract`).

Contract with models (:class:`pipeline.models.contract.Recommender`): batches are left-padded and trimmed to their
longest row, and evaluation inputs may be trimmed too, so a model's outputs must not depend on extra left padding.

Under ``torchrun`` (:mod:`pipeline.training.distributed`) the same loop runs on every rank with the model in
``DistributedDataParallel``: each rank trains on its slice of every global batch of ``train.batch_size`` users;
validation, early stopping, the best-epoch weights, DVCLive and the checkpoint are rank 0's, and rank 0's valid
metrics and stop decision are broadcast so that every rank runs the same epochs.
"""

from __future__ import annotations

import logging
import math
import random
import resource
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from pipeline.config import TrainConfig
from pipeline.data.dataset import NextItemDataset, collate, eval_inputs
from pipeline.data.splits import UserSplit
from pipeline.evaluation import metrics, retrieval
from pipeline.io import write_json_atomic
from pipeline.models import contract
from pipeline.serving.inference import item_table, resolve_device, user_queries  # noqa: F401 (resolve_device: re-exported)
from pipeline.training import distributed, resume
from pipeline.training.checkpoint import save_checkpoint

log = logging.getLogger(__name__)

VALID_K = 10
STOP_METRIC = f"NDCG@{VALID_K}"  # early stopping and best-epoch selection
CHECKPOINT_NAME = "model.pt"
PRECISIONS = ("fp32", "bf16")
LR_SCHEDULES = ("constant", "cosine")


@dataclass
class TrainResult:
    best_epoch: int  # 1-based epoch whose weights were kept
    best_valid: dict[str, float]  # valid HR/NDCG/MRR@10 at best_epoch
    epochs_run: int
    stopped_early: bool
    seconds_per_epoch: float  # mean wall time of the training part of an epoch (no validation)
    sequences_per_second: float  # training sequences per second, over all epochs
    history: list[dict[str, float]] = field(default_factory=list)  # per epoch: losses, valid metrics, timings
    # what the model chose on validation at best_epoch (ODMT's fusion weights), and the valid metrics before it
    selected_on_validation: dict[str, Any] = field(default_factory=dict)
    step_losses: list[float] = field(default_factory=list)  # the global batch's loss at every optimiser step
    # > 0: this call continued an interrupted run after that epoch (resume_path); history, step_losses and
    # seconds_per_epoch then cover every epoch, while a caller's wall time and peak RSS are this call's alone
    resumed_after_epoch: int = 0


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and CUDA). Call before building a model so its init is seeded too."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def fit(
    model: nn.Module,
    split: UserSplit,
    train_cfg: TrainConfig,
    max_seq_len: int,
    out_dir: Path | None,
    live: Any = None,
    phase: str = "train",
    resume_path: Path | None = None,
) -> TrainResult:
    """Train ``model`` on ``split.train``, validate each epoch, keep the best weights (loaded back at the end).

    Early stopping: stop after ``train_cfg.patience`` epochs without a better valid NDCG@10. Writes
    ``out_dir/model.pt`` (see :func:`save_checkpoint`) unless ``out_dir`` is None. ``live`` is an optional
    ``dvclive.Live``; metrics of a phase other than "train" are logged under ``<phase>/``.

    In a process group of several ranks (:func:`pipeline.training.distributed.session`) the model trains in DDP; only
    rank 0 validates, restores the best weights and writes ``out_dir`` (pass ``live`` on rank 0 only). Every rank
    returns the same result (rank 0's metrics); the model of a rank > 0 keeps its last epoch's weights.

    ``resume_path``: rank 0 saves the loop's whole state there after every epoch, and a later call for the same run
    (same fingerprint, :mod:`pipeline.training.resume`) continues after the last finished epoch, with the same
    result as an uninterrupted run; the file is removed when training ends. None: no state is kept.
    """
    _check_train_config(train_cfg)
    seed_everything(train_cfg.seed)  # the same on every rank: the same global batches
    if train_cfg.num_threads > 0:
        torch.set_num_threads(train_cfg.num_threads)
    device = distributed.device_for(train_cfg.device)
    contract.set_phase(model, phase)
    main = distributed.is_main()
    run_key = resume.fingerprint(model, split, train_cfg, max_seq_len, phase) if resume_path is not None else ""
    model.to(device)
    dataset = NextItemDataset(split, max_seq_len)
    shuffling = torch.Generator().manual_seed(train_cfg.seed)
    loader = DataLoader(dataset, batch_size=train_cfg.batch_size, shuffle=True, collate_fn=collate, generator=shuffling)
    optimizer = torch.optim.AdamW(model.parameters(), lr=train_cfg.lr, weight_decay=train_cfg.weight_decay)
    scheduler = lr_scheduler(optimizer, train_cfg, len(loader))
    prefix = "" if phase == "train" else f"{phase}/"
    loop = resume.LoopState()
    saved = resume.load(resume_path, run_key) if resume_path is not None and main else None
    if distributed.broadcast_object(saved is not None):  # rank 0's decision; every rank reads the same file
        saved = saved if main else torch.load(resume_path, map_location="cpu", weights_only=False)
        loop = resume.restore(saved, model, optimizer, scheduler, shuffling)
        loop.best_state = loop.best_state if main else None  # as in an uninterrupted run: rank 0's alone
        log.info("%s: resuming after epoch %d of an interrupted run (%s)", phase, loop.epoch, resume_path)
        for row in loop.history:  # a fresh DVCLive folder gets the finished epochs first
            _log_live(live, {f"{prefix}{k}": v for k, v in row.items()})
    del saved
    resumed_after = loop.epoch
    trained = distributed.wrap(model, device)  # DDP over the process group, or the model itself
    valid_inputs = eval_inputs(split, "valid", max_seq_len)  # (U, L)

    stopped_early = False
    for epoch in range(loop.epoch + 1, train_cfg.epochs + 1):
        contract.start_epoch(model, epoch)
        start, cpu_start = time.perf_counter(), time.process_time()
        losses = _train_epoch(
            trained, loader, optimizer, train_cfg, device, f"{phase} epoch {epoch}", loop.step_losses, scheduler
        )
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
        loop.train_seconds += seconds
        choice: dict[str, Any] = {}
        valid: dict[str, float] = {}  # validation is rank 0's; the other ranks get its metrics below
        valid_start = time.perf_counter()
        if main and contract.tunes_on_validation(model):  # ODMT's head_weights, MP4SR's cold_offset: valid only
            choice, valid = _select_on_validation(model, valid_inputs, split, train_cfg.batch_size, device)
        elif main:
            valid = validate(model, valid_inputs, split, train_cfg.batch_size, device)
        stop = main and valid[STOP_METRIC] <= loop.best_score and loop.bad_epochs + 1 >= train_cfg.patience
        choice, valid, stop = distributed.broadcast_object((choice, valid, stop))  # rank 0's, on every rank
        distributed.broadcast_buffers(model)  # what rank 0 chose on validation (ODMT's head_weight)
        row = {**{f"train/{k}": v for k, v in losses.items()}, **{f"valid/{k}": v for k, v in valid.items()}}
        row |= {f"selected/{k}": float(v) for k, v in choice.get("choice", {}).items()}
        row |= {"epoch_seconds": seconds, "epoch_cpu_seconds": cpu_seconds, "lr": optimizer.param_groups[0]["lr"]}
        row["valid_seconds"] = time.perf_counter() - valid_start  # validation (and choices made on it), rank 0
        row["sequences_per_second"] = len(dataset) / seconds
        loop.history.append(row)
        _log_live(live, {f"{prefix}{k}": v for k, v in row.items()})
        log.info(
            "%s epoch %d: loss %.4f, valid %s %.4f (%.1f s)",
            phase,
            epoch,
            losses["loss"],
            STOP_METRIC,
            valid[STOP_METRIC],
            seconds,
        )
        loop.epoch = epoch
        if valid[STOP_METRIC] > loop.best_score:
            loop.best_score, loop.best_epoch, loop.best_valid, loop.bad_epochs = valid[STOP_METRIC], epoch, valid, 0
            loop.selected = choice  # the choice is part of the state (a buffer), restored with it
            if main:
                loop.best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        else:
            loop.bad_epochs += 1
            if stop:  # rank 0's decision: bad_epochs >= train_cfg.patience
                log.info("early stop: no better valid %s for %d epochs", STOP_METRIC, loop.bad_epochs)
                stopped_early = True
                break
        if resume_path is not None and main and epoch < train_cfg.epochs:
            resume.save(resume_path, run_key, loop, model, optimizer, scheduler, shuffling)

    if loop.best_state is not None:
        model.load_state_dict(loop.best_state)
    epochs_run = len(loop.history)
    result = TrainResult(
        best_epoch=loop.best_epoch,
        best_valid=loop.best_valid,
        epochs_run=epochs_run,
        stopped_early=stopped_early,
        seconds_per_epoch=loop.train_seconds / max(epochs_run, 1),
        sequences_per_second=len(dataset) * epochs_run / max(loop.train_seconds, 1e-9),
        history=loop.history,
        selected_on_validation=loop.selected,
        step_losses=loop.step_losses,
        resumed_after_epoch=resumed_after,
    )
    if out_dir is not None and main:
        save_checkpoint(out_dir / CHECKPOINT_NAME, model, max_seq_len, train_cfg, loop.best_epoch, loop.best_valid)
    if main:
        resume.discard(resume_path)
    return result


def _select_on_validation(
    model: nn.Module, valid_inputs: np.ndarray, split: UserSplit, batch_size: int, device: torch.device
) -> tuple[dict[str, Any], dict[str, float]]:
    """The hook ``model.select_on_validation(inputs, valid targets, excluded items, batch_size)`` for models whose
    ``selects_on_validation`` is true, run after every epoch (so the best epoch is picked with the choice made):
    choices made on the VALID split only (full ranking, history masked). Returns ``(record, valid metrics after)``;
    the record holds the model's choice and the valid metrics before it."""
    before = validate(model, valid_inputs, split, batch_size, device)
    inputs = torch.from_numpy(np.ascontiguousarray(valid_inputs)).to(device)  # (U, L)
    targets = torch.from_numpy(split.target("valid").astype(np.int64)).to(device)  # (U,)
    exclude = torch.zeros(len(targets), int(item_table(model).shape[0]), dtype=torch.bool)  # (U, N+1)
    for row, seen in enumerate(split.history("valid")):
        exclude[row, torch.from_numpy(np.asarray(seen, dtype=np.int64))] = True
    exclude[:, 0] = True  # padding is never recommended
    chosen = model.select_on_validation(inputs, targets, exclude.to(device), batch_size)
    after = validate(model, valid_inputs, split, batch_size, device)
    log.info(
        "selected on validation: %s (valid %s %.4f -> %.4f)",
        chosen,
        STOP_METRIC,
        before[STOP_METRIC],
        after[STOP_METRIC],
    )
    return {"choice": chosen, "valid_before": before}, after


def lr_factor(step: int, total_steps: int, warmup_steps: int, schedule: str) -> float:
    """The multiplier of ``train.lr`` before optimiser step ``step`` (0-based): a linear warm-up over the first
    ``warmup_steps``, then constant or a half cosine reaching 0 at ``total_steps``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def lr_scheduler(
    optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR | None:
    """``train.lr_schedule`` / ``train.warmup_epochs`` as a per-step scheduler; None for a constant lr."""
    if cfg.lr_schedule == "constant" and cfg.warmup_epochs == 0:
        return None
    total, warmup = cfg.epochs * steps_per_epoch, cfg.warmup_epochs * steps_per_epoch
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, total, warmup, cfg.lr_schedule))


def _check_train_config(cfg: TrainConfig) -> None:
    for key in ("epochs", "batch_size", "patience"):
        if getattr(cfg, key) < 1:
            raise ValueError(f"train.{key} = {getattr(cfg, key)} must be >= 1 (params.yaml)")
    if cfg.lr < 0 or cfg.weight_decay < 0 or (cfg.grad_clip is not None and cfg.grad_clip < 0):
        raise ValueError("train.lr, train.weight_decay and train.grad_clip must be >= 0 (params.yaml)")
    if cfg.lr_schedule not in LR_SCHEDULES:
        raise ValueError(
            f"train.lr_schedule = {cfg.lr_schedule!r} must be one of: {', '.join(LR_SCHEDULES)} (params.yaml)"
        )
    if not 0 <= cfg.warmup_epochs < cfg.epochs:
        raise ValueError(
            f"train.warmup_epochs = {cfg.warmup_epochs} must be in [0, train.epochs - 1 = {cfg.epochs - 1}]"
            " (params.yaml)"
        )
    if cfg.precision not in PRECISIONS:
        raise ValueError(f"train.precision = {cfg.precision!r} must be one of: {', '.join(PRECISIONS)} (params.yaml)")
    distributed.check_launcher(cfg)


def _train_epoch(
    model: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    train_cfg: TrainConfig,
    device: torch.device,
    desc: str,
    step_losses: list[float] | None = None,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
) -> dict[str, float]:
    """One pass over the loader; returns the mean of every loss component the model reports (of the global batch,
    over all ranks) and appends each step's loss to ``step_losses``.

    With several ranks each one takes its slice of every global batch (:func:`pipeline.training.distributed.shard`) and
    weights its loss by its share of the batch's loss terms, times the world size: DDP's gradient mean is then the
    gradient of the whole batch's loss. The logged values are the same shares summed over ranks."""
    model.train()
    world, rank = distributed.world_size(), distributed.rank()
    sums: dict[str, torch.Tensor] = {}
    steps: list[torch.Tensor] = []
    for step, batch in enumerate(tqdm(loader, desc=desc, leave=False, unit="batch", disable=rank > 0)):
        share = 1.0
        if world > 1:
            batch, share = distributed.shard(batch, rank, world)
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        # train.precision bf16: the forward under autocast (backward follows its dtypes); softmax stays fp32
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=train_cfg.precision == "bf16"):
            out = model(batch)
        loss = out["loss"]
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"{desc}, batch {step}: loss is {loss.item()}; lower train.lr or set train.grad_clip"
            )
        optimizer.zero_grad(set_to_none=True)
        (loss * (share * world) if world > 1 else loss).backward()  # DDP averages gradients over the ranks
        if train_cfg.grad_clip:
            nn.utils.clip_grad_norm_(model.parameters(), train_cfg.grad_clip)
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        for key, value in out.items():
            sums[key] = sums.get(key, 0.0) + value.detach().float() * share
        steps.append(loss.detach().float() * share)
    batches = len(steps)
    names = list(sums)
    totals = distributed.all_reduce_sum(torch.stack([*(sums[k] for k in names), *steps])).cpu()  # (K + steps,)
    if step_losses is not None:
        step_losses.extend(totals[len(names) :].tolist())
    return {key: float(totals[i]) / batches for i, key in enumerate(names)}


def validate(
    model: nn.Module, inputs: np.ndarray, split: UserSplit, batch_size: int, device: torch.device
) -> dict[str, float]:
    """Valid HR/NDCG/MRR@10: full ranking over all items with each user's training history masked."""
    queries = user_queries(model, inputs, batch_size, device)  # (U, D)
    items = item_table(model)  # (N+1, D)
    topk, _ = retrieval.top_k(queries, items, split.history("valid"), VALID_K)  # (U, min(10, N))
    return metrics.compute(retrieval.pad_columns(topk, VALID_K), split.target("valid"), [VALID_K])  # (U, 10) in


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB (Linux ``ru_maxrss`` is in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_summary(path: Path, result: TrainResult, **extra: Any) -> None:
    """``train_summary.json``: best epoch and metrics, epochs run, speed, plus ``extra`` fields; atomic."""
    per_step = ("history", "step_losses")  # per-epoch rows (in DVCLive) and per-step losses: not in the summary
    write_json_atomic(path, {k: v for k, v in asdict(result).items() if k not in per_step} | extra)


def _log_live(live: Any, row: dict[str, float]) -> None:
    if live is None:
        return
    for name, value in row.items():
        live.log_metric(name, value)
    live.next_step()
