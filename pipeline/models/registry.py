"""``model.name`` -> (config dataclass, model class).

Every model is an ``nn.Module`` built as ``ModelCls(config, catalog)`` that implements:

- ``forward(batch) -> dict[str, Tensor]`` with a scalar ``"loss"`` plus any named components to log
  (``batch`` holds ``input_ids`` (B, L) left-padded int64 and ``target_ids`` (B, L) int64, 0 = no target);
- ``user_vectors(input_ids) -> (B, D)``: the query for the item after the last position;
- ``item_vectors() -> (N+1, D)``: one row per item (row 0 = padding), so that
  ``user_vectors(x) @ item_vectors().T`` is exactly the model's score used for ranking (FAISS inner product).

Training batches and evaluation inputs are trimmed of columns that are padding in every row, so a model's outputs
must not depend on extra left padding (tested for every model).
"""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.config import ConfigError, from_dict

# Modules that register models when imported. A new model file adds itself here.
MODEL_MODULES: tuple[str, ...] = ("pipeline.models.sasrec", "pipeline.models.odmt", "pipeline.models.mp4sr")


@dataclass(frozen=True)
class ModelSpec:
    config_cls: type
    model_cls: type
    # Frozen features the model reads from data/features: e.g. ("text", "image") or ("text_tokens", ...).
    needs_features: tuple[str, ...] = ()
    # True: every modality in needs_features must have been embedded. False: a modality switched off with
    # embed.<m>.name: none is left out of the catalog and the model works without it (ODMT's two-head mode).
    all_modalities_required: bool = True


_MODELS: dict[str, ModelSpec] = {}


def register(  # noqa: ANN201
    name: str, config_cls: type, needs_features: tuple[str, ...] = (), all_modalities_required: bool = True
):
    def wrap(model_cls: type) -> type:
        _MODELS[name] = ModelSpec(config_cls, model_cls, needs_features, all_modalities_required)
        return model_cls

    return wrap


def models() -> dict[str, ModelSpec]:
    for module in MODEL_MODULES:
        importlib.import_module(module)
    return dict(_MODELS)


def spec(name: str, path: Path = Path("params.yaml")) -> ModelSpec:
    registered = models()
    if name not in registered:
        raise ConfigError(f"{path}: `model.name` = {name!r} must be one of: {', '.join(sorted(registered))}")
    return registered[name]


def model_config(name: str, options: dict[str, Any], path: Path = Path("params.yaml")) -> Any:
    """Validate ``model:`` keys: each must belong to some registered model; the selected one needs all its own."""
    registered = models()
    selected = spec(name, path)
    allowed = {f.name for s in registered.values() for f in dataclasses.fields(s.config_cls)}
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise ConfigError(f"{path}: unknown key `model.{unknown[0]}`; no registered model has it")
    own = {f.name for f in dataclasses.fields(selected.config_cls)}
    return from_dict(selected.config_cls, {k: v for k, v in options.items() if k in own}, path, prefix="model")


def build_model(name: str, config: Any, catalog: Any) -> Any:
    return spec(name).model_cls(config, catalog)
