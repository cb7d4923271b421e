"""Strict loading of ``params.yaml`` into frozen dataclasses, one per section, validated by pydantic.

``params.yaml`` is read here and nowhere else. An unknown key, a missing key, a value of the wrong type or out of its
range is a ``ConfigError`` that names the file and the dotted key; nothing is ever silently defaulted to ``None``.
Each range is a ``Field`` constraint on its field; the machinery (strict scalars, the error formatter) is
:mod:`pipeline.schema`. The models' own configs are :mod:`pipeline.models.configs`, imported only by the functions
that read ``model:`` or ``baseline:`` (so a model's defaults are no dependency of ``prepare`` or ``embed``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import yaml
from pydantic import AfterValidator, Field, Strict, field_validator, model_validator

from pipeline.schema import Bool, ConfigError, Float, Int, Rule, Section, Seed, Str, check, from_dict

__all__ = ["ConfigError", "check", "from_dict"]  # re-exported: the loader's error, entry point and check

DEFAULT_PARAMS = Path("params.yaml")
MAX_SEQ_LEN = 100_000  # positions a model embeds (and attends over, L^2): beyond this nothing trains


def _listed_once(what: str) -> AfterValidator:
    """A list of field or column names that names each one once (a repeated one would make two equal columns)."""

    def check(names: list[str]) -> list[str]:
        seen: set[str] = set()
        for name in names:
            if name in seen:
                raise ValueError(f"lists {name!r} twice; list each {what} once")
            seen.add(name)
        return names

    return AfterValidator(check)


def _not_empty_separator(separator: str) -> str:
    if not separator:  # "" would split every token_seq value into single characters
        raise ValueError(
            "must not be empty: it separates the values of a token_seq or float_seq field (RecBole's default is "
            'one space: seq_separator: " ")'
        )
    return separator


@dataclass(frozen=True)
class RecboleConfig(Section):
    """``data.recbole``: RecBole atomic files, read by ``data.source: recbole`` (pipeline.data.readers.recbole).

    Defaults are RecBole's conventions; each field name can be overridden. Read by no other source.
    """

    SECTION: ClassVar[str] = "data.recbole"
    dataset: Str | None = None  # reads <dataset>.inter (+ <dataset>.item) in data.path; None = the folder's name
    user_field: Str = "user_id"
    item_field: Str = "item_id"
    timestamp_field: Str | None = "timestamp"  # None = file order (only for files listed chronologically)
    rating_field: Str | None = "rating"  # read when the file has it; None = never
    # .item fields making the item text, in order; None = every token field
    text_fields: Annotated[list[Str], _listed_once("field")] | None = None
    text_labels: dict[Str, Str] = field(default_factory=dict)  # field -> label in the text ("" = no label)
    seq_separator: Annotated[Str, AfterValidator(_not_empty_separator)] = " "  # of token_seq / float_seq values


@dataclass(frozen=True)
class TableColumns(Section):
    """``data.table.columns``: the interaction table's column names."""

    SECTION: ClassVar[str] = "data.table.columns"
    user: Str = "user_id"
    item: Str = "item_id"
    timestamp: Str = "timestamp"
    rating: Str | None = None


@dataclass(frozen=True)
class TableItemColumns(Section):
    """``data.table.item_columns``: the item table's column names."""

    SECTION: ClassVar[str] = "data.table.item_columns"
    id: Str = "item_id"
    # text columns, in order (lists joined by ", ")
    text: Annotated[list[Str], _listed_once("column")] = field(default_factory=lambda: ["title"])
    image: Str | None = None  # local path (relative to data.images_dir) or http(s) URL; None = no image column


@dataclass(frozen=True)
class TableConfig(Section):
    """``data.table``: interactions + items as CSV, TSV, Parquet or JSON Lines (``data.source: table``)."""

    SECTION: ClassVar[str] = "data.table"
    interactions: Str | None = None  # a file, a folder or a glob of shards; relative paths are under data.path
    items: Str | None = None  # the item table (same forms)
    format: Literal["auto", "csv", "tsv", "parquet", "jsonl"] = "auto"  # auto = from the file extension
    columns: TableColumns = field(default_factory=TableColumns)
    timestamp_unit: Literal["auto", "s", "ms", "us", "ns", "iso"] = "auto"  # auto: numbers by magnitude, text ISO
    timezone: Str | None = None  # zone of ISO 8601 values / date-times without an offset, e.g. UTC; None = refuse
    item_columns: TableItemColumns = field(default_factory=TableItemColumns)
    text_labels: dict[Str, Str] = field(default_factory=dict)  # column -> label in the text ("" = no label)


