"""Every registered model's config, and the rules of the ``model:`` section that selects one.

Frozen dataclasses with a pydantic schema (:mod:`pipeline.schema`): no torch, no model code, so ``pipeline.config``
and the registry read them without importing a model; each model checks its config when it is built
(:func:`pipeline.schema.check`). Each config's defaults are the model's *registered* defaults (the
paper's or the pipeline's values): a key of a model that is not selected must keep them. Ranges are ``Field``
constraints on the fields; cross-field rules are the ``model_validator``s beside them. Messages name ``model.<key>``
(``baseline.model.<key>`` for the baseline, ``model.<model>.<key>`` for a key set in a model's subsection).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, model_validator

from pipeline.schema import Bool, ConfigError, Float, Int, Rule, Section, check_value, defaults, from_dict

AtLeast1 = Annotated[Int, Field(ge=1)]
Dropout = Annotated[Float, Field(ge=0, lt=1, allow_inf_nan=False)]  # a dropout probability: [0, 1)
NonNegative = Annotated[Float, Field(ge=0, allow_inf_nan=False)]
Positive = Annotated[Float, Field(gt=0, allow_inf_nan=False)]
Probability = Annotated[Float, Field(ge=0, le=1, allow_inf_nan=False)]


def _names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def _heads_divide(config: Any, *heads: str) -> None:
    for key in heads:
        if config.hidden_dim % getattr(config, key):
            raise Rule(f"`{{{key}}}` = {getattr(config, key)} must divide `{{hidden_dim}}` = {config.hidden_dim}")


@dataclass(frozen=True)
class SASRecConfig(Section):
    """SASRec (:mod:`pipeline.models.sasrec`), also the baseline's ``baseline.model``."""

    SECTION: ClassVar[str] = "model"
    hidden_dim: AtLeast1 = 64  # D: item / position embedding and transformer width
    num_layers: AtLeast1 = 2  # self-attention blocks
    num_heads: AtLeast1 = 1  # attention heads; must divide hidden_dim
    dropout: Dropout = 0.1  # embedding, residual and feed-forward dropout (attention weights: none, see layers.py)

    @model_validator(mode="after")
    def _heads(self) -> SASRecConfig:
        _heads_divide(self, "num_heads")
        return self


@dataclass(frozen=True)
class SASRecFusionConfig(SASRecConfig):
    """:mod:`pipeline.models.sasrec_fusion`: SASRec's keys and defaults (the flat ``model:`` section shares them).

    ``hidden_dim`` is also the width of the content projections."""


