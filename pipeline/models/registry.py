"""``model.name`` -> (config class, model class).

The config classes live in :mod:`pipeline.models.configs` (no torch); a model's module is imported only when that
model is built or named, so a stage that builds SASRec alone (``baseline``) never imports ODMT. Every model is an
``nn.Module`` built as ``ModelCls(config, catalog, max_seq_len)`` that provides
:class:`pipeline.models.contract.Recommender` (``forward``, ``user_vectors``, ``item_vectors``, ``config``,
``num_items``, ``max_seq_len``), checked by :func:`build_model`, plus any optional capability of
:mod:`pipeline.models.contract`. A new model adds its config to ``configs.MODEL_CONFIGS`` and a row to
:data:`REGISTERED`.
"""

from __future__ import annotations

import importlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pipeline.models import contract
from pipeline.models.configs import config_class, model_config, registered_defaults, shared_keys

__all__ = ["model_config", "registered_defaults", "shared_keys"]  # the `model:` rules, pipeline.models.configs


@dataclass(frozen=True)
class Registered:
    """Where a model's class lives and what it reads, known without importing it."""

    module: str
    class_name: str
    # Frozen features the model reads from data/features: e.g. ("text", "image") or ("text_tokens", ...).
    needs_features: tuple[str, ...] = ()
    # True: every modality in needs_features must have been embedded. False: a modality switched off with
    # embed.<m>.name: none is left out of the catalog and the model works without it (ODMT's two-head mode).
    all_modalities_required: bool = True


REGISTERED: dict[str, Registered] = {
    "sasrec": Registered("pipeline.models.sasrec", "SASRec"),
    "odmt": Registered(
        "pipeline.models.odmt",
        "ODMT",
        needs_features=("text", "image", "text_tokens", "image_tokens"),
        all_modalities_required=False,  # embed.image.name: none -> two-head mode (ID + text)
    ),
    "mp4sr": Registered("pipeline.models.mp4sr", "MP4SR", needs_features=("text", "image")),
    "sasrec_fusion": Registered(
        "pipeline.models.sasrec_fusion", "SASRecFusion", needs_features=("text", "image"), all_modalities_required=False
    ),
}

# The modules that hold the registered models (imported by name: pipeline.models.registry.spec).
MODEL_MODULES: tuple[str, ...] = tuple(r.module for r in REGISTERED.values())


@dataclass(frozen=True, kw_only=True)
class ModelSpec(Registered):
    """A registered model with its config class and its model class imported."""

    config_cls: type
    model_cls: type


def spec(name: str, path: Path = Path("params.yaml")) -> ModelSpec:
    """The registered model ``name``; imports its module (only that one)."""
    entry = REGISTERED[name]
    model_cls = getattr(importlib.import_module(entry.module), entry.class_name)
    return ModelSpec(**asdict(entry), config_cls=config_class(name, path), model_cls=model_cls)


def models() -> dict[str, ModelSpec]:
    """Every registered model (imports every model module)."""
    return {name: spec(name) for name in REGISTERED}


def name_of(model: object) -> str | None:
    """The registered name of ``model``'s class, without importing any other model; None if it has none."""
    cls = type(model)
    for name, entry in REGISTERED.items():
        if (cls.__module__, cls.__qualname__) == (entry.module, entry.class_name):
            return name
    return None


def build_model(name: str, config: Any, catalog: Any, max_seq_len: int) -> Any:
    """The registered model ``name`` built from its config, the item catalog and the input length it reads
    (``data.max_seq_len``, or the checkpoint's); refused unless it provides the model contract."""
    model = spec(name).model_cls(config, catalog, max_seq_len)
    contract.check_model(model, name)
    return model
