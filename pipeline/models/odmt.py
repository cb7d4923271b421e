"""ODMT (Ji et al., "Online Distillation-enhanced Multi-modal Transformer for Sequential Recommendation", ACM MM 2023,
arXiv 2308.04067), with the authors' code (github xyliugo/ODMT) as the reference for what the paper leaves open.

The paper's three parts, one module each:

- :class:`IDAwareMultimodalTransformer` (Fig. 3b, "IMT"): every item is a short token sequence ``[text summary, text
  tokens | image summary, image tokens | ID]``; text and image tokens may not attend to the ID token (the ID token
  reads everything). The ID token and the two summary tokens, each through its own MLP, are the item's three vectors.
- :class:`SASRecUserEncoder` / :class:`GRU4RecUserEncoder` (Fig. 3a): one causal user encoder per item-vector type
  (head) predicts the next item by inner product with the same type's vectors.
- :class:`OnlineDistillation` (Fig. 3c): KD(text <- ID) + KD(image <- ID) + KD(ID <- mean of the heads' logits) at
  temperature tau, scaled by tau^2 and weighted by ``distill_weight`` x the ramp ``exp(-5 (1 - epoch/alpha)^2)``.

The ranking score is the weighted mean of the heads' scores, one inner product: ``user_vectors = concat(w_h u_h)``,
``item_vectors = concat(v_h)``; the weights are the buffer ``head_weight`` (chosen on validation with
``head_weights: validation``, :mod:`pipeline.evaluation.fusion`). Training computes the cross-entropies and KD terms
fused, in chunks (:mod:`pipeline.models.losses`); the item side runs over real tokens only
(:mod:`pipeline.models.item_tokens`). Where this file departs from the paper or the authors' code (summary tokens,
missing modalities, the KL form of KD, ``softmax: in_batch`` with logQ) and every extension key (``residual_id``,
``item_dropout``, ``distill_mode``, ``head_weights``, token caps, ``content_max_seq_len``, ``init_from_baseline``,
``compile_loss``): docs/models.md.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.catalog import ItemCatalog
from pipeline.evaluation.fusion import best_head_weights
from pipeline.models import losses
from pipeline.models.configs import ODMTConfig
from pipeline.models.item_tokens import (
    ModalityInput,
    block_outputs,
    gather_content,
    id_first_mask,
    packed_layout,
    register_content,
)
from pipeline.models.layers import (
    CausalTransformer,
    additive_mask,
    causal_padding_mask,
    init_weights,
    left_padded_positions,
)
from pipeline.schema import check

MODALITIES: tuple[str, ...] = ("text", "image")
FFN_MULTIPLIER = 4  # feed-forward width = 4 x hidden_dim, item side and user side (paper, authors' code)
INIT_STD = 0.02
RAMP_SHARPNESS = 5.0  # exp(-5 (1 - t)^2), Laine & Aila 2017, as in the authors' code
EVAL_CHUNK = 1024  # items per item-transformer call when building the ranking table (bounds memory)
DISTILL_MODES = ("mutual", "detached", "one_way")
QUERY_CACHE_USERS = 262_144  # users whose per-head eval queries are kept (~200 MB at 3 heads x 64 dims)


def distill_ramp(epoch: int, ramp_epochs: int) -> float:
    """The authors' ``sigmoid_rampup``: ``exp(-5 (1 - min(epoch, alpha)/alpha)^2)``; 1.0 when alpha = 0."""
    if ramp_epochs <= 0:
        return 1.0
    phase = 1.0 - min(max(epoch, 0), ramp_epochs) / ramp_epochs
    return math.exp(-RAMP_SHARPNESS * phase * phase)


def item_mlp(dim: int) -> nn.Sequential:
    """The 2-layer MLP that turns an output token into an item vector (authors: Linear, LeakyReLU, Linear)."""
    return nn.Sequential(nn.Linear(dim, dim), nn.LeakyReLU(), nn.Linear(dim, dim))


