"""Strict loading of ``params.yaml`` into frozen dataclasses.

``params.yaml`` is read here and nowhere else. An unknown key, a missing key or a value of the wrong type is a
``ConfigError`` that names the file and the dotted key; nothing is ever silently defaulted to ``None``.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml

DEFAULT_PARAMS = Path("params.yaml")


class ConfigError(ValueError):
    """A params file does not match the expected schema."""


@dataclass(frozen=True)
class DataConfig:
    source: str  # reader name, see pipeline.data.readers.READERS
    path: str | None  # raw files for sources read from disk; None = the source's embedded default
    images_dir: str | None  # real images named <item_id>.<ext>; None = synthetic title cards
    min_rating: float | None  # keep interactions with rating >= this; None keeps all
    user_core: int  # iterative k-core: minimum interactions per user
    item_core: int  # iterative k-core: minimum interactions per item
    dedupe: Literal["user_item", "exact"]  # drop repeated (user, item) pairs, or only identical rows
    max_seq_len: int  # longest training input a model sees (the most recent items are kept)
    cold_start_fraction: float  # fraction of items held out of training entirely (0 = normal setting)
    seed: int


@dataclass(frozen=True)
class EncoderConfig:
    name: str  # see pipeline.features.encoders.ENCODERS; "none" disables the modality
    checkpoint: str | None  # local path, or a hub tag/name (needs internet); None = the packaged default
    arch: str | None  # architecture name where the encoder needs one (open_clip: "ViT-B-32")
    batch_size: int
    max_tokens: int  # text: tokenizer truncation; image: number of spatial tokens kept per item


@dataclass(frozen=True)
class ImageWordsConfig:
    """MP4SR's "CLIP words" image feature (pipeline.features.clip_words); needs a clip image encoder."""

    vocabulary: str | None  # text file, one word/phrase per line; None = off (image feature = image embedding)
    top_k: int  # words kept per image (paper: 15)
    prompt: str  # zero-shot prompt each word is put into ("{}" = the word) before CLIP's text tower


@dataclass(frozen=True)
class EmbedConfig:
    device: str  # auto | cpu | cuda | cuda:N
    text: EncoderConfig
    image: EncoderConfig
    store_tokens: bool  # also write per-token features (float16) for models that need them (ODMT)
    # Required in params.yaml like every key; the default (off) only spares Python callers from spelling it out.
    image_words: ImageWordsConfig = field(
        default_factory=lambda: ImageWordsConfig(vocabulary=None, top_k=15, prompt="a photo of {}.")
    )


@dataclass(frozen=True)
class TrainConfig:
    seed: int
    device: str
    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    patience: int  # epochs without a better valid NDCG@10 before stopping
    grad_clip: float | None
    num_threads: int  # torch intra-op threads on CPU; 0 = torch's default
    # fp32 | bf16: the training forward under torch.autocast(bfloat16) (matmuls in bf16, softmax/log-sum-exp and
    # the optimizer in fp32); evaluation stays fp32. Required in params.yaml like every key; the default only
    # spares Python callers from spelling it out.
    precision: Literal["fp32", "bf16"] = "fp32"


@dataclass(frozen=True)
class ModelConfig:
    """``model.name`` plus the raw keys; the selected model's own dataclass validates them."""

    name: str
    options: dict[str, Any] = field(default_factory=dict)

    def build(self, path: Path = DEFAULT_PARAMS) -> Any:
        """The selected model's own frozen config dataclass."""
        from pipeline.models import registry

        return registry.model_config(self.name, self.options, path)


@dataclass(frozen=True)
class EvaluateConfig:
    ks: list[int]
    batch_size: int
    popularity_baseline: bool


