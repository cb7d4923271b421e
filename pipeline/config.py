"""Strict loading of ``params.yaml`` into frozen dataclasses.

``params.yaml`` is read here and nowhere else. An unknown key, a missing key or a value of the wrong type is a
``ConfigError`` that names the file and the dotted key; nothing is ever silently defaulted to ``None``.
"""

from __future__ import annotations

import dataclasses
import math
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
class RecboleConfig:
    """``data.recbole``: RecBole atomic files, read by ``data.source: recbole`` (pipeline.data.readers.recbole).

    Defaults are RecBole's conventions; each field name can be overridden. Read by no other source.
    """

    dataset: str | None = None  # reads <dataset>.inter (+ <dataset>.item) in data.path; None = the folder's name
    user_field: str = "user_id"
    item_field: str = "item_id"
    timestamp_field: str | None = "timestamp"  # None = file order (only for files listed chronologically)
    rating_field: str | None = "rating"  # read when the file has it; None = never
    text_fields: list[str] | None = None  # .item fields making the item text, in order; None = every token field
    text_labels: dict[str, str] = field(default_factory=dict)  # field -> label in the text ("" = no label)
    seq_separator: str = " "  # separator of token_seq / float_seq values (RecBole's seq_separator)


@dataclass(frozen=True)
class TableColumns:
    """``data.table.columns``: the interaction table's column names."""

    user: str = "user_id"
    item: str = "item_id"
    timestamp: str = "timestamp"
    rating: str | None = None


@dataclass(frozen=True)
class TableItemColumns:
    """``data.table.item_columns``: the item table's column names."""

    id: str = "item_id"
    text: list[str] = field(default_factory=lambda: ["title"])  # text columns, in order (lists joined by ", ")
    image: str | None = None  # local path (relative to data.images_dir) or http(s) URL; None = no image column


@dataclass(frozen=True)
class TableConfig:
    """``data.table``: interactions + items as CSV, TSV, Parquet or JSON Lines (``data.source: table``)."""

    interactions: str | None = None  # a file, a folder or a glob of shards; relative paths are under data.path
    items: str | None = None  # the item table (same forms)
    format: Literal["auto", "csv", "tsv", "parquet", "jsonl"] = "auto"  # auto = from the file extension
    columns: TableColumns = field(default_factory=TableColumns)
    timestamp_unit: Literal["auto", "s", "ms", "us", "ns", "iso"] = "auto"  # auto: numbers by magnitude, text ISO
    timezone: str | None = None  # zone of ISO 8601 values / date-times without an offset, e.g. UTC; None = refuse
    item_columns: TableItemColumns = field(default_factory=TableItemColumns)
    text_labels: dict[str, str] = field(default_factory=dict)  # column -> label in the text ("" = no label)


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
    # keep each user's most recent N interactions (after dedupe, before k-core); None keeps all. ODMT's authors
    # cut every history to its last 15 (xyliugo/ODMT), where ID embeddings see far fewer interactions.
    history_limit: int | None = None
    # cold-start setting: share of users whose valid (resp. test) target is a held-out item; None = the held-out
    # items' share of all interactions (pipeline.data.cold_start)
    cold_target_share: float | None = None
    # MovieLens-1M posters (pipeline.data.posters): a folder with images/<MovieID>.jpg and movies.dat, read by
    # data.source ml1m_recbole / movielens; None = no posters (title cards, or data.images_dir)
    posters_dir: str | None = None
    # Sections read only by data.source: recbole / table (each must keep its defaults for any other source).
    recbole: RecboleConfig = field(default_factory=RecboleConfig)
    table: TableConfig = field(default_factory=TableConfig)


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
    # unique inputs per content-cache shard: each finished shard is written (atomic rename) before the next one
    # starts, so a killed run loses at most one shard per modality and the next run encodes only the rest
    shard_size: int = 256


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
    # none: train in the stage's process | torchrun: the stage runs itself again under `python -m
    # torch.distributed.run` with `nproc` processes per node (DistributedDataParallel,
    # pipeline/training/distributed.py); batch_size stays the global batch. Required in params.yaml; the defaults spare
    # Python callers.
    launcher: Literal["none", "torchrun"] = "none"
    nproc: int = 1  # processes per node with launcher torchrun (one per GPU); must be 1 with launcher none
    # constant: train.lr throughout | cosine: lr decays per optimiser step along a half cosine from train.lr to 0
    # at the end of train.epochs (so early stopping cuts the tail). warmup_epochs: linear ramp from 0 first.
    lr_schedule: Literal["constant", "cosine"] = "constant"
    warmup_epochs: int = 0


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
class BaselineConfig:
    """``baseline:``: the SASRec baseline every model is compared with, trained by its own stage from its own
    sections (``baseline.train`` and ``baseline.model``, SASRec's keys), so no change under ``train:`` or
    ``model:`` retrains it. It shares ``data`` (split, ``max_seq_len``) with the model."""

    train: TrainConfig
    model: dict[str, Any]  # SASRec's config keys, validated by :meth:`build`

    def build(self, path: Path = DEFAULT_PARAMS) -> Any:
        from pipeline.models import registry

        return registry.model_config(BASELINE_MODEL, self.model, path, prefix="baseline.model")