@dataclass(frozen=True)
class DataConfig(Section):
    SECTION: ClassVar[str] = "data"
    source: Str  # reader name, see pipeline.data.readers.READERS
    path: Str | None  # raw files for sources read from disk; None = the source's embedded default
    images_dir: Str | None  # real images named <item_id>.<ext>; None = synthetic title cards
    min_rating: Annotated[Float, Field(allow_inf_nan=False)] | None  # keep ratings >= this; None keeps all
    user_core: Annotated[Int, Field(ge=1)]  # iterative k-core: minimum interactions per user
    item_core: Annotated[Int, Field(ge=1)]  # iterative k-core: minimum interactions per item
    dedupe: Literal["user_item", "exact"]  # drop repeated (user, item) pairs, or only identical rows
    max_seq_len: Annotated[Int, Field(ge=1, le=MAX_SEQ_LEN)]  # longest input a model sees (the most recent items)
    # fraction of items held out of training entirely (0 = the normal setting)
    cold_start_fraction: Annotated[Float, Field(ge=0, lt=1, allow_inf_nan=False)]
    seed: Seed
    # keep each user's most recent N interactions (after dedupe, before k-core); None keeps all. ODMT's authors
    # cut every history to its last 15 (xyliugo/ODMT), where ID embeddings see far fewer interactions.
    history_limit: Int | None = None
    # cold-start setting: share of users whose valid (resp. test) target is a held-out item; None = the held-out
    # items' share of all interactions (pipeline.data.cold_start)
    cold_target_share: Annotated[Float, Field(gt=0, lt=1, allow_inf_nan=False)] | None = None
    # MovieLens-1M posters (pipeline.data.posters): a folder with images/<MovieID>.jpg and movies.dat, read by
    # data.source ml1m_recbole / movielens; None = no posters (title cards, or data.images_dir)
    posters_dir: Str | None = None
    # Sections read only by data.source: recbole / table (each must keep its defaults for any other source).
    recbole: RecboleConfig = field(default_factory=RecboleConfig)
    table: TableConfig = field(default_factory=TableConfig)


@dataclass(frozen=True)
class EncoderConfig(Section):
    SECTION: ClassVar[str] = "embed.text"
    name: Str  # see pipeline.features.encoders.ENCODERS; "none" disables the modality
    checkpoint: Str | None  # local path, or a hub tag/name (needs internet); None = the packaged default
    arch: Str | None  # architecture name where the encoder needs one (open_clip: "ViT-B-32")
    batch_size: Annotated[Int, Field(ge=1)]
    max_tokens: Annotated[Int, Field(ge=1)]  # text: tokenizer truncation; image: number of spatial tokens kept per item


@dataclass(frozen=True)
class ImageWordsConfig(Section):
    """MP4SR's "CLIP words" image feature (pipeline.features.clip_words); needs a clip image encoder."""

    SECTION: ClassVar[str] = "embed.image_words"
    vocabulary: Str | None  # text file, one word/phrase per line; None = off (image feature = image embedding)
    top_k: Annotated[Int, Field(ge=1)]  # words kept per image (paper: 15)
    prompt: Str  # zero-shot prompt each word is put into ("{}" = the word) before CLIP's text tower


@dataclass(frozen=True)
class EmbedConfig(Section):
    SECTION: ClassVar[str] = "embed"
    device: Str  # auto | cpu | cuda | cuda:N
    text: EncoderConfig
    image: EncoderConfig
    store_tokens: Bool  # also write per-token features (float16) for models that need them (ODMT)
    # Required in params.yaml like every key; the default (off) only spares Python callers from spelling it out.
    image_words: ImageWordsConfig = field(
        default_factory=lambda: ImageWordsConfig(vocabulary=None, top_k=15, prompt="a photo of {}.")
    )
    # unique inputs per content-cache shard: each finished shard is written (atomic rename) before the next one
    # starts, so a killed run loses at most one shard per modality and the next run encodes only the rest
    shard_size: Annotated[Int, Field(ge=1)] = 256


