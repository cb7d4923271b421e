"""Resumable training: the state of :func:`pipeline.training.fit.fit` after every finished epoch, so that a run cut off
(a killed process, a session that ends, a lost machine) continues from its last finished epoch instead of epoch 1.

A stage writes ``<out>/.resume/<phase>.pt`` (outside the files DVC and the ablation runner publish, so a rerun of the
stage finds it) and :func:`fit` removes it once training ends. The file holds everything the next epoch depends on:
the model's and the optimizer's and the lr scheduler's state, the early-stopping state with the best epoch's weights,
the history so far, and the random generators (python, numpy, torch, the data loader's shuffling). So an interrupted
and resumed run trains exactly the epochs, and ends with exactly the weights, of one that ran through.

A state is only taken up when its fingerprint matches the run about to start: the initial weights (model config, seed
and any weights it starts from) and buffers (the item features), the training data, the train params that shape
learning (not ``num_threads``), the phase and sequence length, and the source of :mod:`pipeline.models` and
:mod:`pipeline.training`. Anything else is a different run: its state is set aside with a log line and training
starts from epoch 1.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pipeline.config import TrainConfig
from pipeline.data.splits import UserSplit
from pipeline.io import atomic_path, write_json_atomic

log = logging.getLogger(__name__)

RESUME_DIR = ".resume"
_CODE_PACKAGES = ("models", "training")  # pipeline/<name>/*.py: what training computes
_NOT_LEARNING = ("num_threads",)  # train params that change speed, never what is learned


def state_path(out: Path, phase: str) -> Path:
    """Where a stage writing into ``out`` keeps the resume state of ``phase``."""
    return Path(out) / RESUME_DIR / f"{phase}.pt"


@dataclass
class LoopState:
    """What :func:`fit`'s epoch loop carries from one epoch to the next (besides model and optimizer)."""

    epoch: int = 0  # epochs finished
    best_score: float = -float("inf")
    best_epoch: int = 0
    best_state: dict[str, torch.Tensor] | None = None
    best_valid: dict[str, float] = field(default_factory=dict)
    selected: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)
    step_losses: list[float] = field(default_factory=list)
    train_seconds: float = 0.0
    bad_epochs: int = 0


def fingerprint(model: nn.Module, split: UserSplit, cfg: TrainConfig, max_seq_len: int, phase: str) -> str:
    """Identity of a training run before its first step (see the module docstring)."""
    digest = hashlib.sha256()
    # the weights, and every buffer, also those kept out of checkpoints (the item features a model reads): each once
    tensors = [*model.named_parameters(), *model.named_buffers()]
    for name, tensor in sorted(tensors, key=lambda pair: pair[0]):
        digest.update(name.encode() + str(tensor.dtype).encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())  # any dtype
    digest.update(np.asarray(split.user_idx).tobytes())
    for items in split.train:
        digest.update(np.asarray(items, dtype=np.int64).tobytes() + b"|")
    digest.update(np.asarray(split.valid_target).tobytes() + np.asarray(split.test_target).tobytes())
    learning = {k: v for k, v in asdict(cfg).items() if k not in _NOT_LEARNING}
    digest.update(json.dumps([learning, max_seq_len, phase], sort_keys=True, default=str).encode())
    root = Path(__file__).resolve().parents[1]
    for package in _CODE_PACKAGES:
        for source in sorted((root / package).glob("*.py")):
            digest.update(source.name.encode() + source.read_bytes())
    return digest.hexdigest()


def save(
    path: Path,
    key: str,
    loop: LoopState,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    loader_generator: torch.Generator,
) -> None:
    """Write the state after ``loop.epoch`` finished epochs, atomically (a cut-off write leaves the previous one)."""
    state = {
        "fingerprint": key,
        "loop": asdict(loop),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "rng": {
            "python": random.getstate(),
            "numpy": np.random.get_state(),
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "loader": loader_generator.get_state(),
        },
    }
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    best = loop.best_valid.get("NDCG@10")
    write_json_atomic(
        progress_path(path), {"epoch": loop.epoch, "best_epoch": loop.best_epoch, "best_valid_ndcg10": best}
    )


def progress_path(path: Path) -> Path:
    """The small JSON beside a state (``<phase>.json``): how far the interrupted run got, readable without torch."""
    return Path(path).with_suffix(".json")


def progress(path: Path) -> dict[str, Any] | None:
    """``{"epoch", "best_epoch", "best_valid_ndcg10"}`` of the state saved at ``path``; None when there is none."""
    if not Path(path).exists():
        return None
    if progress_path(path).exists():
        return json.loads(progress_path(path).read_text())
    try:  # a state written before the JSON existed: read the loop's counters from the state itself
        loop = torch.load(path, map_location="cpu", weights_only=False)["loop"]
    except Exception:  # noqa: BLE001 - torn or foreign: nothing to report
        return None
    return {
        "epoch": loop["epoch"],
        "best_epoch": loop["best_epoch"],
        "best_valid_ndcg10": loop["best_valid"].get("NDCG@10"),
    }


def load(path: Path, key: str) -> dict[str, Any] | None:
    """The state saved at ``path`` if it belongs to the run with fingerprint ``key``; else None (a state of another
    run is renamed to ``<name>.stale`` with a log line, so it never shadows the new run)."""
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - a torn or foreign file: start over, say why
        log.warning("%s: unreadable resume state (%s); training starts from epoch 1", path, exc)
        _set_aside(path)
        return None
    if not isinstance(state, dict) or state.get("fingerprint") != key:
        log.warning(
            "%s: resume state of a different run (model, data, train params or code changed); set aside as %s,"
            " training starts from epoch 1",
            path,
            path.with_suffix(".stale").name,
        )
        _set_aside(path)
        return None
    return state


def _set_aside(path: Path) -> None:
    path.replace(path.with_suffix(".stale"))
    progress_path(path).unlink(missing_ok=True)


def restore(
    state: dict[str, Any],
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    loader_generator: torch.Generator,
) -> LoopState:
    """Put a loaded state back into the objects of the new run; returns the loop's state."""
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None and state["scheduler"] is not None:
        scheduler.load_state_dict(state["scheduler"])
    rng = state["rng"]
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    loader_generator.set_state(rng["loader"])
    return LoopState(**state["loop"])


def discard(path: Path | None) -> None:
    """Remove the state of a run that ended (and its folder when empty)."""
    if path is None:
        return
    path.unlink(missing_ok=True)
    progress_path(path).unlink(missing_ok=True)
    try:
        path.parent.rmdir()
    except OSError:
        pass  # other phases' states, or stale ones, still there