BASELINE_MODEL = "sasrec"


IndexKind = Literal["flat", "ivf", "hnsw"]


@dataclass(frozen=True)
class IvfConfig:
    """FAISS ``IVF<nlist>,Flat``: k-means splits the items into ``nlist`` lists; a query scans ``nprobe`` of them."""

    nlist: int  # lists; clamped to items // 39 on small catalogs (FAISS wants >= 39 training points per list)
    nprobe: int  # lists scanned per query (more = slower, closer to exact); at most nlist
    seed: int  # k-means seed (training sample and initial centroids): same seed, same index


@dataclass(frozen=True)
class HnswConfig:
    """FAISS ``HNSW<m>,Flat``: a navigable small-world graph (CPU only in FAISS)."""

    m: int  # neighbours per node (memory ~ 2 m ints per item; more = better recall, slower build)
    ef_construction: int  # candidate list while building
    ef_search: int  # candidate list while searching (raised to the k searched when smaller)


@dataclass(frozen=True)
class IndexConfig:
    """Which FAISS index ranks the items (pipeline.evaluation.faiss_index); ``ivf``/``hnsw`` are read by their kind
    only."""

    kind: IndexKind
    ivf: IvfConfig
    hnsw: HnswConfig


DEFAULT_IVF = IvfConfig(nlist=1024, nprobe=16, seed=0)
DEFAULT_HNSW = HnswConfig(m=32, ef_construction=200, ef_search=128)


@dataclass(frozen=True)
class EvaluateConfig:
    ks: list[int]
    batch_size: int
    popularity_baseline: bool
    # paired comparison model - baseline (pipeline.evaluation.significance): bootstrap resamples over users, their seed
    bootstrap_resamples: int = 2000
    bootstrap_seed: int = 0
    # cold-start setting: the content-kNN reference rows average the features of each history's last N items
    knn_history: int = 10
    # FAISS index that ranks the model's and the baseline's items: flat (exact) | ivf | hnsw (approximate; the
    # report adds their recall@K against flat). Required in params.yaml; defaults spare Python callers only.
    index: IndexKind = "flat"
    ivf: IvfConfig = DEFAULT_IVF
    hnsw: HnswConfig = DEFAULT_HNSW

    @property
    def index_config(self) -> IndexConfig:
        return IndexConfig(self.index, self.ivf, self.hnsw)


@dataclass(frozen=True)
class RecommendConfig:
    """``recommend:``: the exported index, every user's top-K (stage `recommend`) and the gallery."""

    k: int  # items per user in recommendations/topk.parquet, and the CLI's default --k
    index: IndexKind  # FAISS index kind exported (pipeline.evaluation.faiss_index); flat = exact inner product
    batch_size: int  # users per forward pass when encoding histories
    gallery_users: int  # test users shown in reports/gallery.html (a seeded sample)
    gallery_seed: int
    ivf: IvfConfig = DEFAULT_IVF  # read when index: ivf (required in params.yaml like every key)
    hnsw: HnswConfig = DEFAULT_HNSW  # read when index: hnsw

    @property
    def index_config(self) -> IndexConfig:
        return IndexConfig(self.index, self.ivf, self.hnsw)


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
        key_tp, value_tp = get_args(tp) or (Any, Any)
        return {
            _coerce(k, key_tp, f"{key} (a key)", file): _coerce(v, value_tp, f"{key}.{k}", file)
            for k, v in value.items()
        }
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
    for name, value in values.items():
        check_range(_join(prefix, name), value, file)
    if prefix in ("model", "baseline.model"):
        _check_heads_divide(values, file, prefix)
    return cls(**values)


