"""MP4SR's pre-training phase as its own cached stage, and the checkpoint hand-off to fine-tuning.

The ``pretrain`` stage runs :func:`pipeline.training.fit.fit` with ``phase="pretrain"`` (the model's contrastive losses,
validated by ranking with the pre-trained text/image sequence vectors) under the ``pretrain:`` params, and writes
``models/pretrain/pretrain.pt``. When the model is not MP4SR, or ``pretrain.enabled`` is false (the "without
pre-training" ablation), it writes a small marker checkpoint instead, so DVC always has an output and ``train``
always has the same dependency; :func:`init_from_pretrained` then leaves the model as initialised.

Seed, device and thread count come from ``train:`` (one seed for the whole run); everything that shapes what is
learned comes from ``pretrain:`` and from the model keys in :data:`pipeline.models.configs.PRETRAIN_KEYS`.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pipeline.config import PretrainConfig, TrainConfig
from pipeline.data.splits import UserSplit
from pipeline.io import atomic_path, write_json_atomic
from pipeline.models.configs import PRETRAIN_KEYS
from pipeline.training import distributed
from pipeline.training.checkpoint import registered_name
from pipeline.training.fit import TrainResult, fit

log = logging.getLogger(__name__)

PRETRAIN_NAME = "pretrain.pt"
SUMMARY_NAME = "pretrain_summary.json"
PRETRAIN_MODELS: tuple[str, ...] = ("mp4sr",)  # models with a pre-training phase
KIND = "pretrain"
ID_EMBEDDING_PREFIX = "id_emb."  # learned in fine-tuning only; never handed over
# state-dict keys learned or chosen in fine-tuning only (MP4SR's ID embeddings and its cold_offset extension)
FINE_TUNING_ONLY: tuple[str, ...] = (ID_EMBEDDING_PREFIX, "cold_offset")


def pretrain_train_config(pretrain_cfg: PretrainConfig, train_cfg: TrainConfig) -> TrainConfig:
    """The ``TrainConfig`` that :func:`fit` runs pre-training with: ``pretrain:`` values, train's seed/device."""
    if pretrain_cfg.epochs < 1 or pretrain_cfg.batch_size < 1 or pretrain_cfg.lr <= 0:
        raise ValueError("pretrain.epochs and pretrain.batch_size must be >= 1 and pretrain.lr > 0")
    return dataclasses.replace(
        train_cfg,
        epochs=pretrain_cfg.epochs,
        batch_size=pretrain_cfg.batch_size,
        lr=pretrain_cfg.lr,
        weight_decay=pretrain_cfg.weight_decay,
        patience=pretrain_cfg.patience,
        grad_clip=pretrain_cfg.grad_clip,
        lr_schedule="constant",  # train.lr_schedule is fine-tuning's: pre-training keeps pretrain.lr throughout
        warmup_epochs=0,
    )


def pretrain(
    model: nn.Module,
    split: UserSplit,
    pretrain_cfg: PretrainConfig,
    train_cfg: TrainConfig,
    max_seq_len: int,
    out_path: Path,
    live: Any = None,
    resume_path: Path | None = None,
) -> TrainResult:
    """Pre-train ``model`` (best valid epoch kept), write ``out_path`` (rank 0 only under torchrun), and leave the
    model in the fine-tune phase. ``resume_path``: as :func:`pipeline.training.fit.fit`'s."""
    cfg = pretrain_train_config(pretrain_cfg, train_cfg)
    result = fit(model, split, cfg, max_seq_len, out_dir=None, live=live, phase="pretrain", resume_path=resume_path)
    model.set_phase("train")
    if not distributed.is_main():
        return result
    checkpoint = {
        "kind": KIND,
        "enabled": True,
        "model_name": registered_name(model),
        "model_config": asdict(model.config),
        "state_dict": {
            k: v.detach().cpu() for k, v in model.state_dict().items() if not k.startswith(FINE_TUNING_ONLY)
        },
        "num_items": int(model.num_items),
        "max_seq_len": int(max_seq_len),
        "epoch": int(result.best_epoch),
        "valid_metrics": {k: float(v) for k, v in result.best_valid.items()},
        "pretrain_config": asdict(pretrain_cfg),
    }
    _save(out_path, checkpoint)
    return result