@dataclass(frozen=True)
class TrainConfig(Section):
    SECTION: ClassVar[str] = "train"
    seed: Seed
    device: Str
    epochs: Annotated[Int, Field(ge=1)]
    batch_size: Annotated[Int, Field(ge=1)]
    lr: Annotated[Float, Field(gt=0, allow_inf_nan=False)]
    weight_decay: Annotated[Float, Field(ge=0, allow_inf_nan=False)]
    patience: Annotated[Int, Field(ge=1)]  # epochs without a better valid NDCG@10 before stopping
    grad_clip: Annotated[Float, Field(gt=0, allow_inf_nan=False)] | None
    num_threads: Annotated[Int, Field(ge=0)]  # torch intra-op threads on CPU; 0 = torch's default
    # fp32 | bf16: the training forward under torch.autocast(bfloat16) (matmuls in bf16, softmax/log-sum-exp and
    # the optimizer in fp32); evaluation stays fp32. Required in params.yaml like every key; the default only
    # spares Python callers from spelling it out.
    precision: Literal["fp32", "bf16"] = "fp32"
    # none: train in the stage's process | torchrun: the stage runs itself again under `python -m
    # torch.distributed.run` with `nproc` processes per node (DistributedDataParallel,
    # pipeline/training/distributed.py); batch_size stays the global batch. Required in params.yaml; the defaults spare
    # Python callers.
    launcher: Literal["none", "torchrun"] = "none"
    nproc: Annotated[Int, Field(ge=1)] = 1  # processes per node with launcher torchrun (one per GPU); else 1
    # constant: train.lr throughout | cosine: lr decays per optimiser step along a half cosine from train.lr to 0
    # at the end of train.epochs (so early stopping cuts the tail). warmup_epochs: linear ramp from 0 first.
    lr_schedule: Literal["constant", "cosine"] = "constant"
    warmup_epochs: Annotated[Int, Field(ge=0)] = 0

    @model_validator(mode="after")
    def _warmup_within_epochs(self) -> TrainConfig:
        if self.warmup_epochs >= self.epochs:
            raise Rule(f"`{{warmup_epochs}}` = {self.warmup_epochs} must be less than `{{epochs}}` = {self.epochs}")
        return self


@dataclass(frozen=True)
class PretrainConfig(Section):
    """``pretrain:``: MP4SR's contrastive pre-training (stage `pretrain`); seed, device and threads come from
    ``train``."""

    SECTION: ClassVar[str] = "pretrain"
    enabled: Bool  # false = fine-tune from scratch (the "without pre-training" ablation)
    epochs: Annotated[Int, Field(ge=1)]
    batch_size: Annotated[Int, Field(ge=1)]
    lr: Annotated[Float, Field(gt=0, allow_inf_nan=False)]
    weight_decay: Annotated[Float, Field(ge=0, allow_inf_nan=False)]
    patience: Annotated[Int, Field(ge=1)]  # epochs without a better valid NDCG@10 (pre-trained vectors) before stopping
    grad_clip: Annotated[Float, Field(gt=0, allow_inf_nan=False)] | None


@dataclass(frozen=True)
class ModelConfig(Section):
    """``model.name`` plus the raw keys; the selected model's own config (pipeline.models.configs) validates them."""

    SECTION: ClassVar[str] = "model"
    name: Str
    options: dict[Str, Any] = field(default_factory=dict)

    def build(self, path: Path = DEFAULT_PARAMS) -> Any:
        """The selected model's own frozen config."""
        from pipeline.models import configs

        return configs.model_config(self.name, self.options, path)


@dataclass(frozen=True)
class BaselineConfig(Section):
    """``baseline:``: the SASRec baseline every model is compared with, trained by its own stage from its own
    sections (``baseline.train`` and ``baseline.model``, SASRec's keys), so no change under ``train:`` or
    ``model:`` retrains it. It shares ``data`` (split, ``max_seq_len``) with the model."""

    SECTION: ClassVar[str] = "baseline"
    train: TrainConfig
    model: dict[Str, Any]  # SASRec's config keys, validated by :meth:`build`

    def build(self, path: Path = DEFAULT_PARAMS) -> Any:
        from pipeline.models import configs

        return configs.model_config(BASELINE_MODEL, self.model, path, prefix="baseline.model")


BASELINE_MODEL = "sasrec"


IndexKind = Literal["flat", "ivf", "hnsw"]


