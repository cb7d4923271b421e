"""Data-parallel training with ``torch.distributed`` + ``DistributedDataParallel``, launched by ``torchrun``.

Nothing here is a distribution layer of its own: ``torchrun`` starts the processes and sets ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous variables; :func:`session` joins the process group from them
(NCCL on CUDA, gloo on CPU) and :func:`pipeline.training.fit.fit` wraps the model in DDP when the group has more than
one process. Without torchrun every function is a no-op and training is the single-process loop.

How a step is split (so that world size W gives the same gradients as one process at the same global batch):
every rank draws the *same* seeded global batch of ``train.batch_size`` users, takes its contiguous slice of
rows (:func:`shard`), and scales its loss by ``W * n_rank / n_global``, where ``n`` counts the terms the model's
loss averages over (positions with a target, :func:`loss_terms`). DDP's all-reduce averages gradients over ranks,
so the step's gradient is the gradient of the mean over the whole global batch, as in one process. This is the
split a ``DistributedSampler`` makes (each rank sees 1/W of the users of each epoch, seeded), done per batch so
that ``train.batch_size`` stays the *global* batch and the step count does not change with W.

Exact (same losses and, up to float summation order, the same weights as one process) for models whose loss is a
mean over target positions and whose forward draws no random numbers (dropout 0): SASRec, ODMT with
``softmax: full`` and ``content_max_seq_len: 0``, MP4SR fine-tuning with ``mixup_max_prob: 0``. Not exact, and
documented as such: anything with batch-level terms (ODMT's ``softmax: in_batch`` candidates and its logQ
correction, MP4SR's contrastive pre-training over in-batch items and sequences, its random item drop and mixup
probabilities) sees each rank's slice instead of the global batch, and dropout masks differ from one process's.
ODMT's validation-chosen fusion weights are chosen on rank 0 and broadcast (:func:`broadcast_buffers`).
"""

from __future__ import annotations

import logging
import os
import shlex
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from pipeline.config import TrainConfig
from pipeline.data.dataset import trim_left_padding
from pipeline.serving.inference import resolve_device

log = logging.getLogger(__name__)

LAUNCHERS = ("none", "torchrun")
EXTRA_ARGS_ENV = "MMREC_TORCHRUN_ARGS"  # multi-node: torchrun's --nnodes/--node-rank/--rdzv-* flags, one string
_TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK")  # set by torchrun for every process it starts
_OWN_FLAGS = ("--nproc-per-node", "--nproc_per_node")  # that is train.nproc
T = TypeVar("T")


def launched() -> bool:
    """True in a process started by ``torchrun`` (its environment variables are set)."""
    return all(name in os.environ for name in _TORCHRUN_ENV)


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    """Rank 0, or the only process: the one that validates, logs to DVCLive and writes files."""
    return rank() == 0


def device_for(name: str) -> torch.device:
    """``train.device`` resolved (:func:`resolve_device`); under torchrun a CUDA device is ``cuda:LOCAL_RANK``."""
    device = resolve_device(name)
    if device.type == "cuda" and launched():
        return torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return device