# ----------------------------------------------------------------------------------------------------------------
# Ranges of numeric keys, by dotted key. A ``model.*`` key applies to whichever model has it.


@dataclass(frozen=True)
class Range:
    """``low <= value`` (``<`` with ``low_open``) and ``value <= high`` (``<`` with ``high_open``); finite."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def holds(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def text(self) -> str:
        if self.low is None and self.high is None:
            return "a finite number"
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {_num(self.low)}"
        left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
        return f"in {left}{_num(self.low)}, {_num(self.high)}{right}"


def _num(value: float | None) -> str:
    return str(int(value)) if value is not None and float(value).is_integer() else str(value)


AT_LEAST_1, AT_LEAST_0, POSITIVE = Range(1), Range(0), Range(0, low_open=True)
FRACTION, PROBABILITY = Range(0, 1, high_open=True), Range(0, 1)
SEED = Range(0, 2**32 - 1)  # what numpy, torch and FAISS accept as a seed
MAX_SEQ_LEN = Range(1, 100_000)  # positions a model embeds (and attends over, L^2): beyond this nothing trains
RANGES: dict[str, Range] = {
    **dict.fromkeys(("data.user_core", "data.item_core"), AT_LEAST_1),
    "data.max_seq_len": MAX_SEQ_LEN,
    "data.seed": SEED,
    "data.min_rating": Range(),  # finite
    "data.cold_start_fraction": FRACTION,
    "data.cold_target_share": Range(0, 1, low_open=True, high_open=True),
    **{f"embed.{m}.{k}": AT_LEAST_1 for m in ("text", "image") for k in ("batch_size", "max_tokens")},
    "embed.image_words.top_k": AT_LEAST_1,
    "embed.shard_size": AT_LEAST_1,
    **{f"{s}.{k}": AT_LEAST_1 for s in ("train", "pretrain") for k in ("epochs", "batch_size")},
    **{f"{s}.{k}": AT_LEAST_0 for s in ("train", "pretrain") for k in ("weight_decay", "patience")},
    **{f"{s}.{k}": POSITIVE for s in ("train", "pretrain") for k in ("lr", "grad_clip")},
    "train.seed": SEED,
    "train.num_threads": AT_LEAST_0,
    "train.nproc": AT_LEAST_1,
    "train.warmup_epochs": AT_LEAST_0,
    **dict.fromkeys(("evaluate.batch_size", "evaluate.knn_history", "evaluate.bootstrap_resamples"), AT_LEAST_1),
    "evaluate.bootstrap_seed": SEED,
    **{f"{s}.{k}": AT_LEAST_1 for s in ("evaluate", "recommend") for k in ("ivf.nlist", "ivf.nprobe", "hnsw.m")},
    **{f"{s}.{k}": AT_LEAST_1 for s in ("evaluate", "recommend") for k in ("hnsw.ef_construction", "hnsw.ef_search")},
    **{f"{s}.ivf.seed": SEED for s in ("evaluate", "recommend")},
    **dict.fromkeys(("recommend.k", "recommend.batch_size", "recommend.gallery_users"), AT_LEAST_1),
    "recommend.gallery_seed": SEED,
    **{f"model.{k}": AT_LEAST_1 for k in ("hidden_dim", "num_layers", "num_heads", "fusion_layers", "fusion_heads")},
    "model.num_experts": AT_LEAST_1,
    **dict.fromkeys(("model.dropout", "model.adaptor_dropout", "model.id_dropout"), FRACTION),
    **dict.fromkeys(("model.mixup_max_prob", "model.item_drop_max"), PROBABILITY),
    **dict.fromkeys(("model.temperature", "model.distill_temperature", "model.cold_offset_weight"), POSITIVE),
    **{f"model.{k}": AT_LEAST_0 for k in ("distill_weight", "distill_ramp_epochs", "cm_weight", "cold_id_neighbours")},
    **{f"model.head_weight_{m}": AT_LEAST_0 for m in ("id", "text", "image")},
}


def check_range(key: str, value: Any, file: Path, rule_key: str | None = None) -> None:
    """``value`` of dotted ``key`` lies in its :data:`RANGES` entry (None = a key's "off" value is always fine).

    ``rule_key``: the :data:`RANGES` entry to use when it is not ``key`` (``model.mp4sr.dropout`` -> ``model.dropout``).
    ``baseline.train.*`` and ``baseline.model.*`` follow the rules of ``train.*`` and ``model.*``."""
    if key == "evaluate.ks":
        if not value:
            raise ConfigError(f"{file}: `evaluate.ks` = [] must list at least one cut-off K, e.g. [5, 10, 20]")
        for i, k in enumerate(value):
            check_range(f"evaluate.ks[{i}]", k, file)
        return
    rule = AT_LEAST_1 if key.startswith("evaluate.ks[") else RANGES.get(rule_key or key.removeprefix("baseline."))
    if rule is None or value is None or isinstance(value, bool) or not isinstance(value, int | float):
        return
    if not rule.holds(value):
        raise ConfigError(f"{file}: `{key}` = {value!r} must be {rule.text()}")


def _check_heads_divide(values: dict[str, Any], file: Path, prefix: str = "model") -> None:
    for heads in ("num_heads", "fusion_heads"):
        dim, n = values.get("hidden_dim"), values.get(heads)
        if isinstance(dim, int) and isinstance(n, int) and n >= 1 and dim % n:
            raise ConfigError(f"{file}: `{prefix}.{heads}` = {n} must divide `{prefix}.hidden_dim` = {dim}")


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


class _StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key repeated in one mapping (plain YAML keeps the last one silently)."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):  # `*name`: params never need one, and nested ones grow exponentially
            mark = self.peek_event().start_mark
            raise ConfigError(
                f"{self.name}:{mark.line + 1}: YAML aliases (`*name`, also as merge keys `<<: *name`) are not "
                "supported in a params file; write the value out"
            )
        return super().compose_node(parent, index)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            line = key_node.start_mark.line + 1
            if key_node.tag == "tag:yaml.org,2002:merge":
                raise ConfigError(
                    f"{self.name}:{line}: YAML merge keys (`<<:`) are not supported in a params file; write every "
                    "key of the section out (each section lists all its keys)"
                )
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise ConfigError(
                    f"{self.name}:{line}: duplicate key `{key}` (first on line {seen[key]}); keep one of them"
                )
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def parse_yaml(text: str, path: Path) -> Any:
    """``text`` parsed strictly; a syntax error or a repeated key is a one-line ``ConfigError`` naming ``path``."""
    loader = _StrictLoader(text)
    loader.name = str(path)
    try:
        return loader.get_single_data()
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        hint = " (YAML indents with spaces, never tabs)" if "\\t" in str(e.problem) else ""
        raise ConfigError(f"{where}: not valid YAML: {e.problem or e.context}{hint}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    finally:
        loader.dispose()


MAX_PARAMS_BYTES = 1 << 20  # a params file is a few KB; this bounds the time and memory of loading one


def load_raw(path: Path = DEFAULT_PARAMS) -> dict[str, Any]:
    if not path.exists():
        raise ConfigError(f"{path}: params file not found (run from the repository root or pass --params)")
    if path.stat().st_size > MAX_PARAMS_BYTES:
        raise ConfigError(f"{path}: {path.stat().st_size:,} bytes; a params file is at most {MAX_PARAMS_BYTES:,}")
    raw = parse_yaml(path.read_text(encoding="utf-8"), path)
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: must be a YAML mapping of sections")
    return raw


# Sections read by optional stages, each validated by its own loader (``pretrain`` for MP4SR, ``download``).
EXTRA_SECTIONS: tuple[str, ...] = ("pretrain", "download", "baseline", "recommend")
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
    loaded = from_dict(cls, section(raw, name, path), path, prefix=name)
    if isinstance(loaded, BaselineConfig):
        loaded.build(path)  # SASRec's keys are checked when the section is loaded, not when the model is built
    return loaded