@dataclass(frozen=True)
class IvfConfig(Section):
    """FAISS ``IVF<nlist>,Flat``: k-means splits the items into ``nlist`` lists; a query scans ``nprobe`` of them."""

    SECTION: ClassVar[str] = "evaluate.ivf"
    nlist: Annotated[Int, Field(ge=1)]  # lists; clamped to items // 39 (FAISS wants >= 39 points per list)
    nprobe: Annotated[Int, Field(ge=1)]  # lists scanned per query (more = slower, closer to exact); at most nlist
    seed: Seed  # k-means seed (training sample and initial centroids): same seed, same index


@dataclass(frozen=True)
class HnswConfig(Section):
    """FAISS ``HNSW<m>,Flat``: a navigable small-world graph (CPU only in FAISS)."""

    SECTION: ClassVar[str] = "evaluate.hnsw"
    m: Annotated[Int, Field(ge=1)]  # neighbours per node (memory ~ 2 m ints per item; more = better recall, slower)
    ef_construction: Annotated[Int, Field(ge=1)]  # candidate list while building
    ef_search: Annotated[Int, Field(ge=1)]  # candidate list while searching (raised to the k searched when smaller)


@dataclass(frozen=True)
class IndexConfig(Section):
    """Which FAISS index ranks the items (pipeline.evaluation.faiss_index); ``ivf``/``hnsw`` are read by their kind
    only."""

    SECTION: ClassVar[str] = "evaluate"
    kind: IndexKind
    ivf: IvfConfig
    hnsw: HnswConfig


DEFAULT_IVF = IvfConfig(nlist=1024, nprobe=16, seed=0)
DEFAULT_HNSW = HnswConfig(m=32, ef_construction=200, ef_search=128)


@dataclass(frozen=True)
class EvaluateConfig(Section):
    SECTION: ClassVar[str] = "evaluate"
    ks: list[Annotated[int, Strict(), Field(ge=1)]]  # cut-offs K of every @K metric
    batch_size: Annotated[Int, Field(ge=1)]
    popularity_baseline: Bool
    # paired comparison model - baseline (pipeline.evaluation.significance): bootstrap resamples over users, their seed
    bootstrap_resamples: Annotated[Int, Field(ge=1)] = 2000
    bootstrap_seed: Seed = 0
    # cold-start setting: the content-kNN reference rows average the features of each history's last N items
    knn_history: Annotated[Int, Field(ge=1)] = 10
    # FAISS index that ranks the model's and the baseline's items: flat (exact) | ivf | hnsw (approximate; the
    # report adds their recall@K against flat). Required in params.yaml; defaults spare Python callers only.
    index: IndexKind = "flat"
    ivf: IvfConfig = DEFAULT_IVF
    hnsw: HnswConfig = DEFAULT_HNSW

    @field_validator("ks")
    @classmethod
    def _at_least_one_k(cls, ks: list[int]) -> list[int]:
        if not ks:
            raise ValueError("must list at least one cut-off K, e.g. [5, 10, 20]")
        return ks

    @property
    def index_config(self) -> IndexConfig:
        return IndexConfig(self.index, self.ivf, self.hnsw)


@dataclass(frozen=True)
class RecommendConfig(Section):
    """``recommend:``: the exported index, every user's top-K (stage `recommend`) and the gallery."""

    SECTION: ClassVar[str] = "recommend"
    k: Annotated[Int, Field(ge=1)]  # items per user in recommendations/topk.parquet, and the CLI's default --k
    index: IndexKind  # FAISS index kind exported (pipeline.evaluation.faiss_index); flat = exact inner product
    batch_size: Annotated[Int, Field(ge=1)]  # users per forward pass when encoding histories
    gallery_users: Annotated[Int, Field(ge=1)]  # test users shown in reports/gallery.html (a seeded sample)
    gallery_seed: Seed
    ivf: IvfConfig = DEFAULT_IVF  # read when index: ivf (required in params.yaml like every key)
    hnsw: HnswConfig = DEFAULT_HNSW  # read when index: hnsw

    @property
    def index_config(self) -> IndexConfig:
        return IndexConfig(self.index, self.ivf, self.hnsw)