@dataclass(frozen=True)
class Params:
    data: DataConfig
    embed: EmbedConfig
    train: TrainConfig
    model: ModelConfig
    evaluate: EvaluateConfig


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str, file: Path) -> Any:
    """Check ``value`` against annotation ``tp``; return it (ints become floats where floats are expected)."""
    origin = get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = get_args(tp)
        if value is None and type(None) in options:
            return None
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, key, file)
            except ConfigError:
                continue
        raise ConfigError(f"{file}: `{key}` = {value!r} must be one of: {_type_name(tp)}")
    if origin is Literal:
        if value not in get_args(tp):
            allowed = ", ".join(repr(a) for a in get_args(tp))
            raise ConfigError(f"{file}: `{key}` = {value!r} must be one of {allowed}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, list):
            raise ConfigError(f"{file}: `{key}` must be a list, got {value!r}")
        (item_tp, *_) = get_args(tp) or (Any,)
        return [_coerce(v, item_tp, f"{key}[{i}]", file) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{file}: `{key}` must be a mapping, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, file, prefix=key)
    if tp is Any:
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is int and isinstance(value, bool):
        raise ConfigError(f"{file}: `{key}` must be an int, got {value!r}")
    if tp in (int, float, str, bool) and not isinstance(value, tp):
        raise ConfigError(f"{file}: `{key}` must be {tp.__name__}, got {value!r} ({type(value).__name__})")
    return value


def from_dict(cls: type, raw: Any, file: Path, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from ``raw``; unknown, missing or mistyped keys raise ``ConfigError``."""
    where = prefix or "<top level>"
    if not isinstance(raw, dict):
        raise ConfigError(f"{file}: `{where}` must be a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(raw) - set(names))
    if unknown:
        raise ConfigError(
            f"{file}: unknown key `{_join(prefix, unknown[0])}`; allowed keys in `{where}`: {', '.join(names)}"
        )
    missing = [n for n in names if n not in raw]
    if missing:
        raise ConfigError(f"{file}: missing key `{_join(prefix, missing[0])}` (add it to the `{where}` section)")
    values = {n: _coerce(raw[n], hints[n], _join(prefix, n), file) for n in names}
    return cls(**values)


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def load_raw(path: Path = DEFAULT_PARAMS) -> dict[str, Any]:
    if not path.exists():
        raise ConfigError(f"{path}: params file not found (run from the repository root or pass --params)")
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: must be a YAML mapping of sections")
    return raw


# Sections read by optional stages, each validated by its own loader (``pretrain`` for MP4SR, ``download``).
EXTRA_SECTIONS: tuple[str, ...] = ("pretrain", "download")
CORE_SECTIONS: tuple[str, ...] = ("data", "embed", "train", "model", "evaluate")


def section(raw: dict[str, Any], name: str, path: Path) -> Any:
    if name not in raw:
        raise ConfigError(f"{path}: missing section `{name}`")
    return raw[name]


def load_model_config(raw_model: Any, path: Path) -> ModelConfig:
    """Validate ``model:`` against the registry: ``name`` must be registered and every key must belong to a model."""
    if not isinstance(raw_model, dict) or "name" not in raw_model:
        raise ConfigError(f"{path}: missing key `model.name` (one of the registered models, e.g. sasrec)")
    from pipeline.models import registry

    name = raw_model["name"]
    options = {k: v for k, v in raw_model.items() if k != "name"}
    registry.model_config(name, options, path)  # raises ConfigError on any problem
    return ModelConfig(name=name, options=options)


def load_params(path: Path = DEFAULT_PARAMS) -> Params:
    """Load and validate every core section (unknown sections are errors too)."""
    raw = load_raw(path)
    allowed = CORE_SECTIONS + EXTRA_SECTIONS
    for extra in sorted(set(raw) - set(allowed)):
        raise ConfigError(f"{path}: unknown section `{extra}`; known sections: {', '.join(allowed)}")
    return Params(
        data=from_dict(DataConfig, section(raw, "data", path), path, "data"),
        embed=from_dict(EmbedConfig, section(raw, "embed", path), path, "embed"),
        train=from_dict(TrainConfig, section(raw, "train", path), path, "train"),
        model=load_model_config(section(raw, "model", path), path),
        evaluate=from_dict(EvaluateConfig, section(raw, "evaluate", path), path, "evaluate"),
    )


def load_section(cls: type, name: str, path: Path = DEFAULT_PARAMS) -> Any:
    """Load one section; stages that read a single section use this so their DVC params stay exact."""
    raw = load_raw(path)
    if name == "model":
        return load_model_config(section(raw, name, path), path)
    return from_dict(cls, section(raw, name, path), path, prefix=name)
