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


def model_config(name: str, options: dict[str, Any], path: Path = Path("params.yaml"), prefix: str = "model") -> Any:
    """Validate ``model:`` keys; the selected model reads its own, and no other key may silently be ignored.

    ``model:`` is one flat section shared by every registered model, so that ``-S model.<key>=...`` and
    ``-S model.name=...`` stay one command each. A key the selected model does not read must hold the registered
    default of the model(s) that read it (the field defaults of their config dataclasses); a changed value would
    be ignored, so it is an error that names the key, the models that read it and the two ways out.
    """
    registered = models()
    selected = spec(name, path)
    readers: dict[str, list[str]] = {}
    for model_name, model_spec in registered.items():
        for f in dataclasses.fields(model_spec.config_cls):
            readers.setdefault(f.name, []).append(model_name)
    own = {f.name for f in dataclasses.fields(selected.config_cls)}
    if prefix != "model":  # a section of one fixed model (baseline.model): only that model's keys
        return from_dict(selected.config_cls, options, path, prefix=prefix)
    unknown = sorted(set(options) - set(readers))
    if unknown:
        raise ConfigError(f"{path}: unknown key `model.{unknown[0]}`; no registered model has it")
    for key in sorted(set(options) - own):
        _check_unread_key(key, options[key], readers[key], name, path)
    return from_dict(selected.config_cls, {k: v for k, v in options.items() if k in own}, path, prefix="model")


def registered_defaults(model_name: str) -> dict[str, Any]:
    """``{key: default}`` of a registered model's config (fields without a default are left out)."""
    out = {}
    for f in dataclasses.fields(spec(model_name).config_cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


def _check_unread_key(key: str, value: Any, readers: list[str], selected: str, path: Path) -> None:
    """``model.<key>``, read only by ``readers`` (not by ``selected``), must equal a reader's registered default."""
    defaults = {reader: registered_defaults(reader).get(key, dataclasses.MISSING) for reader in readers}
    if any(_same(value, default) for default in defaults.values()):
        return
    shown = ", ".join(f"{r}: {d!r}" for r, d in defaults.items() if d is not dataclasses.MISSING) or "none"
    raise ConfigError(
        f"{path}: `model.{key}` = {value!r} is read only by {' and '.join(readers)}, but model.name is "
        f"{selected!r}, so it would be ignored. Select a model that reads it (model.name: {readers[0]}) or put "
        f"it back to its registered default ({shown})"
    )


def _same(value: Any, default: Any) -> bool:
    if default is dataclasses.MISSING:
        return False
    if isinstance(default, float) and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value) == default
    return type(value) is type(default) and value == default


def build_model(name: str, config: Any, catalog: Any) -> Any:
    return spec(name).model_cls(config, catalog)