class IDAwareMultimodalTransformer(nn.Module):
    """Fig. 3b, IMT: item vectors (one per head: "id", then each modality) from the ID embedding and the content tokens.

    With ``use_transformer=False`` (ablation "w/o IMT") the tokens are not used: the ID embedding and each projected
    pooled feature go straight to their MLP.
    """

    def __init__(
        self,
        dim: int,
        modality_dims: dict[str, int],
        num_layers: int,
        num_heads: int,
        dropout: float,
        use_transformer: bool,
    ) -> None:
        super().__init__()
        self.modalities = tuple(modality_dims)
        self.use_transformer = use_transformer
        self.packed = True  # False = the padded reference layout (same outputs; for tests and the benchmark)
        self.proj = nn.ModuleDict({m: nn.Linear(d, dim) for m, d in modality_dims.items()})  # d_m -> D, tokens too
        self.missing = nn.ParameterDict({m: nn.Parameter(torch.zeros(dim)) for m in self.modalities})  # (D,)
        self.input_norm = nn.LayerNorm(dim)
        self.input_dropout = nn.Dropout(dropout)
        self.mlp = nn.ModuleDict({h: item_mlp(dim) for h in ("id", *self.modalities)})
        if use_transformer:
            # roles: "<m>_summary", "<m>_token" per modality, and "id"
            self.roles = nn.ParameterDict(
                {f"{m}_{r}": nn.Parameter(torch.zeros(dim)) for m in self.modalities for r in ("summary", "token")}
            )
            self.roles["id"] = nn.Parameter(torch.zeros(dim))
            self.encoder = CausalTransformer(num_layers, dim, num_heads, dropout, ffn_dim=FFN_MULTIPLIER * dim)

    def summary(self, m: str, content: ModalityInput) -> torch.Tensor:
        """(M, D): the projected pooled feature, or the learned "missing <m>" vector where the item lacks it."""
        projected = self.proj[m](content.pooled)  # (M, D)
        return torch.where(content.present[:, None], projected, self.missing[m])  # (M, D)

    def forward(self, id_emb: torch.Tensor, content: dict[str, ModalityInput]) -> dict[str, torch.Tensor]:
        """``id_emb`` (M, D) and each modality's inputs -> {"id": (M, D), "<m>": (M, D), ...} item vectors."""
        if not self.use_transformer:
            outputs = {"id": id_emb} | {m: self.summary(m, content[m]) for m in self.modalities}  # each (M, D)
            return {h: self.mlp[h](self.input_dropout(self.input_norm(x))) for h, x in outputs.items()}  # (M, D)
        outputs = self._packed(id_emb, content) if self.packed else self._padded(id_emb, content)
        return {name: self.mlp[name](x) for name, x in outputs.items()}  # each (M, D)

    def _packed(self, id_emb: torch.Tensor, content: dict[str, ModalityInput]) -> dict[str, torch.Tensor]:
        """The transformer over real tokens only: the same outputs as :meth:`_padded`, less compute.

        Attention has no positions (only role embeddings), so an item's tokens may come in any order: each item is
        laid out ``[ID, summaries, its real tokens]``, items are grouped by length (:func:`packed_layout`), and each
        group runs padded only to its own longest item. The last block computes queries, feed-forward and output
        only at the ``1 + #modalities`` output positions (keys and values still come from every token): exact.
        """
        items, dim = id_emb.shape
        pieces = [id_emb + self.roles["id"]]  # (M, D): the ID token, position 0
        counts = []
        for m in self.modalities:
            pieces.append(self.summary(m, content[m]) + self.roles[f"{m}_summary"])  # (M, D)
        for m in self.modalities:
            flat, count = content[m].real_tokens()  # (R_m, d_m), (M,)
            pieces.append(self.proj[m](flat) + self.roles[f"{m}_token"])  # (R_m, D)
            counts.append(count)
        rows = self.input_dropout(self.input_norm(torch.cat(pieces)))  # (R, D): per-token, so before the gather
        rows = torch.cat([rows, rows.new_zeros(1, dim)])  # (R + 1, D): the last row pads the groups
        fixed = 1 + len(self.modalities)
        out = []
        groups = packed_layout(counts, items, fixed, pad=rows.shape[0] - 1)  # [(members (M_g,), index (M_g, S_g))]
        for _, index in groups:
            x = rows[index]  # (M_g, S_g, D)
            mask = additive_mask(id_first_mask(index != rows.shape[0] - 1), x.dtype)  # (M_g, 1, S_g, S_g)
            for block in self.encoder.blocks[:-1]:
                x = block(x, mask)  # (M_g, S_g, D)
            out.append(self.encoder.ln_final(block_outputs(self.encoder.blocks[-1], x, mask, fixed)))  # (M_g, F, D)
        order = torch.cat([members for members, _ in groups])  # (M,): the items in group order
        h = torch.empty(items, fixed, dim, dtype=out[0].dtype, device=id_emb.device)  # (M, F, D)
        h[order] = torch.cat(out)  # (M, F, D): back to the input order
        return {"id": h[:, 0]} | {m: h[:, 1 + i] for i, m in enumerate(self.modalities)}  # each (M, D)

    def _padded(self, id_emb: torch.Tensor, content: dict[str, ModalityInput]) -> dict[str, torch.Tensor]:
        """The reference layout: every item padded to all token slots (the authors' code; kept for the tests)."""
        parts, keys, summary_at = [], [], {}
        offset = 0
        for m in self.modalities:
            c = content[m]
            if c.tokens is None or c.token_mask is None:
                raise ValueError(f"the ID-aware transformer needs {m} tokens; set embed.store_tokens: true")
            summary_at[m] = offset
            summary = self.summary(m, c) + self.roles[f"{m}_summary"]  # (M, D)
            tokens = self.proj[m](c.tokens) + self.roles[f"{m}_token"]  # (M, T_m, D)
            parts += [summary[:, None], tokens]
            real = c.token_mask & c.present[:, None]  # (M, T_m): a missing modality has no tokens
            keys += [torch.ones_like(c.present)[:, None], real]  # summaries are always valid keys
            offset += 1 + tokens.shape[1]
        parts.append((id_emb + self.roles["id"])[:, None])  # (M, 1, D): the ID token comes last
        keys.append(torch.ones_like(keys[0]))
        x = self.input_dropout(self.input_norm(torch.cat(parts, dim=1)))  # (M, S, D), S = sum(1 + T_m) + 1
        mask = id_aware_mask(torch.cat(keys, dim=1))  # (M, 1, S, S)
        h = self.encoder(x, mask)  # (M, S, D)
        return {"id": h[:, -1]} | {m: h[:, i] for m, i in summary_at.items()}  # each (M, D)