@dataclass(frozen=True)
class ODMTConfig(Section):
    """:mod:`pipeline.models.odmt`. Defaults = the pipeline's defaults (params.yaml), which are also the registered
    defaults that keys of a non-selected model must keep. Extensions are on by default where they measured better;
    the authors' values are in each comment (docs/models.md)."""

    SECTION: ClassVar[str] = "model"
    hidden_dim: AtLeast1 = 64  # D: width of tokens, item vectors and user encoders; the ranking vector is (#heads x D)
    num_layers: AtLeast1 = 2  # user-encoder depth per head: transformer blocks (sasrec) or GRU layers (gru4rec)
    num_heads: AtLeast1 = 1  # attention heads of the SASRec user encoders; must divide hidden_dim
    dropout: Dropout = 0.1  # dropout everywhere (embeddings, attention, residual, feed-forward), item and user side
    backbone: Literal["sasrec", "gru4rec"] = "sasrec"  # sequential user encoder (the framework is model-agnostic)
    id_aware_transformer: Bool = True  # False = ablation "w/o IMT": ID embedding and pooled features through MLPs only
    fusion_layers: AtLeast1 = 2  # blocks of the ID-aware multimodal transformer (paper: 2)
    fusion_heads: AtLeast1 = 2  # its attention heads (paper: 2); must divide hidden_dim
    id_init: Literal["features", "random"] = "features"  # features = IDs start from mean content
    softmax: Literal["full", "in_batch"] = "full"  # full CE over all items | in-batch candidates with logQ correction
    distill_weight: NonNegative = 1.0  # weight of the online-distillation term (0 = ablation "w/o distillation")
    distill_temperature: Positive = 0.5  # tau
    distill_ramp_epochs: Annotated[Int, Field(ge=0)] = 12  # alpha: KD x exp(-5 (1 - epoch/alpha)^2); 0 = no ramp
    # mutual (authors): every KD term trains student and teacher | detached: teachers get no KD gradient |
    # one_way (extension): only KD(m <- id), id detached; the ID head gets no KD term at all
    distill_mode: Literal["mutual", "detached", "one_way"] = "one_way"
    head_weight_id: NonNegative = 1.0  # ranking score = weighted mean of the heads' scores (`validation`'s start)
    head_weight_text: NonNegative = 1.0
    head_weight_image: NonNegative = 1.0
    # --- extensions (off = the authors' behaviour) and speed levers; see docs/models.md ---
    residual_id: Bool = True  # v_id = id_emb + MLP(ID token), MLP's last layer zero-initialised (SASRec at init)
    item_dropout: Dropout | None = 0.0  # dropout of the item side (IMT input + blocks); None = `dropout` (authors)
    head_weights: Literal["fixed", "validation"] = "validation"  # validation: grid-searched (authors: fixed)
    max_text_tokens: Annotated[Int, Field(ge=0)] = 16  # text tokens kept per item (the first ones); 0 = every one
    max_image_tokens: Annotated[Int, Field(ge=0)] = 4  # image tokens per item: the grid pooled to at most this; 0 = all
    # speed lever (extension): the content heads' user encoders read only the most recent N items, and their
    # cross-entropy and the KD terms are computed at those positions only; the ID head reads all and its CE covers
    # every position. Any distill_mode; needs softmax: full. 0 = all (authors); 50 measured in docs/benchmarks.md
    content_max_seq_len: Annotated[Int, Field(ge=0)] = 50
    # extension: start the ID head (ID embeddings + its SASRec user encoder) from the trained SASRec baseline
    # (models/baseline/model.pt); with residual_id the ID head then *is* the baseline at step 0. false = authors
    init_from_baseline: Bool = True
    compile_loss: Bool = True  # torch.compile the loss arithmetic (needs a C++ compiler)

    @model_validator(mode="after")
    def _rules(self) -> ODMTConfig:
        _heads_divide(self, "num_heads", "fusion_heads")
        if self.content_max_seq_len > 0 and self.softmax != "full":
            raise Rule(
                f"{{content_max_seq_len}} = {self.content_max_seq_len} needs {{softmax}}: full; "
                "set {content_max_seq_len}: 0 with {softmax}: in_batch"
            )
        return self