@contextmanager
def session(device_name: str) -> Iterator[torch.device]:
    """Join the process group when launched by torchrun (``env://`` rendezvous; NCCL for CUDA, gloo for CPU) and
    leave it at the end; a no-op otherwise, or when a group exists already. Yields this process's device."""
    device = device_for(device_name)
    if not launched() or dist.is_initialized():
        yield device
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend)
    if dist.get_rank() > 0:  # one copy of the stage's log: rank 0's (warnings and errors still show)
        logging.getLogger().setLevel(logging.WARNING)
    log.info("rank %d of %d (%s, %s)", dist.get_rank(), dist.get_world_size(), backend, device)
    try:
        yield device
    finally:
        dist.destroy_process_group()


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` in ``DistributedDataParallel`` when the process group has more than one process, else itself.

    Buffers are synced once, when wrapping, not at every forward (ODMT's and MP4SR's frozen feature buffers are
    large and equal on every rank); :func:`broadcast_buffers` syncs the persistent ones after rank 0 changed them.
    Unused parameters are allowed (MP4SR's ID embeddings in pre-training, heads a loss detaches): DDP then looks
    for them at every step, a small cost next to these models' forward passes."""
    if world_size() == 1:
        return model
    device_ids = [device] if device.type == "cuda" else None
    return DistributedDataParallel(
        model, device_ids=device_ids, forward_sync_buffers=False, find_unused_parameters=True
    )


def loss_terms(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """(B,) how many terms each row adds to a loss that is a mean over target positions (``target_ids > 0``)."""
    return (batch["target_ids"] > 0).sum(dim=1)  # (B,)


def shard(batch: dict[str, torch.Tensor], rank: int, world: int) -> tuple[dict[str, torch.Tensor], float]:
    """This rank's contiguous slice of the global ``batch`` and its share ``n_rank / n_global`` of the loss terms.

    Rows split as evenly as possible (sizes differ by at most one, lower ranks first). A rank left without rows (a
    last batch smaller than the world size) gets the first row with share 0, so it still takes part in the gradient
    all-reduce but adds nothing. The slice is trimmed to its own longest row (models are invariant to left
    padding)."""
    rows = batch["input_ids"].shape[0]
    size, extra = divmod(rows, world)  # the first `extra` ranks take one row more
    start = rank * size + min(rank, extra)
    stop = start + size + (rank < extra)
    terms = loss_terms(batch)  # (B,)
    total = int(terms.sum())
    if stop == start:
        return trim_left_padding({k: v[:1] for k, v in batch.items()}), 0.0
    share = int(terms[start:stop].sum()) / total if total else 1.0 / world
    return trim_left_padding({k: v[start:stop] for k, v in batch.items()}), share


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum of ``values`` over ranks (a copy; ``values`` itself with one process)."""
    if world_size() == 1:
        return values
    out = values.clone()
    dist.all_reduce(out)
    return out


def broadcast_object(value: T) -> T:
    """Rank 0's ``value`` on every rank (any picklable object; itself with one process)."""
    if world_size() == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def broadcast_buffers(model: nn.Module) -> None:
    """Copy rank 0's persistent buffers (those in the state dict, e.g. ODMT's ``head_weight``) to every rank."""
    if world_size() == 1:
        return
    persistent = set(model.state_dict())
    for name, buffer in model.named_buffers():
        if name in persistent:
            dist.broadcast(buffer, src=0)


def main_only(factory: Callable[[], AbstractContextManager[Any]]) -> AbstractContextManager[Any]:
    """``factory()`` on rank 0 (e.g. a ``dvclive.Live``), ``nullcontext(None)`` on the other ranks."""
    return factory() if is_main() else nullcontext(None)


# --- launching ---------------------------------------------------------------------------------------------------


def check_launcher(cfg: TrainConfig, section: str = "train") -> None:
    """``<section>.launcher`` is known and ``<section>.nproc`` has an effect (>= 1; 1 unless torchrun launches)."""
    if cfg.launcher not in LAUNCHERS:
        raise ValueError(f"{section}.launcher = {cfg.launcher!r} must be one of: {', '.join(LAUNCHERS)} (params.yaml)")
    if cfg.nproc < 1:
        raise ValueError(f"{section}.nproc = {cfg.nproc} must be >= 1 (processes per node; params.yaml)")
    if cfg.launcher == "none" and cfg.nproc != 1:
        raise ValueError(
            f"{section}.nproc = {cfg.nproc} has no effect with {section}.launcher: none; "
            f"set {section}.launcher: torchrun, or {section}.nproc: 1 (params.yaml)"
        )


def torchrun_command(module: str, args: list[str], nproc: int, extra: str = "") -> list[str]:
    """``python -m torch.distributed.run [--standalone | extra] --nproc-per-node N -m module args``.

    ``extra`` (``$MMREC_TORCHRUN_ARGS``) replaces ``--standalone`` (one node, a free local port) for multi-node
    runs: ``--nnodes 2 --node-rank 0 --rdzv-backend c10d --rdzv-endpoint host:29500``."""
    extra_args = shlex.split(extra)
    for flag in extra_args:
        if flag.split("=")[0] in _OWN_FLAGS:
            raise ValueError(f"${EXTRA_ARGS_ENV} sets {flag}; processes per node are train.nproc (params.yaml)")
    rendezvous = extra_args or ["--standalone"]
    runner = [sys.executable, "-m", "torch.distributed.run", *rendezvous, "--nproc-per-node", str(nproc)]
    return [*runner, "-m", module, *args]


def relaunch(cfg: TrainConfig, module: str, args: list[str], section: str = "train") -> bool:
    """With ``<section>.launcher: torchrun`` in a process torchrun did not start: run ``python -m module args``
    again under torchrun (:func:`torchrun_command`) and return True once it succeeded; a failure exits with its
    status (the ranks have printed the error). False: train in this process."""
    check_launcher(cfg, section)
    if cfg.launcher != "torchrun" or launched():
        return False
    command = torchrun_command(module, args, cfg.nproc, os.environ.get(EXTRA_ARGS_ENV, ""))
    log.info("%s.launcher torchrun: %s", section, shlex.join(command))
    code = subprocess.run(command, check=False).returncode
    if code:
        raise SystemExit(code)
    return True


def cli_args(**options: Any) -> list[str]:
    """``--name value`` pairs (underscores become dashes) for re-running a stage with the options it was given."""
    return [part for name, value in options.items() for part in (f"--{name.replace('_', '-')}", str(value))]


def published(out: Path, names: Sequence[str]) -> AbstractContextManager[Path]:
    """Rank 0: :func:`pipeline.io.staged_outputs` (a staging folder whose ``names`` replace ``out``'s together);
    other ranks write nothing and get ``out`` itself."""
    from pipeline.io import staged_outputs

    return staged_outputs(out, names) if is_main() else nullcontext(Path(out))
