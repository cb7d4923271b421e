"""What every model provides, and the optional capabilities the training loop, evaluation and the training job use.

Every registered model is a :class:`Recommender` (checked when :func:`pipeline.models.registry.build_model` builds
it). A model opts into more by having the members of a capability protocol; the library asks only through the
functions below, so the ``isinstance`` checks live here and nowhere else:

- :class:`Phased` (MP4SR): ``fit(..., phase=...)`` calls ``set_phase`` (pre-training, fine-tuning);
- :class:`EpochAware` (ODMT): ``on_epoch_start(epoch)`` before every epoch (the distillation ramp);
- :class:`TunedOnValidation` (ODMT's head weights, MP4SR's cold offset): after every epoch, a choice made on the
  VALID split only (:func:`pipeline.training.fit.fit`);
- :class:`MultiHead` (ODMT): several heads whose scores are fused; evaluation also ranks with each head alone;
- :class:`BaselineInitialised` (ODMT): starts from the trained SASRec baseline's weights (``init_from_baseline``).
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any, Protocol, TypeGuard, runtime_checkable

import torch


@runtime_checkable
class Recommender(Protocol):
    """Built as ``ModelCls(config, catalog, max_seq_len)``; ``user_vectors(x) @ item_vectors().T`` is the score.

    ``forward(batch)``: ``batch`` holds ``input_ids`` (B, L) left-padded int64 and ``target_ids`` (B, L) int64 (0 =
    no target); returns a scalar ``"loss"`` plus any named components to log. ``user_vectors(input_ids)`` (B, L) ->
    (B, D), the query for the item after the last position; ``item_vectors()`` -> (N+1, D), row 0 = padding.
    Training batches and evaluation inputs are trimmed of columns that are padding in every row, so outputs must not
    depend on extra left padding (tested for every model).
    """

    config: Any  # the model's frozen config dataclass (checkpoints store asdict(config))
    num_items: int  # N; item indices 1..N, 0 is padding
    max_seq_len: int  # the longest input the model reads (data.max_seq_len; sizes positional embeddings)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]: ...

    def user_vectors(self, input_ids: torch.Tensor) -> torch.Tensor: ...

    def item_vectors(self) -> torch.Tensor: ...


@runtime_checkable
class Phased(Protocol):
    def set_phase(self, phase: str) -> None: ...


@runtime_checkable
class EpochAware(Protocol):
    def on_epoch_start(self, epoch: int) -> None: ...


@runtime_checkable
class TunedOnValidation(Protocol):
    """``select_on_validation(valid inputs (U, L), VALID targets (U,), excluded items (U, N+1), batch_size)`` makes
    and keeps the choice (in a buffer, so the checkpoint carries it) and returns it; only while
    ``selects_on_validation`` is true."""

    @property
    def selects_on_validation(self) -> bool: ...

    def select_on_validation(
        self, input_ids: torch.Tensor, targets: torch.Tensor, exclude: torch.Tensor, batch_size: int
    ) -> dict[str, float]: ...


@runtime_checkable
class MultiHead(Protocol):
    """``heads`` names the fused heads; inside ``with model.single_head(h):`` the model ranks with head h alone."""

    heads: tuple[str, ...]

    def single_head(self, head: str) -> AbstractContextManager[None]: ...


@runtime_checkable
class BaselineInitialised(Protocol):
    """With ``starts_from_baseline`` true, the training job passes the SASRec baseline checkpoint's state_dict."""

    @property
    def starts_from_baseline(self) -> bool: ...

    def init_id_head_from_sasrec(self, state: dict[str, torch.Tensor], source: str) -> None: ...


def check_model(model: object, name: str) -> None:
    """Refuse a registered model class that does not provide the :class:`Recommender` members."""
    if not isinstance(model, Recommender):
        members = ("config", "num_items", "max_seq_len", "forward", "user_vectors", "item_vectors")
        missing = [m for m in members if not hasattr(model, m)]
        raise TypeError(
            f"model {name!r} ({type(model).__name__}) lacks {', '.join(missing)} (pipeline.models.contract)"
        )


def set_phase(model: object, phase: str) -> None:
    """Enter ``phase`` ("pretrain", "train") where the model has phases; other models have only "train"."""
    if isinstance(model, Phased):
        model.set_phase(phase)


def start_epoch(model: object, epoch: int) -> None:
    """Tell an epoch-aware model that (1-based) ``epoch`` begins."""
    if isinstance(model, EpochAware):
        model.on_epoch_start(epoch)


def tunes_on_validation(model: object) -> TypeGuard[TunedOnValidation]:
    """True when the model makes a choice on the valid split after this epoch."""
    return isinstance(model, TunedOnValidation) and bool(model.selects_on_validation)


def head_count(model: object) -> int:
    """How many heads the model's score fuses (1 for a single-head model)."""
    return len(model.heads) if isinstance(model, MultiHead) else 1


def is_multi_head(model: object) -> TypeGuard[MultiHead]:
    """True when the model fuses two or more heads that can rank alone."""
    return isinstance(model, MultiHead) and len(model.heads) >= 2


def starts_from_baseline(model: object) -> TypeGuard[BaselineInitialised]:
    """True when the model is configured to start from the SASRec baseline's weights."""
    return isinstance(model, BaselineInitialised) and bool(model.starts_from_baseline)
