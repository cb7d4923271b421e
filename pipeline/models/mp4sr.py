"""MP4SR (Zhang, Zhou, Zeng, Shen, "Multimodal Pre-training for Sequential Recommendation", arXiv 2303.11879,
ACM TORS 2024; v1 titled MSM4SR): a multimodal mixup sequence encoder pre-trained with contrastive losses, then
fine-tuned with item-ID embeddings.

The paper's parts, one module or function each:

- **Multimodal feature extraction**: every item has a frozen text feature and a frozen image feature
  (``catalog.features``); each modality goes through its own :class:`MoEAdaptor` (a softmax-gated mixture of
  ``Linear + LayerNorm`` experts) into the model width. An item that lacks a modality (``catalog.masks``) gets a
  learned "missing" vector instead of an adapted zero row.
- **M2SE backbone** (:class:`M2SE`): one causal transformer shared by the user's text-feature sequence and
  image-feature sequence; :class:`ComplementaryMixup` swaps the two modalities at random positions of the two
  sequences during pre-training (padding is never swapped).
- **Pre-training tasks**: random item drop (:func:`random_item_drop`), then for each modality sequence a
  next-item InfoNCE against the in-batch target items (:func:`info_nce`; same-target false negatives removed), plus
  a symmetric NT-Xent between the text-sequence and image-sequence vectors of the same user (:func:`nt_xent`):
  ``loss = NI(text) + NI(image) + cm_weight * CM`` with temperature ``tau``.
- **Fine-tuning**: item-ID embeddings are added to the sequence inputs and to the candidate items; no
  mixup or item drop; full-softmax cross-entropy on ``(cos(h_text, e_text) + cos(h_image, e_image)) / tau``.

Phases are data (``set_phase("pretrain" | "train")``, called by :func:`pipeline.training.fit.fit`); "train" is
fine-tuning and is the default, so a model rebuilt from a checkpoint scores like the fine-tuned model.

Ranking is one inner product: ``user_vectors`` is ``[norm(h_text), norm(h_image)] / tau`` and ``item_vectors`` is
``[norm(e_text), norm(e_image)]``, so ``user @ item.T`` equals the fine-tuning logits. In the "pretrain" phase the
same layout without ID embeddings gives the pre-trained model's ranking (used for validation while pre-training).

Cold start: an item without training interactions (``catalog.popularity == 0``) has no learned ID embedding: its ID
row is zero, it is left out of the fine-tuning softmax (it would only ever be pushed down as a negative), and it is
ranked through its content features alone. This is what "new to the system" means for a content-based model.

Differences from the authors' RecBole code (lzz0007/MP4SR), each deliberate:

- The frozen item features are pooled vectors from the ``embed`` stage (no sentence-level attention pooling). The
  image feature is the image embedding by default; ``embed.image_words`` switches on the authors' "CLIP words"
  (the mean text feature of each image's top-k CLIP-matched words, :mod:`pipeline.features.clip_words`).
- Every position of a training sequence is a (prefix, next item) pair (SASRec's scheme, as in the fine-tuning
  loss), instead of one augmented prefix per sample. Their in-batch next-item targets are de-duplicated, which
  removes the same-target false negatives by construction; the NT-Xent uses each user's last position.
- False negatives are removed from the softmax (logit -inf); the authors' code sets their logit to 0, which still
  counts them as exp(0) = 1 in the denominator.
- The transformer is the pre-LN stack of :mod:`pipeline.models.layers` shared with SASRec, without attention-weight
  dropout (see ``pipeline.models.layers``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.catalog import ItemCatalog
from pipeline.models.configs import MP4SRConfig
from pipeline.models.layers import (
    CausalTransformer,
    causal_padding_mask,
    full_cross_entropy,
    init_weights,
    left_padded_positions,
)
from pipeline.schema import check

FFN_MULTIPLIER = 4  # feed-forward width = 4 x hidden_dim (paper: hidden 64, inner 256)
INIT_STD = 0.02
COLD_ID_TEMPERATURE = 0.1  # softmax temperature over the cosine similarities of a cold item's content neighbours
COLD_ID_CHUNK = 4096  # cold items scored against the warm ones at once (bounds the (chunk, S) similarity matrix)
MODALITIES: tuple[str, str] = ("text", "image")
PHASES: tuple[str, ...] = ("pretrain", "train")
# cold_offset: validation searches these offsets (logits are cosines / tau, at most 2 / 0.07 ~ 28.6 apart)
COLD_OFFSET_GRID: tuple[float, ...] = tuple(sorted((x / 4 for x in range(-40, 121)), key=abs))  # -10..30, step 0.25

# ---------------------------------------------------------------------------------------------------------------
# Pre-training losses
# ---------------------------------------------------------------------------------------------------------------


def info_nce(
    query: torch.Tensor,
    keys: torch.Tensor,
    positive: torch.Tensor,
    temperature: float,
    query_items: torch.Tensor | None = None,
    key_items: torch.Tensor | None = None,
) -> torch.Tensor:
    """Sequence-to-item InfoNCE (next-item prediction) without same-target false negatives; mean over P queries.

    ``query`` (P, D) and ``keys`` (C, D) (L2-normalised by the caller, so logits are cosines / tau); ``positive``
    (P,) int64 is the column of each query's own target. ``query_items`` (P,) and ``key_items`` (C,) are item ids:
    a key with the same item as the query's target but in another column (another sequence in the batch that
    shares the next item) is not a negative, and its logit is removed from the softmax. Leave them None when the
    keys are distinct items (then no false negative can exist and the (P, C) mask is not built).
    """
    if query_items is None or key_items is None:
        return full_cross_entropy(query / temperature, keys, positive)  # (P, C) logits built in chunks
    logits = (query / temperature) @ keys.T  # (P, C)
    false_negative = query_items[:, None] == key_items[None, :]  # (P, C)
    rows = torch.arange(len(query), device=query.device)  # (P,)
    false_negative[rows, positive] = False
    logits = logits.masked_fill(false_negative, float("-inf"))  # (P, C)
    return F.cross_entropy(logits, positive)


def nt_xent(view_a: torch.Tensor, view_b: torch.Tensor, items: torch.Tensor | None, temperature: float) -> torch.Tensor:
    """Sequence-to-sequence contrast: symmetric NT-Xent (SimCLR) between two views of B users; mean over 2B anchors.

    ``view_a``, ``view_b`` (B, D), L2-normalised by the caller. For anchor ``a_i`` the positive is ``b_i`` and the
    negatives are ``b_j`` and ``a_j`` (j != i), and symmetrically for ``b_i``. ``items`` (B,) optional: users whose
    sequences share the next item are not negatives of each other (false negatives removed, as in the authors' code).
    Swapping the views gives the same loss.
    """
    batch = len(view_a)
    z = torch.cat([view_a, view_b])  # (2B, D)
    logits = z @ z.T / temperature  # (2B, 2B)
    user = torch.arange(batch, device=z.device).repeat(2)  # (2B,): the user each row belongs to
    same_user = user[:, None] == user[None, :]  # (2B, 2B)
    eye = torch.eye(2 * batch, dtype=torch.bool, device=z.device)  # (2B, 2B)
    excluded = eye.clone()  # an anchor is never its own candidate
    if items is not None:
        both = items.repeat(2)  # (2B,)
        excluded |= (both[:, None] == both[None, :]) & ~same_user  # (2B, 2B) false negatives
    logits = logits.masked_fill(excluded, float("-inf"))  # (2B, 2B)
    positive = (torch.arange(2 * batch, device=z.device) + batch) % (2 * batch)  # (2B,): a_i <-> b_i
    return F.cross_entropy(logits, positive)


# ---------------------------------------------------------------------------------------------------------------
# Modules
# ---------------------------------------------------------------------------------------------------------------


class MoEAdaptor(nn.Module):
    """MoE-enhanced adaptor of one modality: ``sum_e g_e(x) * LN_e(Dropout(W_e x + b_e))``.

    ``g(x) = softmax(x W_gate)`` (the gate starts at zero, so every expert is weighted equally at first). The E
    experts are computed as one (d_in, E * D) matrix product; each has its own LayerNorm scale and shift.
    """

    def __init__(self, in_dim: int, out_dim: int, num_experts: int, dropout: float) -> None:
        super().__init__()
        self.num_experts, self.out_dim = num_experts, out_dim
        self.experts = nn.Linear(in_dim, num_experts * out_dim)
        self.norm_weight = nn.Parameter(torch.ones(num_experts, out_dim))  # (E, D)
        self.norm_bias = nn.Parameter(torch.zeros(num_experts, out_dim))  # (E, D)
        self.gate = nn.Linear(in_dim, num_experts, bias=False)
        self.dropout = nn.Dropout(dropout)
        nn.init.normal_(self.experts.weight, std=INIT_STD)
        nn.init.zeros_(self.experts.bias)
        nn.init.zeros_(self.gate.weight)

    def gates(self, x: torch.Tensor) -> torch.Tensor:
        """(..., d_in) -> (..., E) softmax gate weights (each row sums to 1)."""
        return F.softmax(self.gate(x), dim=-1)  # (..., E)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.experts(x).unflatten(-1, (self.num_experts, self.out_dim))  # (..., E, D)
        h = F.layer_norm(self.dropout(h), (self.out_dim,)) * self.norm_weight + self.norm_bias  # (..., E, D)
        return (self.gates(x).unsqueeze(-1) * h).sum(dim=-2)  # (..., D)


class ComplementaryMixup(nn.Module):
    """Complementary sequence mixup (paper: M2SE): swap the text and image inputs of the same position of the two
    sequences with probability ``p`` drawn once per batch from U(0, ``max_prob``); padding positions never swap.

    Active in training mode only; in eval mode (and with ``max_prob = 0``) the sequences pass through unchanged.
    """

    def __init__(self, max_prob: float) -> None:
        super().__init__()
        self.max_prob = max_prob

    def forward(
        self, text: torch.Tensor, image: torch.Tensor, input_ids: torch.Tensor, prob: float | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, L, D) text and image sequences, (B, L) ids -> mixed text, mixed image, (B, L) bool swap mask.

        ``prob`` fixes the swap probability (tests); None draws it from U(0, max_prob).
        """
        if not self.training or (prob is None and self.max_prob == 0.0):
            return text, image, torch.zeros_like(input_ids, dtype=torch.bool)
        p = float(torch.rand(()) * self.max_prob) if prob is None else prob
        swap = (torch.rand(input_ids.shape, device=input_ids.device) < p) & (input_ids != 0)  # (B, L)
        s = swap.unsqueeze(-1)  # (B, L, 1)
        return torch.where(s, image, text), torch.where(s, text, image), swap  # (B, L, D), (B, L, D), (B, L)


def random_item_drop(
    input_ids: torch.Tensor, target_ids: torch.Tensor, max_prob: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pre-training augmentation: drop each item of the sequence with p ~ U(0, max_prob), then re-pack.

    ``input_ids`` / ``target_ids`` (B, L) are the left-padded ``s[:-1]`` / ``s[1:]`` of each training sequence
    ``s`` (see :class:`pipeline.data.dataset.NextItemDataset`). The sequence ``s`` (B, L+1) is rebuilt, items are
    dropped (never the last two, so every row keeps one (input, target) pair), the survivors are packed to the right,
    and new (input, target) pairs are cut from the result. Returns (B, L) input and target ids.
    """
    if max_prob == 0.0:
        return input_ids, target_ids
    seq = torch.cat([input_ids, target_ids[:, -1:]], dim=1)  # (B, L+1)
    width = seq.shape[1]
    p = float(torch.rand(()) * max_prob)
    real = seq != 0  # (B, L+1)
    drop = (torch.rand(seq.shape, device=seq.device) < p) & real  # (B, L+1)
    drop[:, -2:] = False
    keep = real & ~drop  # (B, L+1)
    kept_from_here = keep.flip(1).cumsum(1).flip(1)  # (B, L+1): kept items at this position or later
    column = torch.where(keep, width + 1 - kept_from_here, 0)  # (B, L+1): 1..L+1 packed right, 0 = discard
    packed = torch.zeros(seq.shape[0], width + 1, dtype=seq.dtype, device=seq.device)  # (B, L+2)
    packed.scatter_(1, column, torch.where(keep, seq, 0))  # dropped items all write 0 into column 0
    packed = packed[:, 1:]  # (B, L+1)
    inputs = packed[:, :-1]  # (B, L)
    targets = packed[:, 1:] * (inputs != 0)  # (B, L): no target where the input is padding
    return inputs, targets


class M2SE(nn.Module):
    """Multimodal Mixup Sequence Encoder backbone (paper: M2SE): input + position -> LayerNorm -> dropout -> causal
    transformer. One instance encodes both modality sequences (shared weights), batched into one call.

    Positions count real items from the oldest one kept, so extra left padding never changes an output.
    """

    def __init__(self, config: MP4SRConfig, max_seq_len: int) -> None:
        super().__init__()
        self.max_seq_len = max_seq_len
        self.pos_emb = nn.Embedding(max_seq_len, config.hidden_dim)  # (L_max, D)
        self.emb_norm = nn.LayerNorm(config.hidden_dim)
        self.emb_dropout = nn.Dropout(config.dropout)
        self.encoder = CausalTransformer(
            config.num_layers,
            config.hidden_dim,
            config.num_heads,
            config.dropout,
            ffn_dim=FFN_MULTIPLIER * config.hidden_dim,
        )

    def forward(self, sequences: tuple[torch.Tensor, ...], input_ids: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """M sequences of (B, L, D) inputs over the same (B, L) ids -> M (B, L, D) hidden states."""
        count = len(sequences)
        positions = left_padded_positions(input_ids, self.max_seq_len)  # (B, L): 0 = oldest real item
        x = torch.cat(sequences) + self.pos_emb(positions).repeat(count, 1, 1)  # (M*B, L, D)
        x = self.emb_dropout(self.emb_norm(x))  # (M*B, L, D)
        mask = causal_padding_mask(input_ids).repeat(count, 1, 1, 1)  # (M*B, 1, L, L)
        return self.encoder(x, mask).chunk(count)  # M x (B, L, D)


class MP4SR(nn.Module):
    """MP4SR: MoE-adapted text/image item features, the shared M2SE backbone, two training phases."""

    def __init__(self, config: MP4SRConfig, catalog: ItemCatalog, max_seq_len: int | None = None) -> None:
        """``max_seq_len`` sizes M2SE's position table (``data.max_seq_len`` or the checkpoint's; None = the
        catalog's)."""
        super().__init__()
        check(config)  # types, ranges and rules of its config (pipeline.models.configs), named model.<key>
        self.config = config
        self.num_items = catalog.num_items
        self.max_seq_len = catalog.max_seq_len if max_seq_len is None else max_seq_len
        self.phase = "train"
        rows = catalog.num_items + 1
        adaptors, missing = {}, {}
        for modality in MODALITIES:
            if modality not in catalog.features:
                raise ValueError(
                    f"MP4SR needs the `{modality}` item features but the catalog has only "
                    f"{sorted(catalog.features)}; set embed.{modality}.name to an encoder and run `dvc repro embed`"
                )
            feats = catalog.features[modality]
            if feats.shape[0] != rows:
                raise ValueError(
                    f"features/{modality}.npy has {feats.shape[0]} rows; expected {rows} (items + padding row). "
                    "Run `dvc repro embed`."
                )
            has = catalog.masks.get(modality, torch.ones(rows, dtype=torch.bool)).bool().clone()  # (N+1,)
            has[0] = False
            # Frozen inputs, rebuilt from the catalog on load (not saved in checkpoints).
            self.register_buffer(f"{modality}_features", feats.float(), persistent=False)  # (N+1, d_m)
            self.register_buffer(f"{modality}_present", has, persistent=False)  # (N+1,)
            adaptors[modality] = MoEAdaptor(
                feats.shape[1], config.hidden_dim, config.num_experts, config.adaptor_dropout
            )
            missing[modality] = nn.Parameter(torch.zeros(config.hidden_dim))  # (D,) stands in for a missing modality
        self.adaptors = nn.ModuleDict(adaptors)
        self.missing = nn.ParameterDict(missing)
        seen = catalog.popularity.reshape(-1)[:rows] > 0  # (N+1,) items with training interactions
        seen[0] = False
        self.register_buffer("seen", seen.clone(), persistent=False)
        self.register_buffer("seen_items", seen.nonzero().squeeze(1), persistent=False)  # (S,) softmax columns
        self.register_buffer("seen_column", seen.cumsum(0) - 1, persistent=False)  # (N+1,) item -> its column
        self.id_emb = nn.Embedding(rows, config.hidden_dim, padding_idx=0)  # (N+1, D), fine-tuning only
        self.backbone = M2SE(config, self.max_seq_len)
        self.mixup = ComplementaryMixup(config.mixup_max_prob)
        self.backbone.apply(lambda m: init_weights(m, INIT_STD))
        init_weights(self.id_emb, INIT_STD)
        if config.cold_offset == "validation":  # only then: checkpoints without it load unchanged
            self.register_buffer("cold_offset", torch.zeros(()))

    def set_phase(self, phase: str) -> None:
        """ "pretrain" (contrastive pre-training) or "train" (fine-tuning, the default)."""
        if phase not in PHASES:
            raise ValueError(f"MP4SR phase must be one of {PHASES}, got {phase!r}")
        self.phase = phase
        self.backbone.requires_grad_(not (phase == "train" and self.config.freeze_transformer))

    @property
    def selects_on_validation(self) -> bool:
        """True with ``cold_offset: validation`` while fine-tuning: :func:`pipeline.training.fit.fit` then calls
        :meth:`select_on_validation` after every epoch."""
        return self.config.cold_offset == "validation" and self.phase == "train"

    @torch.no_grad()
    def select_on_validation(
        self, input_ids: torch.Tensor, targets: torch.Tensor, exclude: torch.Tensor, batch_size: int
    ) -> dict[str, float]:
        """Extension ``cold_offset: validation``: the offset of :data:`COLD_OFFSET_GRID` (smallest magnitude first,
        so ties keep the smaller one) that maximises valid NDCG@10 with ``exclude`` (U, N+1) masked, a user with a
        cold target counting ``cold_offset_weight`` times; kept in the ``cold_offset`` buffer. ``targets`` are the
        VALID targets; test targets are never passed here."""
        was_training = self.training
        self.eval()
        self.cold_offset.zero_()
        grid = torch.tensor(COLD_OFFSET_GRID, dtype=torch.float32, device=input_ids.device)  # (G,)
        tables = self._item_tables()
        items = self._candidates(tables)  # (N+1, 2D)
        cold = (~self.seen).float()  # (N+1,)
        gains = torch.zeros(len(grid), dtype=torch.float64)
        for start in range(0, len(input_ids), batch_size):
            ids = input_ids[start : start + batch_size]  # (b, L)
            scores = self._queries(ids, tables) @ items.T  # (b, N+1)
            batch_targets = targets[start : start + batch_size]  # (b,)
            weights = 1.0 + (self.config.cold_offset_weight - 1.0) * cold[batch_targets].double()  # (b,)
            gains += ndcg_at_10_per_offset(
                scores, cold, batch_targets, exclude[start : start + batch_size], grid, weights
            )
        best = int(torch.argmax(gains))
        self.cold_offset.fill_(float(grid[best]))
        self.train(was_training)
        return {"cold_offset": float(self.cold_offset)}

    @property
    def _uses_ids(self) -> bool:
        return self.phase == "train" and self.config.finetune_id_embeddings

    def content_tables(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Adapted (N+1, D) text and image tables; missing modality -> learned vector; padding row 0 -> zeros."""
        tables = []
        for modality in MODALITIES:
            present = getattr(self, f"{modality}_present")  # (N+1,)
            adapted = self.adaptors[modality](getattr(self, f"{modality}_features"))  # (N+1, D)
            table = torch.where(present[:, None], adapted, self.missing[modality])  # (N+1, D)
            not_padding = torch.ones_like(present)
            not_padding[0] = False
            tables.append(table * not_padding[:, None])  # (N+1, D)
        return tables[0], tables[1]

    def id_table(self) -> torch.Tensor:
        """(N+1, D) ID embeddings; zero for padding and for items without training interactions (cold items), and
        while fine-tuning with ``id_dropout`` > 0 for a random ``id_dropout`` share of the items (one draw per call,
        i.e. per batch, shared by inputs and candidates)."""
        keep = self.seen  # (N+1,)
        if self.training and self.config.id_dropout > 0:
            keep = keep & (torch.rand(keep.shape, device=keep.device) >= self.config.id_dropout)
        return self.id_emb.weight * keep[:, None]  # (N+1, D)

    def _item_tables(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-phase input/candidate tables: content (pre-training) or content + ID (fine-tuning)."""
        text, image = self.content_tables()  # 2 x (N+1, D)
        if self._uses_ids:
            ids = self.id_table()  # (N+1, D)
            if not self.training and self.config.cold_id_neighbours > 0:
                ids = self.neighbour_ids_for_cold_items(ids, text, image)  # (N+1, D)
            text, image = text + ids, image + ids  # 2 x (N+1, D)
        return text, image

    def neighbour_ids_for_cold_items(self, ids: torch.Tensor, text: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """(N+1, D) ID rows with each cold item's (zero) row replaced by the softmax-weighted (temperature
        ``COLD_ID_TEMPERATURE``) mean ID row of its ``cold_id_neighbours`` warm items of most similar content
        (cosine of ``[norm(text), norm(image)]``), so that it is ranked on the same scale as the warm items."""
        cold = ~self.seen  # (N+1,)
        cold[0] = False
        cold_items = cold.nonzero().squeeze(1)  # (Nc,)
        if len(cold_items) == 0 or len(self.seen_items) == 0:
            return ids
        content = F.normalize(torch.cat([F.normalize(text, dim=-1), F.normalize(image, dim=-1)], dim=-1), dim=-1)
        warm_content, warm_ids = content[self.seen_items], ids[self.seen_items]  # (S, 2D), (S, D)
        k = min(self.config.cold_id_neighbours, len(self.seen_items))
        rows = []
        for chunk in cold_items.split(COLD_ID_CHUNK):
            top = (content[chunk] @ warm_content.T).topk(k, dim=1)  # values, indices: (c, k)
            weights = torch.softmax(top.values / COLD_ID_TEMPERATURE, dim=1)  # (c, k)
            rows.append((weights[:, :, None] * warm_ids[top.indices]).sum(dim=1))  # (c, D)
        return ids.index_put((cold_items,), torch.cat(rows))  # (N+1, D)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if self.phase == "pretrain":
            return self._pretrain_losses(batch["input_ids"], batch["target_ids"])
        return self._finetune_loss(batch["input_ids"], batch["target_ids"])

    def _pretrain_losses(self, input_ids: torch.Tensor, target_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        """Pre-training: item drop, mixup, NI(text) + NI(image) + cm_weight * CM."""
        if self.training:
            input_ids, target_ids = random_item_drop(input_ids, target_ids, self.config.item_drop_max)  # (B, L)
        text_tab, image_tab = self._item_tables()  # 2 x (N+1, D)
        text_seq, image_seq, _ = self.mixup(text_tab[input_ids], image_tab[input_ids], input_ids)  # 2 x (B, L, D)
        h_text, h_image = self.backbone((text_seq, image_seq), input_ids)  # 2 x (B, L, D)
        has_target = target_ids > 0  # (B, L)
        targets = target_ids[has_target]  # (P,)
        candidates, positive = torch.unique(targets, return_inverse=True)  # (C,), (P,): in-batch targets, deduped
        tau = self.config.temperature
        losses = {}
        for name, h, table in (("ni_text", h_text, text_tab), ("ni_image", h_image, image_tab)):
            query = F.normalize(h[has_target], dim=-1)  # (P, D)
            keys = F.normalize(table[candidates], dim=-1)  # (C, D)
            losses[name] = info_nce(query, keys, positive, tau)  # candidates are distinct: no false negatives
        user_text = F.normalize(h_text[:, -1], dim=-1)  # (B, D): each user's whole training sequence
        user_image = F.normalize(h_image[:, -1], dim=-1)  # (B, D)
        losses["cm"] = nt_xent(user_text, user_image, target_ids[:, -1], tau)
        loss = losses["ni_text"] + losses["ni_image"] + self.config.cm_weight * losses["cm"]
        return {"loss": loss, **losses}

    def _finetune_loss(self, input_ids: torch.Tensor, target_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        """Fine-tuning: full-softmax cross-entropy over the items with training interactions, at every target."""
        tables = self._item_tables()  # 2 x (N+1, D)
        has_target = target_ids > 0  # (B, L)
        targets = target_ids[has_target]  # (P,)
        if not bool(self.seen[targets].all()):
            raise ValueError("a training target has no training interactions; the catalog does not match the split")
        query = self._queries(input_ids, tables, has_target)  # (P, 2D)
        items = self._candidates(tables)[self.seen_items]  # (S, 2D): seen items only, cold items are no negatives
        ce = full_cross_entropy(query, items, self.seen_column[targets])  # softmax over the (P, S) logits
        return {"loss": ce, "ce": ce}

    def _queries(
        self, input_ids: torch.Tensor, tables: tuple[torch.Tensor, torch.Tensor], where: torch.Tensor | None = None
    ) -> torch.Tensor:
        """[norm(h_text), norm(h_image)] / tau at the positions ``where`` (B, L) bool (None: last position)."""
        text_tab, image_tab = tables  # 2 x (N+1, D)
        h_text, h_image = self.backbone((text_tab[input_ids], image_tab[input_ids]), input_ids)  # 2 x (B, L, D)
        if where is None:
            h_text, h_image = h_text[:, -1], h_image[:, -1]  # 2 x (B, D)
        else:
            h_text, h_image = h_text[where], h_image[where]  # 2 x (P, D)
        query = torch.cat([F.normalize(h_text, dim=-1), F.normalize(h_image, dim=-1)], dim=-1)  # (B or P, 2D)
        return query / self.config.temperature

    @staticmethod
    def _candidates(tables: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        text_tab, image_tab = tables  # 2 x (N+1, D)
        return torch.cat([F.normalize(text_tab, dim=-1), F.normalize(image_tab, dim=-1)], dim=-1)  # (N+1, 2D)

    def user_vectors(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(B, L) left-padded histories -> (B, 2D) ``[norm(h_text), norm(h_image)] / tau`` at the last position;
        with ``cold_offset: validation`` a last column of ones (B, 2D+1) picks up the items' offset column."""
        queries = self._queries(input_ids, self._item_tables())  # (B, 2D)
        if hasattr(self, "cold_offset"):
            queries = torch.cat([queries, torch.ones_like(queries[:, :1])], dim=1)  # (B, 2D+1)
        return queries

    def item_vectors(self) -> torch.Tensor:
        """(N+1, 2D) ``[norm(e_text), norm(e_image)]`` (with ID embeddings when fine-tuning); row 0 = zeros; with
        ``cold_offset: validation`` (N+1, 2D+1), the last column = the offset on items without training
        interactions (0 elsewhere and in pre-training)."""
        items = self._candidates(self._item_tables())  # (N+1, 2D)
        if hasattr(self, "cold_offset"):
            cold = (~self.seen).float() * (self.cold_offset if self.phase == "train" else 0.0)  # (N+1,)
            cold[0] = 0.0
            items = torch.cat([items, cold[:, None]], dim=1)  # (N+1, 2D+1)
        return items


def ndcg_at_10_per_offset(
    scores: torch.Tensor,
    cold: torch.Tensor,
    targets: torch.Tensor,
    exclude: torch.Tensor,
    grid: torch.Tensor,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Summed (``weights`` (U,): weighted) NDCG@10 of ``scores + b * cold`` for every offset ``b`` of ``grid`` (G,).

    ``scores`` (U, N+1), ``cold`` (N+1,) 1.0 for items without training interactions, ``targets`` (U,), ``exclude``
    (U, N+1) bool items not ranked (the target never is). The target's rank is the number of ranked items scoring
    strictly higher; NDCG@10 = 1 / log2(rank + 2) when rank < 10. Returns (G,) float64.
    """
    rows = torch.arange(len(targets), device=targets.device)  # (U,)
    excluded = exclude.clone()
    excluded[rows, targets] = False
    margin = scores - scores[rows, targets][:, None]  # (U, N+1)
    cold_margin = cold[None, :] - cold[targets][:, None]  # (U, N+1): -1, 0 or 1
    out = torch.zeros(len(grid), dtype=torch.float64)
    for g, offset in enumerate(grid.tolist()):
        higher = ((margin + offset * cold_margin) > 0) & ~excluded  # (U, N+1)
        rank = higher.sum(dim=1)  # (U,)
        gain = torch.where(rank < 10, 1.0 / torch.log2(rank.double() + 2.0), 0.0)  # (U,)
        out[g] = (gain if weights is None else gain * weights).sum()
    return out