@dataclass(frozen=True)
class Params(Section):
    data: DataConfig
    embed: EmbedConfig
    train: TrainConfig
    model: ModelConfig
    evaluate: EvaluateConfig


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
    if path.is_dir():
        raise ConfigError(f"{path} is a folder, not a params file. Fix: pass the YAML file, e.g. --params params.yaml")
    if path.stat().st_size > MAX_PARAMS_BYTES:
        raise ConfigError(f"{path}: {path.stat().st_size:,} bytes; a params file is at most {MAX_PARAMS_BYTES:,}")
    raw = parse_yaml(_params_text(path), path)
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: must be a YAML mapping of sections")
    return raw


def _params_text(path: Path) -> str:
    """The params file as text; it must be UTF-8 (a UTF-8 byte order mark is fine)."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        utf16 = data[:2] in (b"\xff\xfe", b"\xfe\xff")  # what Windows PowerShell's `>` and Notepad's "Unicode" write
        what = "UTF-16 text" if utf16 else f"not UTF-8 (byte 0x{data[e.start]:02x} on line {line})"
        raise ConfigError(f"{path}: {what}; a params file must be UTF-8. Fix: save it as UTF-8") from None


# Sections read by optional stages, each validated by its own loader (``pretrain`` for MP4SR, ``download``).
EXTRA_SECTIONS: tuple[str, ...] = ("pretrain", "download", "baseline", "recommend")
CORE_SECTIONS: tuple[str, ...] = ("data", "embed", "train", "model", "evaluate")


def raw_section(raw: dict[str, Any], name: str, path: Path) -> Any:
    if name not in raw:
        raise ConfigError(f"{path}: missing section `{name}`")
    return raw[name]


def load_model_config(raw_model: Any, path: Path) -> ModelConfig:
    """Validate ``model:``: ``name`` must be a registered model and every key must belong to one."""
    if not isinstance(raw_model, dict) or "name" not in raw_model:
        raise ConfigError(f"{path}: missing key `model.name` (one of the registered models, e.g. sasrec)")
    from pipeline.models import configs

    name = raw_model["name"]
    options = {k: v for k, v in raw_model.items() if k != "name"}
    configs.model_config(name, options, path)  # raises ConfigError on any problem
    return ModelConfig(name=name, options=options)


def load_params(path: Path = DEFAULT_PARAMS) -> Params:
    """Load and validate every core section (unknown sections are errors too)."""
    return parse_params(load_raw(path), path)


def check_params(raw: dict[str, Any], path: Path) -> None:
    """Validate params held in memory (``path`` names where they came from in messages): every core section and
    the ``baseline`` and ``pretrain`` sections, as the stages that read them would; a ``ConfigError`` otherwise."""
    parse_params(raw, path)
    parse_section(BaselineConfig, raw, "baseline", path)
    parse_section(PretrainConfig, raw, "pretrain", path)


def parse_params(raw: dict[str, Any], path: Path) -> Params:
    """The core sections of ``raw`` (a params file's mapping) validated; ``path`` names it in messages."""
    allowed = CORE_SECTIONS + EXTRA_SECTIONS
    for extra in sorted(set(raw) - set(allowed)):
        raise ConfigError(f"{path}: unknown section `{extra}`; known sections: {', '.join(allowed)}")
    return Params(
        data=from_dict(DataConfig, raw_section(raw, "data", path), path, "data"),
        embed=from_dict(EmbedConfig, raw_section(raw, "embed", path), path, "embed"),
        train=from_dict(TrainConfig, raw_section(raw, "train", path), path, "train"),
        model=load_model_config(raw_section(raw, "model", path), path),
        evaluate=from_dict(EvaluateConfig, raw_section(raw, "evaluate", path), path, "evaluate"),
    )


def load_section(cls: type, name: str, path: Path = DEFAULT_PARAMS) -> Any:
    """Load one section; stages that read a single section use this so their DVC params stay exact."""
    return parse_section(cls, load_raw(path), name, path)


def parse_section(cls: type, raw: dict[str, Any], name: str, path: Path) -> Any:
    """Section ``name`` of ``raw`` (a params file's mapping) validated as ``cls``; ``path`` names it in messages."""
    if name == "model":
        return load_model_config(raw_section(raw, name, path), path)
    loaded = from_dict(cls, raw_section(raw, name, path), path, prefix=name)
    if isinstance(loaded, BaselineConfig):
        loaded.build(path)  # SASRec's keys are checked when the section is loaded, not when the model is built
    return loaded