def id_aware_mask(keys: torch.Tensor) -> torch.Tensor:
    """(M, S) bool valid keys, the last one the ID token -> (M, 1, S, S) bool attention mask (True = may attend).

    Content tokens attend to every valid content token but never to the ID token; the ID token attends to all valid
    tokens (authors' ``version v1``: ``mask[:, :, :-1, -1] = -inf``).
    """
    length = keys.shape[1]
    mask = keys[:, None, None, :].expand(-1, 1, length, length).clone()  # (M, 1, S, S)
    mask[:, :, :-1, -1] = False  # content queries do not see the ID key
    return mask  # (M, 1, S, S)


class SASRecUserEncoder(nn.Module):
    """SASRec-style causal user encoder (the paper's default backbone) over a sequence of item vectors.

    Learned positions count real items from the oldest one (0, 1, ...), so extra left padding changes nothing.
    """

    def __init__(self, dim: int, num_layers: int, num_heads: int, dropout: float, max_seq_len: int) -> None:
        super().__init__()
        self.max_seq_len = max_seq_len
        self.pos_emb = nn.Embedding(max_seq_len, dim)  # (L_max, D)
        self.emb_norm = nn.LayerNorm(dim)
        self.emb_dropout = nn.Dropout(dropout)
        self.encoder = CausalTransformer(num_layers, dim, num_heads, dropout, ffn_dim=FFN_MULTIPLIER * dim)

    def forward(self, item_seq: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        """(B, L, D) item vectors of a left-padded history ``input_ids`` (B, L) -> (B, L) hidden states (B, L, D)."""
        positions = left_padded_positions(input_ids, self.max_seq_len)  # (B, L): 0 = oldest real item
        x = self.emb_dropout(self.emb_norm(item_seq + self.pos_emb(positions)))  # (B, L, D)
        return self.encoder(x, causal_padding_mask(input_ids))  # (B, L, D)


class GRU4RecUserEncoder(nn.Module):
    """GRU4Rec (Hidasi et al., ICLR 2016; RecBole's variant: dropout, GRU, dense) over a sequence of item vectors.

    The inputs are LayerNorm-ed first, as in the SASRec encoder: ODMT's item vectors are MLP outputs of any scale
    (tiny at initialisation), which a GRU, unlike attention behind a LayerNorm, does not absorb. Left-padded rows
    are turned right-padded and packed, so the GRU never steps over padding: outputs do not depend on the amount of
    left padding and padding positions output zeros.
    """

    def __init__(self, dim: int, num_layers: int, dropout: float) -> None:
        super().__init__()
        self.emb_norm = nn.LayerNorm(dim)
        self.emb_dropout = nn.Dropout(dropout)
        self.gru = nn.GRU(dim, dim, num_layers=num_layers, batch_first=True, bias=True)
        self.dense = nn.Linear(dim, dim)

    def forward(self, item_seq: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        """(B, L, D) item vectors of a left-padded history ``input_ids`` (B, L) -> hidden states (B, L, D)."""
        batch, length, dim = item_seq.shape
        lengths = (input_ids != 0).sum(dim=1)  # (B,)
        shift = (length - lengths)[:, None]  # (B, 1): leading padding per row
        cols = torch.arange(length, device=input_ids.device)[None, :]  # (1, L)
        to_right = ((cols + shift) % length)[..., None].expand(-1, -1, dim)  # (B, L, D)
        x = self.emb_dropout(self.emb_norm(item_seq.gather(1, to_right)))  # (B, L, D): real items first
        # pack_padded_sequence takes its lengths on the CPU (a torch API requirement)
        packed = nn.utils.rnn.pack_padded_sequence(
            x, lengths.clamp(min=1).cpu(), batch_first=True, enforce_sorted=False
        )
        out, _ = self.gru(packed)
        out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=length)  # (B, L, D)
        to_left = ((cols - shift) % length)[..., None].expand(-1, -1, dim)  # (B, L, D)
        return self.dense(out.gather(1, to_left))  # (B, L, D): back to left padding


def build_user_encoder(config: ODMTConfig, max_seq_len: int) -> nn.Module:
    if config.backbone == "sasrec":
        return SASRecUserEncoder(config.hidden_dim, config.num_layers, config.num_heads, config.dropout, max_seq_len)
    if config.backbone == "gru4rec":
        return GRU4RecUserEncoder(config.hidden_dim, config.num_layers, config.dropout)
    raise ValueError(f"model.backbone = {config.backbone!r} must be one of: sasrec, gru4rec")


class OnlineDistillation(nn.Module):
    """Fig. 3c: every modality head learns from the ID head, and the ID head from the ensemble (mean of all heads).

    Each term is ``tau^2 * KL(softmax(teacher / tau) || softmax(student / tau))``, averaged over positions. This is
    the readable version over explicit (P, C) logits; training uses :func:`head_losses`, which computes the same
    numbers and gradients without holding any (P, C) tensor (checked against this in the tests).
    """

    def __init__(self, temperature: float, mode: str = "mutual") -> None:
        super().__init__()
        if mode not in DISTILL_MODES:
            raise ValueError(f"model.distill_mode = {mode!r} must be one of: {', '.join(DISTILL_MODES)}")
        self.temperature = temperature
        self.mode = mode
        self.detach_teacher = mode != "mutual"

    def kd(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        """(P, C) student and teacher logits -> scalar; 0 exactly when they are equal."""
        if self.detach_teacher:
            teacher = teacher.detach()
        tau = self.temperature
        log_p_student = F.log_softmax(student / tau, dim=-1)  # (P, C)
        log_p_teacher = F.log_softmax(teacher / tau, dim=-1)  # (P, C)
        kl = F.kl_div(log_p_student, log_p_teacher, reduction="none", log_target=True).sum(dim=-1)  # (P,)
        return kl.mean() * tau * tau

    def forward(self, logits: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """{"id": (P, C), "<m>": (P, C), ...} -> {"kd_<m>": KD(m <- id), ..., "kd_id": KD(id <- ensemble)}."""
        ensemble = torch.stack(list(logits.values())).mean(dim=0)  # (P, C)
        terms = {f"kd_{h}": self.kd(x, logits["id"]) for h, x in logits.items() if h != "id"}
        # one_way: the ID head gets no KD term at all (it loses nothing to the content heads)
        terms["kd_id"] = ensemble.new_zeros(()) if self.mode == "one_way" else self.kd(logits["id"], ensemble)
        return terms


class ODMT(nn.Module):
    """ID-aware multimodal item vectors + one user encoder per head + online distillation; see the module docstring.

    Heads are "id" plus every modality present in the catalog (``catalog.features``); the catalog's content tensors
    are kept as non-persistent buffers (they are data, not weights, and stay out of checkpoints).
    """

    def __init__(self, config: ODMTConfig, catalog: ItemCatalog, max_seq_len: int | None = None) -> None:
        """``max_seq_len`` sizes the user encoders' position tables; None = the catalog's."""
        super().__init__()
        check(config)  # types, ranges and rules of its config (pipeline.models.configs), named model.<key>
        self.config = config
        self.num_items = catalog.num_items
        self.max_seq_len = catalog.max_seq_len if max_seq_len is None else max_seq_len
        self.modalities = tuple(m for m in MODALITIES if m in catalog.features)
        if not self.modalities:
            raise ValueError(
                "ODMT needs at least one content modality but the catalog has no text or image features; "
                "set embed.text.name / embed.image.name and run `dvc repro embed` (or use model.name: sasrec)"
            )
        self.heads = ("id", *self.modalities)
        weights = {"id": config.head_weight_id, "text": config.head_weight_text, "image": config.head_weight_image}
        total = sum(weights[h] for h in self.heads)
        if total <= 0:
            raise ValueError(f"model.head_weight_* of the heads {self.heads} sum to {total}; at least one must be > 0")
        # (H,) fusion weights, summing to 1; a buffer so that the checkpoint carries weights chosen on validation
        self.register_buffer("head_weight", torch.tensor([weights[h] / total for h in self.heads]))
        caps = {"text": config.max_text_tokens, "image": config.max_image_tokens}
        register_content(self, catalog, self.modalities, config.id_aware_transformer, caps)
        self.register_buffer("popularity", catalog.popularity.float(), persistent=False)  # (N+1,) training counts

        dim = config.hidden_dim
        self.id_emb = nn.Embedding(catalog.num_items + 1, dim, padding_idx=0)  # (N+1, D)
        self.item_encoder = IDAwareMultimodalTransformer(
            dim,
            {m: catalog.features[m].shape[1] for m in self.modalities},
            config.fusion_layers,
            config.fusion_heads,
            config.dropout if config.item_dropout is None else config.item_dropout,
            config.id_aware_transformer,
        )
        self.user_encoders = nn.ModuleDict({h: build_user_encoder(config, self.max_seq_len) for h in self.heads})
        self.distillation = OnlineDistillation(config.distill_temperature, config.distill_mode)
        self.apply(lambda m: init_weights(m, INIT_STD))
        for name, param in self.item_encoder.named_parameters():
            if name.startswith(("missing.", "roles.")):  # free vectors: same init as the embeddings
                nn.init.normal_(param, std=INIT_STD)
        if config.residual_id:  # v_id = id_emb + MLP(ID token) = id_emb at init: SASRec's tied embedding
            nn.init.zeros_(self.item_encoder.mlp["id"][-1].weight)
            nn.init.zeros_(self.item_encoder.mlp["id"][-1].bias)
        if config.id_init == "features":
            self._init_ids_from_content()
        self.kd_ramp = distill_ramp(1, config.distill_ramp_epochs)  # set per epoch by on_epoch_start
        self._table_cache: tuple[tuple, dict[str, torch.Tensor]] | None = None
        self._query_cache: tuple[tuple, dict[tuple, dict[str, torch.Tensor]]] | None = None

    # --- catalog content ---------------------------------------------------------------------------------------

    def content(self, ids: torch.Tensor | None = None, with_tokens: bool = True) -> dict[str, ModalityInput]:
        """(M,) item ids, or None for all N+1 rows (no gather) -> each modality's inputs for those items."""
        tokens = with_tokens and self.config.id_aware_transformer
        return gather_content(self, self.modalities, ids, tokens, self.id_emb.weight.dtype)

    @torch.no_grad()
    def _init_ids_from_content(self) -> None:
        """ID embeddings start as the mean of the item's projected pooled features (authors' ``init 1``).

        Each modality is projected by its (freshly initialised) token projection, centred and scaled to unit RMS over
        the items that have it (non-negative CNN features share one large direction that would make every ID alike),
        then averaged; the table is scaled to the usual init std. Items with no content keep their random row.
        """
        total = torch.zeros_like(self.id_emb.weight)  # (N+1, D)
        count = torch.zeros(self.num_items + 1, 1, device=total.device)  # (N+1, 1)
        for m, c in self.content(with_tokens=False).items():
            present = c.present[:, None].float()  # (N+1, 1)
            items = present.sum().clamp(min=1)
            z = c.pooled @ self.item_encoder.proj[m].weight.T  # (N+1, D)
            z = z - (z * present).sum(dim=0) / items  # (N+1, D): centred over the items with this modality
            rms = (z.square() * present).sum().div(items * z.shape[1]).sqrt().clamp(min=1e-8)
            total += z / rms * present
            count += present
        has = count[:, 0] > 0  # (N+1,)
        has[0] = False
        self.id_emb.weight[has] = total[has] / count[has] * INIT_STD

    # --- item and user sides -----------------------------------------------------------------------------------

    @property
    def starts_from_baseline(self) -> bool:
        """``init_from_baseline``: the training job then calls :meth:`init_id_head_from_sasrec`."""
        return self.config.init_from_baseline

    @torch.no_grad()
    def init_id_head_from_sasrec(self, state: dict[str, torch.Tensor], source: str) -> None:
        """Extension ``init_from_baseline``: copy a trained SASRec's item embeddings into ``id_emb`` and its
        position embedding, embedding LayerNorm and transformer blocks into the ID head's user encoder.

        With ``residual_id`` (MLP's last layer zero at init) the ID head's scores then equal the SASRec's exactly;
        the content heads start as usual. ``source`` names the checkpoint in errors.
        """
        if not self.config.residual_id or self.config.backbone != "sasrec":
            raise ValueError(
                "model.init_from_baseline needs model.residual_id: true and model.backbone: sasrec (so the ID head "
                "can start as the baseline); set model.init_from_baseline: false otherwise"
            )
        targets = {"item_emb.weight": self.id_emb.weight}
        encoder = self.user_encoders["id"]
        for name, tensor in encoder.state_dict(keep_vars=True).items():
            if name.startswith(("pos_emb.", "emb_norm.", "encoder.")):
                targets[name] = tensor
        for name, tensor in targets.items():
            if name not in state or state[name].shape != tensor.shape:
                found = tuple(state[name].shape) if name in state else "nothing"
                raise ValueError(
                    f"{source}: SASRec `{name}` has {found}, ODMT's ID head needs {tuple(tensor.shape)}; "
                    "model.hidden_dim/num_layers/num_heads and data.max_seq_len must match the baseline's "
                    "(baseline.model), or set model.init_from_baseline: false"
                )
            tensor.copy_(state[name])
        self._table_cache = self._query_cache = None

    def item_table(self, ids: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """(M,) item ids, or None for all N+1 items -> {head: (M, D)} item vectors; rows of id 0 (padding) are zero."""
        id_emb = self.id_emb.weight if ids is None else self.id_emb(ids)  # (M, D)
        vectors = self.item_encoder(id_emb, self.content(ids))  # each (M, D)
        if self.config.residual_id:  # extension: SASRec's embedding plus a learned content/ID correction
            vectors["id"] = id_emb + vectors["id"]  # (M, D)
        if ids is None:
            ids = torch.arange(self.num_items + 1, device=id_emb.device)  # (N+1,)
        real = (ids != 0)[:, None].to(id_emb.dtype)  # (M, 1)
        return {h: vectors[h] * real for h in self.heads}  # each (M, D)

    def encode(self, input_ids: torch.Tensor, table: dict[str, torch.Tensor], index: torch.Tensor) -> dict:
        """(B, L) history -> {head: (B, L_h, D)}; ``table[h][index]`` are the vectors of the items in ``input_ids``.

        L_h = L for the ID head; for content heads the last ``content_max_seq_len`` columns when that is set and
        shorter than L (the hidden state at a kept position depends only on kept items: positions are counted
        from the oldest kept item, see :class:`SASRecUserEncoder`).
        """
        out = {}
        for h in self.heads:
            ids, at = input_ids, index
            if h != "id" and 0 < self.config.content_max_seq_len < input_ids.shape[1]:
                ids, at = input_ids[:, -self.config.content_max_seq_len :], index[:, -self.config.content_max_seq_len :]
            out[h] = self.user_encoders[h](table[h][at], ids)  # (B, L_h, D)
        return out

    def set_epoch(self, epoch: int) -> None:
        self.kd_ramp = distill_ramp(epoch, self.config.distill_ramp_epochs)

    def on_epoch_start(self, epoch: int) -> None:
        """Called by :func:`pipeline.training.fit.fit` before each (1-based) epoch: the KD-weight ramp."""
        self.set_epoch(epoch)

    # --- training ----------------------------------------------------------------------------------------------

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Sum of the heads' cross-entropies + distill_weight x ramp x KD, with every component for logging."""
        queries, columns, target_col, in_batch = self.loss_inputs(batch)
        weight = self.config.distill_weight * self.kd_ramp
        device = queries[0].device.type
        matmul_dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else None
        options = losses.LossOptions(
            self.config.distill_temperature,
            weight,
            self.config.distill_mode,
            matmul_dtype=matmul_dtype,
            compiled=self.config.compile_loss,
        )
        older = in_batch.pop("older", None)
        if older is None:
            loss, parts = losses.head_losses(queries, columns, target_col, options, **in_batch)
        else:  # content_max_seq_len: every head (CE, KD) on the recent positions, the ID head's CE on the older ones
            loss, parts = self._split_losses(queries, columns, target_col, older, options)
        out = {"loss": loss} | {f"ce_{h}": parts[i] for i, h in enumerate(self.heads)}
        if self.config.distill_weight > 0:  # with distill_weight 0 the KD terms are not computed at all
            kd = parts[len(self.heads) :]  # (H,)
            out |= {f"kd_{h}": kd[i] for i, h in enumerate(self.modalities)} | {"kd_id": kd[-1], "kd": kd.sum()}
        out["kd_weight"] = loss.new_tensor(weight)
        return out

    def _split_losses(
        self,
        queries: list[torch.Tensor],
        columns: list[torch.Tensor],
        target_col: torch.Tensor,
        older: dict[str, torch.Tensor],
        options: losses.LossOptions,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``content_max_seq_len``'s loss: ``CE_id`` over all P positions + the content CEs and KD over the R recent
        ones (the only positions where the content heads, hence the ensemble teacher, exist).

        One :func:`head_losses` call over the recent positions with every head, in ``options.mode`` (so the ID head
        gets its KD terms there exactly as without the lever: mutual and detached train it on KD(id <- ensemble),
        mutual also as the teacher of KD(m <- id); one_way gives it none), its CE weighted R/P; one call over the
        O = P - R older positions with the ID head alone and no KD, weighted O/P. Each of the ID head's logits is
        computed once. ``parts``' ``ce_id`` is the mean over all P positions; the others are means over R.
        """
        recent, old = target_col.shape[0], older["target_col"].shape[0]
        share = recent / max(recent + old, 1)  # R / P
        ce_weights = (share,) + (1.0,) * (len(self.heads) - 1)
        loss, parts = losses.head_losses(queries, columns, target_col, replace(options, ce_weights=ce_weights))
        no_kd = replace(options, kd_weight=0.0)
        loss_old, parts_old = losses.head_losses([older["queries"]], columns[:1], older["target_col"], no_kd)
        ce_id = share * parts[0] + (1.0 - share) * parts_old[0]  # mean over all P positions
        return loss + (1.0 - share) * loss_old, torch.cat([ce_id[None], parts[1:]])

    def loss_inputs(self, batch: dict[str, torch.Tensor]) -> tuple[list, list, torch.Tensor, dict]:
        """Per head: queries (P, D) at positions with a target and candidate vectors (C, D); target columns (P,);
        and, for in-batch softmax, the logQ bias and the users' own items (see :func:`head_losses`).

        With ``content_max_seq_len`` = N < L: the queries and target columns of the positions in the last N columns
        only (every head), and ``{"older": {"queries": (O, D), "target_col": (O,)}}``: the ID head's at the older
        positions (see :meth:`_split_losses`)."""
        input_ids, targets = batch["input_ids"], batch["target_ids"]  # (B, L) each
        has_target = targets > 0  # (B, L)
        if self.config.softmax == "full":  # candidates are all items 0..N: ids are their own positions
            table = self.item_table()  # {head: (N+1, D)}
            hidden = self.encode(input_ids, table, input_ids)  # {head: (B, L, D)}
            target_col = targets[has_target] - 1  # (P,): column j scores item j + 1
            in_batch = {}
        else:
            padding = input_ids.new_zeros(1)  # item 0 is always candidates[0], never a column
            candidates = torch.unique(torch.cat([padding, input_ids.flatten(), targets.flatten()]))  # (C,) sorted
            table = self.item_table(candidates)  # {head: (C, D)}
            hidden = self.encode(input_ids, table, torch.searchsorted(candidates, input_ids))  # {head: (B, L, D)}
            target_col = torch.searchsorted(candidates, targets[has_target]) - 1  # (P,): column 0 = candidates[1]
            in_batch = losses.in_batch_inputs(self.popularity, candidates, input_ids, targets, has_target)
        columns = [table[h][1:] for h in self.heads]  # H x (C-1, D): padding (candidates[0] = 0) is no column
        recent = self.config.content_max_seq_len
        if 0 < recent < input_ids.shape[1]:  # content heads: the last `recent` columns only (full softmax)
            kept, old = has_target[:, -recent:], has_target[:, :-recent]  # (B, N), (B, L-N)
            queries = [hidden["id"][:, -recent:][kept]] + [hidden[h][kept] for h in self.modalities]  # H x (R, D)
            older = {"queries": hidden["id"][:, :-recent][old], "target_col": targets[:, :-recent][old] - 1}  # (O, D)
            return queries, columns, targets[:, -recent:][kept] - 1, {"older": older}
        queries = [hidden[h][has_target] for h in self.heads]  # H x (P, D)
        return queries, columns, target_col, in_batch

    # --- ranking -----------------------------------------------------------------------------------------------

    def _weights_key(self) -> tuple:
        """Changes whenever any parameter does (an optimiser step, a load): what the eval-mode caches are keyed on.
        The fusion weights (a buffer) are not in it: neither the item table nor the per-head queries depend on them."""
        return (self.training, *((id(t), t._version, t.device) for t in self.parameters()))

    @torch.no_grad()
    def ranking_table(self) -> dict[str, torch.Tensor]:
        """{head: (N+1, D)} for all items, for ranking (no gradient); built in chunks and, in eval mode, cached until
        any weight changes (the validation and evaluation loops call :meth:`user_vectors` once per user batch)."""
        key = self._weights_key()
        if self._table_cache is not None and self._table_cache[0] == key and not self.training:
            return self._table_cache[1]
        ids = torch.arange(self.num_items + 1, device=self.id_emb.weight.device)  # (N+1,)
        chunks = [self.item_table(ids[i : i + EVAL_CHUNK]) for i in range(0, len(ids), EVAL_CHUNK)]
        table = {h: torch.cat([c[h] for c in chunks]) for h in self.heads}  # {head: (N+1, D)}
        self._table_cache = (key, table) if not self.training else None
        return table

    def head_user_vectors(self, input_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        """(B, L) histories -> {head: (B, D)} per-head queries (the hidden state at the last position).

        In eval mode without gradients the result is kept per batch of histories until any weight changes: each
        epoch's validation ranks the same batches three times (before the fusion weights are chosen, while choosing
        them, after), and the per-head queries do not depend on those weights, so the user encoders run once."""
        cached = not self.training and not torch.is_grad_enabled()
        if cached:
            key = self._weights_key()
            if self._query_cache is None or self._query_cache[0] != key:
                self._query_cache = (key, {})
            content = hashlib.blake2b(input_ids.cpu().numpy().tobytes(), digest_size=16).digest()
            batch = (input_ids.dtype, tuple(input_ids.shape), content)  # the histories, whatever tensor holds them
            if batch in self._query_cache[1]:
                return self._query_cache[1][batch]
        hidden = self.encode(input_ids, self.ranking_table(), input_ids)  # {head: (B, L, D)}
        queries = {h: x[:, -1] for h, x in hidden.items()}  # {head: (B, D)}
        if cached and sum(len(q["id"]) for q in self._query_cache[1].values()) < QUERY_CACHE_USERS:
            self._query_cache[1][batch] = queries
        return queries

    def user_vectors(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(B, L) histories -> (B, H*D) ``concat(w_h * u_h)``: its inner product with an item row is the fused score."""
        queries = self.head_user_vectors(input_ids)  # {head: (B, D)}
        return torch.cat([self.head_weight[i] * queries[h] for i, h in enumerate(self.heads)], dim=1)  # (B, H*D)

    @property
    def head_weights(self) -> dict[str, float]:
        """The fusion weights in use, by head (sum 1)."""
        return {h: round(w, 6) for h, w in zip(self.heads, self.head_weight.tolist(), strict=True)}

    @contextmanager
    def single_head(self, head: str) -> Iterator[None]:
        """Rank with ``head``'s score alone (weights one-hot) inside the block: which head carries the fused score."""
        if head not in self.heads:
            raise ValueError(f"no head {head!r}; this model has {', '.join(self.heads)}")
        saved = self.head_weight.clone()
        self.head_weight.copy_(torch.tensor([float(h == head) for h in self.heads]))
        try:
            yield
        finally:
            self.head_weight.copy_(saved)

    @property
    def selects_on_validation(self) -> bool:
        """True with ``head_weights: validation``: :func:`pipeline.training.fit.fit` then calls
        ``select_on_validation``."""
        return self.config.head_weights == "validation"

    @torch.no_grad()
    def select_on_validation(
        self, input_ids: torch.Tensor, targets: torch.Tensor, exclude: torch.Tensor, batch_size: int
    ) -> dict[str, float]:
        """Extension ``head_weights: validation``: choose the fusion weights on the simplex grid (step
        :data:`WEIGHT_GRID_STEP`) that maximise valid NDCG@10 (full ranking, ``exclude`` masked); keep them.

        ``input_ids`` (U, L) the valid inputs, ``targets`` (U,) the VALID targets, ``exclude`` (U, N+1) bool the
        items each user may not be recommended (history; column 0 = padding). Called by
        :func:`pipeline.training.fit.fit` before each epoch's validation (so the best epoch is chosen with its best
        weights); with ``head_weights: fixed`` it changes nothing. Returns the weights.
        """
        if self.config.head_weights == "fixed":
            return self.head_weights
        was_training = self.training
        self.eval()
        table = self.ranking_table()  # {head: (N+1, D)}
        best = best_head_weights(self.head_user_vectors, table, input_ids, targets, exclude, batch_size)  # (H,)
        self.head_weight.copy_(best)
        self.train(was_training)
        return self.head_weights

    def item_vectors(self) -> torch.Tensor:
        """(N+1, H*D) ``concat(v_h)`` over heads (row 0 = padding, zeros)."""
        table = self.ranking_table()  # {head: (N+1, D)}
        return torch.cat([table[h] for h in self.heads], dim=1)  # (N+1, H*D)
