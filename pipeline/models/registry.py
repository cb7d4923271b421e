"""``model.name`` -> (config dataclass, model class).

Every model is an ``nn.Module`` built as ``ModelCls(config, catalog, max_seq_len)`` that provides
:class:`pipeline.models.contract.Recommender` (``forward``, ``user_vectors``, ``item_vectors``, ``config``,
``num_items``, ``max_seq_len``), checked by :func:`build_model`, plus any optional capability of
:mod:`pipeline.models.contract`.
"""

from __future__ import annotations

import dataclasses
import importlib
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.config import ConfigError, _coerce, check_range, from_dict
from pipeline.models import contract

# Modules that register models when imported. A new model file adds itself here.
MODEL_MODULES: tuple[str, ...] = (
    "pipeline.models.sasrec",
    "pipeline.models.odmt",
    "pipeline.models.mp4sr",
    "pipeline.models.sasrec_fusion",
)


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
    """Validate ``model:`` and build the selected model's config; no value is read by a model it was not set for.

    ``model:`` holds ``name``, every key that exactly one registered model reads (flat, so ``-S model.<key>=...``
    stays one command), and one subsection per model, ``model.<model>.<key>``, for the keys that several models
    read (``hidden_dim``, ``num_heads``, ``dropout``...: :func:`shared_keys`). A shared key left out of a model's
    subsection (or a model without one) takes that model's registered default, the field default of its config
    dataclass (the paper's value), so ``-S model.name=mp4sr`` alone runs MP4SR on MP4SR's settings. Errors, each
    naming the key and the way out:

    - a shared key set flat (``model.dropout``): whichever model is selected would read it;
    - a key of a model that is not selected, flat or in its subsection, that differs from that model's registered
      default: it would be ignored (with the registered default it is fine, so switching models is one change).
    """
    registered = models()
    selected = spec(name, path)
    if prefix != "model":  # a section of one fixed model (baseline.model): only that model's keys, flat
        return from_dict(selected.config_cls, options, path, prefix=prefix)
    readers = key_readers()
    shared = shared_keys()
    flat = {k: v for k, v in options.items() if k not in registered}
    unknown = sorted(set(flat) - set(readers))
    if unknown:
        raise ConfigError(f"{path}: unknown key `model.{unknown[0]}`; no registered model has it")
    for key in sorted(set(flat) & set(shared)):
        several = ", ".join(sorted(shared[key]))
        raise ConfigError(
            f"{path}: `model.{key}` is read by several models ({several}), so a value here would be "
            f"read by whichever model is selected. Set it for one model: model.{name}.{key} (model.name is {name!r})"
        )
    own = {f.name for f in dataclasses.fields(selected.config_cls)}
    for key in sorted(set(flat) - own):
        _check_unread_key(key, flat[key], readers[key], name, path)
    scoped = {m: _scoped(m, options[m], path) for m in registered if m in options}
    for model_name, values in scoped.items():
        if model_name != name:
            for key, value in values.items():
                _check_unread_key(f"{model_name}.{key}", value, [model_name], name, path)
    defaults = registered_defaults(name)
    values = {k: defaults[k] for k in own & set(shared) if k in defaults} | scoped.get(name, {})
    _check_heads_divide(name, values | flat, set(shared), path)
    return from_dict(selected.config_cls, {k: v for k, v in flat.items() if k in own} | values, path, prefix="model")


def key_readers() -> dict[str, list[str]]:
    """``{key: [models whose config has it]}`` over every registered model."""
    readers: dict[str, list[str]] = {}
    for model_name, model_spec in models().items():
        for f in dataclasses.fields(model_spec.config_cls):
            readers.setdefault(f.name, []).append(model_name)
    return readers


def shared_keys() -> dict[str, list[str]]:
    """The keys that several registered models read, with those models: set per model as ``model.<model>.<key>``."""
    return {key: names for key, names in key_readers().items() if len(names) > 1}


def _scoped(model_name: str, raw: Any, path: Path) -> dict[str, Any]:
    """``model.<model_name>``: a mapping of that model's shared keys, each type- and range-checked."""
    where = f"model.{model_name}"
    allowed = sorted(k for k, names in shared_keys().items() if model_name in names)
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: `{where}` must be a mapping of {model_name}'s keys ({', '.join(allowed)})")
    hints = typing.get_type_hints(spec(model_name, path).config_cls)
    out = {}
    for key, value in raw.items():
        if key not in allowed:
            hint = f"; it is read by {model_name} alone: set model.{key}" if key in hints else ""
            raise ConfigError(
                f"{path}: unknown key `{where}.{key}`; `{where}` holds only keys several models read "
                f"({', '.join(allowed)}){hint}"
            )
        out[key] = _coerce(value, hints[key], f"{where}.{key}", path)
        check_range(f"{where}.{key}", out[key], path, rule_key=f"model.{key}")
    return out


def _check_heads_divide(name: str, values: dict[str, Any], shared: set[str], path: Path) -> None:
    """Attention heads divide ``hidden_dim``, each key named where it is set (``model.<name>.<key>`` if shared)."""

    def where(key: str) -> str:
        return f"model.{name}.{key}" if key in shared else f"model.{key}"

    dim = values.get("hidden_dim")
    for heads in ("num_heads", "fusion_heads"):
        n = values.get(heads)
        if isinstance(dim, int) and isinstance(n, int) and n >= 1 and dim % n:
            raise ConfigError(f"{path}: `{where(heads)}` = {n} must divide `{where('hidden_dim')}` = {dim}")


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
    """``model.<key>``, read only by ``readers`` (not by ``selected``), must equal a reader's registered default.

    ``key`` may be scoped (``mp4sr.dropout``): its last part is the config field."""
    field_name = key.rsplit(".", 1)[-1]
    defaults = {reader: registered_defaults(reader).get(field_name, dataclasses.MISSING) for reader in readers}
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


def build_model(name: str, config: Any, catalog: Any, max_seq_len: int) -> Any:
    """The registered model ``name`` built from its config, the item catalog and the input length it reads
    (``data.max_seq_len``, or the checkpoint's); refused unless it provides the model contract."""
    model = spec(name).model_cls(config, catalog, max_seq_len)
    contract.check_model(model, name)
    return model