def write_marker(out_path: Path, reason: str) -> None:
    """A checkpoint that says "no pre-training" (deterministic bytes, so unchanged params change nothing downstream)
    plus ``pretrain_summary.json`` next to it saying why."""
    log.info("no pre-training: %s", reason)
    _save(out_path, {"kind": KIND, "enabled": False, "reason": reason})
    write_json_atomic(out_path.parent / SUMMARY_NAME, {"enabled": False, "reason": reason})


def skip_reason(model_name: str, pretrain_cfg: PretrainConfig) -> str | None:
    """Why the pretrain stage writes only a marker, or None when it pre-trains."""
    if model_name not in PRETRAIN_MODELS:
        return f"model.name = {model_name!r} has no pre-training phase"
    if not pretrain_cfg.enabled:
        return "pretrain.enabled is false"
    return None


def init_from_pretrained(model: nn.Module, path: Path) -> bool:
    """Load the pre-trained weights of ``path`` into ``model`` (all but the ID embeddings); True when loaded.

    False, and the model left as initialised, for a model without a pre-training phase (``path`` is not read) or
    for a marker checkpoint. Raises when a checkpoint does not fit: another model, another item set or different
    pre-training keys (:data:`pipeline.models.configs.PRETRAIN_KEYS`).
    """
    name = registered_name(model)
    if name not in PRETRAIN_MODELS:
        return False
    if not path.exists():
        raise FileNotFoundError(f"{path}: no pre-training checkpoint; run `dvc repro pretrain` first")
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if checkpoint.get("kind") != KIND:
        raise ValueError(f"{path} is not a pre-training checkpoint (written by stages/pretrain.py)")
    if not checkpoint["enabled"]:
        log.info("%s: %s; training from scratch", path, checkpoint["reason"])
        return False
    if checkpoint["model_name"] != name:
        raise ValueError(f"{path} pre-trained {checkpoint['model_name']!r} but model.name is {name!r}; rerun pretrain")
    if checkpoint["num_items"] != model.num_items:
        raise ValueError(
            f"{path} was pre-trained on {checkpoint['num_items']} items but the catalog has {model.num_items}; "
            "the prepared data changed: run `dvc repro pretrain`"
        )
    max_seq_len = model.max_seq_len  # the model contract (pipeline.models.contract.Recommender)
    if checkpoint["max_seq_len"] != max_seq_len:
        raise ValueError(
            f"{path} was pre-trained with data.max_seq_len = {checkpoint['max_seq_len']} but the model has "
            f"{max_seq_len}; run `dvc repro pretrain`"
        )
    ours = asdict(model.config)
    changed = [k for k in PRETRAIN_KEYS if checkpoint["model_config"].get(k) != ours.get(k)]
    if changed:
        raise ValueError(
            f"{path} was pre-trained with model.{changed[0]} = {checkpoint['model_config'].get(changed[0])!r}, "
            f"but params say {ours.get(changed[0])!r}; run `dvc repro pretrain`"
        )
    missing, unexpected = model.load_state_dict(checkpoint["state_dict"], strict=False)
    missing = [k for k in missing if not k.startswith(FINE_TUNING_ONLY)]
    if missing or unexpected:
        raise ValueError(f"{path} does not match the model: missing {missing[:3]}, unexpected {unexpected[:3]}")
    log.info("fine-tuning from %s (pre-training epoch %d)", path, checkpoint["epoch"])
    return True


def _save(path: Path, checkpoint: dict[str, Any]) -> None:
    # A file object, not a path: torch names the zip entries after a path's stem, and the temp name is random.
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(checkpoint, f)