@dataclass(frozen=True)
class MP4SRConfig(Section):
    """:mod:`pipeline.models.mp4sr`; defaults are the paper's."""

    SECTION: ClassVar[str] = "model"
    hidden_dim: AtLeast1 = 64  # D: adaptor output, position embedding and transformer width (paper: 64)
    num_layers: AtLeast1 = 2  # transformer blocks of the shared M2SE backbone (paper: 2)
    num_heads: AtLeast1 = 2  # attention heads; must divide hidden_dim (paper: 2)
    dropout: Dropout = 0.2  # embedding, residual and feed-forward dropout (paper: 0.2; attention weights: none)
    num_experts: AtLeast1 = 8  # experts per modality in the MoE adaptor (paper: 8)
    adaptor_dropout: Dropout = 0.2  # dropout inside each adaptor expert (paper: 0.2)
    temperature: Positive = 0.07  # tau of the InfoNCE / NT-Xent losses and of the fine-tuning logits (paper: 0.07)
    cm_weight: NonNegative = 0.01  # lambda: weight of the cross-modality NT-Xent in pre-training (paper: 0.01)
    mixup_max_prob: Probability = 0.5  # per-batch swap probability p ~ U(0, this) of complementary mixup; 0 = none
    item_drop_max: Probability = 0.2  # per-batch item-drop probability p ~ U(0, this) in pre-training; 0 = no drop
    finetune_id_embeddings: Bool = True  # add item-ID embeddings when fine-tuning (paper: true); false = content only
    # Ranking only: a cold item's ID row = softmax-weighted mean of the ID rows of its k most content-similar warm
    # items (cosine of the adapted features); 0 = zero (content alone). Default for checkpoints that predate it.
    cold_id_neighbours: Annotated[Int, Field(ge=0)] = 0
    # Extensions for the cold-start setting (not in the paper), each off by default:
    # fine-tuning zeroes each item's ID embedding with this probability per batch, in inputs and candidates alike,
    # so the content path learns to rank on its own (items without an ID are ranked by content alone)
    id_dropout: Dropout = 0.0
    # "validation": a scalar added to the score of every item without training interactions, chosen after each
    # fine-tuning epoch on valid NDCG@10 (grid COLD_OFFSET_GRID; the realistic valid population) | "none"
    cold_offset: Literal["none", "validation"] = "none"
    # weight of a valid user whose target has no training interactions in that choice: 1 = the realistic population;
    # (1 - share) / share weighs cold and warm targets equally (new items must surface, at the warm users' cost)
    cold_offset_weight: Positive = 1.0
    # fine-tuning leaves the pre-trained M2SE transformer (and its position embeddings) frozen, as UniSRec does
    freeze_transformer: Bool = False

    @model_validator(mode="after")
    def _rules(self) -> MP4SRConfig:
        _heads_divide(self, "num_heads")
        if self.cold_offset == "none" and self.cold_offset_weight != 1.0:
            raise Rule(
                f"{{cold_offset_weight}} = {self.cold_offset_weight} is read only with {{cold_offset}}: validation "
                "(it is 'none', so the weight would be ignored); set cold_offset: validation or put the weight back "
                "to 1.0"
            )
        return self


# ``model:`` keys of MP4SR that shape the pre-trained network or its training; the others are fine-tuning only. The
# ``pretrain`` stage declares exactly these as DVC params; :func:`pipeline.training.pretrain.init_from_pretrained`
# checks them.
PRETRAIN_KEYS: tuple[str, ...] = (
    "hidden_dim",
    "num_layers",
    "num_heads",
    "dropout",
    "num_experts",
    "adaptor_dropout",
    "temperature",
    "cm_weight",
    "mixup_max_prob",
    "item_drop_max",
)

# model.name -> its config class (the registry pairs each with its model class, pipeline.models.registry)
MODEL_CONFIGS: dict[str, type] = {
    "sasrec": SASRecConfig,
    "odmt": ODMTConfig,
    "mp4sr": MP4SRConfig,
    "sasrec_fusion": SASRecFusionConfig,
}


# ----------------------------------------------------------------------------------------------------------------
# The ``model:`` section


def config_class(name: str, path: Path = Path("params.yaml")) -> type:
    if name not in MODEL_CONFIGS:
        raise ConfigError(f"{path}: `model.name` = {name!r} must be one of: {', '.join(sorted(MODEL_CONFIGS))}")
    return MODEL_CONFIGS[name]


def model_config(name: str, options: dict[str, Any], path: Path = Path("params.yaml"), prefix: str = "model") -> Any:
    """Validate ``model:`` and build the selected model's config; no value is read by a model it was not set for.

    ``model:`` holds ``name``, every key that exactly one registered model reads (flat, so ``-S model.<key>=...``
    stays one command), and one subsection per model, ``model.<model>.<key>``, for the keys that several models
    read (``hidden_dim``, ``num_heads``, ``dropout``...: :func:`shared_keys`). A shared key left out of a model's
    subsection (or a model without one) takes that model's registered default, the field default of its config
    (the paper's value), so ``-S model.name=mp4sr`` alone runs MP4SR on MP4SR's settings. Errors, each naming the
    key and the way out:

    - a shared key set flat (``model.dropout``): whichever model is selected would read it;
    - a key of a model that is not selected, flat or in its subsection, that differs from that model's registered
      default: it would be ignored (with the registered default it is fine, so switching models is one change).
    """
    selected = config_class(name, path)
    if prefix != "model":  # a section of one fixed model (baseline.model): only that model's keys, flat
        return from_dict(selected, options, path, prefix=prefix)
    readers = key_readers()
    shared = shared_keys()
    flat = {k: v for k, v in options.items() if k not in MODEL_CONFIGS}
    unknown = sorted(set(flat) - set(readers))
    if unknown:
        raise ConfigError(f"{path}: unknown key `model.{unknown[0]}`; no registered model has it")
    for key in sorted(set(flat) & set(shared)):
        several = ", ".join(sorted(shared[key]))
        raise ConfigError(
            f"{path}: `model.{key}` is read by several models ({several}), so a value here would be "
            f"read by whichever model is selected. Set it for one model: model.{name}.{key} (model.name is {name!r})"
        )
    own = set(_names(selected))
    for key in sorted(set(flat) - own):
        _check_unread_key(key, flat[key], readers[key], name, path)
    scoped = {m: _scoped(m, options[m], path) for m in MODEL_CONFIGS if m in options}
    for model_name, values in scoped.items():
        if model_name != name:
            for key, value in values.items():
                _check_unread_key(f"{model_name}.{key}", value, [model_name], name, path)
    registered = registered_defaults(name)
    values = {k: registered[k] for k in own & set(shared) if k in registered} | scoped.get(name, {})
    keys = {k: f"model.{name}.{k}" for k in shared}  # where a shared key is set, for the messages
    return from_dict(selected, {k: v for k, v in flat.items() if k in own} | values, path, "model", keys)


def key_readers() -> dict[str, list[str]]:
    """``{key: [models whose config has it]}`` over every registered model."""
    readers: dict[str, list[str]] = {}
    for model_name, cls in MODEL_CONFIGS.items():
        for key in _names(cls):
            readers.setdefault(key, []).append(model_name)
    return readers


def shared_keys() -> dict[str, list[str]]:
    """The keys that several registered models read, with those models: set per model as ``model.<model>.<key>``."""
    return {key: names for key, names in key_readers().items() if len(names) > 1}


def registered_defaults(model_name: str) -> dict[str, Any]:
    """``{key: default}`` of a registered model's config (fields without a default are left out)."""
    return defaults(config_class(model_name))


def _scoped(model_name: str, raw: Any, path: Path) -> dict[str, Any]:
    """``model.<model_name>``: a mapping of that model's shared keys, each type- and range-checked."""
    where = f"model.{model_name}"
    allowed = sorted(k for k, names in shared_keys().items() if model_name in names)
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: `{where}` must be a mapping of {model_name}'s keys ({', '.join(allowed)})")
    cls = MODEL_CONFIGS[model_name]
    out = {}
    for key, value in raw.items():
        if key not in allowed:
            hint = f"; it is read by {model_name} alone: set model.{key}" if key in _names(cls) else ""
            raise ConfigError(
                f"{path}: unknown key `{where}.{key}`; `{where}` holds only keys several models read "
                f"({', '.join(allowed)}){hint}"
            )
        out[key] = check_value(cls, key, value, path, f"{where}.{key}")
    return out


def _check_unread_key(key: str, value: Any, readers: list[str], selected: str, path: Path) -> None:
    """``model.<key>``, read only by ``readers`` (not by ``selected``), must equal a reader's registered default.

    ``key`` may be scoped (``mp4sr.dropout``): its last part is the config field."""
    field_name = key.rsplit(".", 1)[-1]
    missing = object()
    found = {reader: registered_defaults(reader).get(field_name, missing) for reader in readers}
    if any(_same(value, default) for default in found.values() if default is not missing):
        return
    shown = ", ".join(f"{r}: {d!r}" for r, d in found.items() if d is not missing) or "none"
    raise ConfigError(
        f"{path}: `model.{key}` = {value!r} is read only by {' and '.join(readers)}, but model.name is "
        f"{selected!r}, so it would be ignored. Select a model that reads it (model.name: {readers[0]}) or put "
        f"it back to its registered default ({shown})"
    )


def _same(value: Any, default: Any) -> bool:
    if isinstance(default, float) and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value) == default
    return type(value) is type(default) and value == default
