"""SASRec with early fusion: the simplest multimodal model, control (d) of issue 21.

:mod:`pipeline.models.sasrec` with one change, at the item embedding (paper Sec. III-A): an item's vector is its ID
embedding plus a learned linear projection of each frozen pooled content feature (text, image),

    e_i = id_emb[i] + sum_m (W_m f_{i,m} + b_m  if item i has modality m  else  missing_m),

used both as the transformer's input and, tied, as the output layer (one head, full-softmax cross-entropy). A
missing modality (``catalog.masks[m]`` False) is the learned vector ``missing_m``, as in ODMT, never a zero
feature. A modality switched off in ``embed`` (``embed.<m>.name: none``) is left out; at least one is needed.
A multimodal architecture claims value for its design only where it also beats this model.
"""

from __future__ import annotations

import torch
from torch import nn

from pipeline.catalog import ItemCatalog
from pipeline.models.configs import SASRecFusionConfig
from pipeline.models.layers import (
    CausalTransformer,
    causal_padding_mask,
    full_cross_entropy,
    init_weights,
    left_padded_positions,
)
from pipeline.schema import check

MODALITIES: tuple[str, ...] = ("text", "image")
FFN_MULTIPLIER = 4  # feed-forward width = 4 x hidden_dim (as SASRec)
INIT_STD = 0.02


class SASRecFusion(nn.Module):
    """SASRec whose (tied) item table adds projected frozen content features to the ID embedding."""

    def __init__(self, config: SASRecFusionConfig, catalog: ItemCatalog, max_seq_len: int | None = None) -> None:
        """``max_seq_len`` sizes the position table (``data.max_seq_len``, the checkpoint's); None = the catalog's."""
        super().__init__()
        check(config)  # types, ranges and rules of its config (pipeline.models.configs), named model.<key>
        self.modalities = tuple(m for m in MODALITIES if m in catalog.features)
        if not self.modalities:
            raise ValueError(
                "sasrec_fusion needs text or image features but the catalog has none; set embed.text.name / "
                "embed.image.name and run `dvc repro embed` (or use model.name: sasrec)"
            )
        self.config = config
        self.num_items = catalog.num_items
        self.max_seq_len = catalog.max_seq_len if max_seq_len is None else max_seq_len
        dim = config.hidden_dim
        for m in self.modalities:  # content is data, not weights: non-persistent buffers, out of checkpoints
            pooled, present = catalog.features[m], catalog.masks.get(m)
            if present is None or pooled.shape[0] != catalog.num_items + 1 or present.shape != (pooled.shape[0],):
                raise ValueError(
                    f"{m} features of {tuple(pooled.shape)} need a ({catalog.num_items + 1},) mask (items + padding "
                    "row); load them with load_catalog and run `dvc repro embed`"
                )
            self.register_buffer(f"{m}_pooled", pooled.float(), persistent=False)  # (N+1, d_m)
            self.register_buffer(f"{m}_present", present.bool(), persistent=False)  # (N+1,)
        self.item_emb = nn.Embedding(catalog.num_items + 1, dim, padding_idx=0)  # (N+1, D)
        self.proj = nn.ModuleDict({m: nn.Linear(catalog.features[m].shape[1], dim) for m in self.modalities})
        self.missing = nn.ParameterDict({m: nn.Parameter(torch.zeros(dim)) for m in self.modalities})  # (D,) each
        self.pos_emb = nn.Embedding(self.max_seq_len, dim)  # (L_max, D)
        self.emb_norm = nn.LayerNorm(dim)
        self.emb_dropout = nn.Dropout(config.dropout)
        self.encoder = CausalTransformer(
            config.num_layers, dim, config.num_heads, config.dropout, ffn_dim=FFN_MULTIPLIER * dim
        )
        self.apply(lambda m: init_weights(m, INIT_STD))
        for param in self.missing.values():  # free vectors: the embeddings' init
            nn.init.normal_(param, std=INIT_STD)

    def item_table(self) -> torch.Tensor:
        """(N+1, D) fused item vectors; row 0 (padding) is zero."""
        table = self.item_emb.weight  # (N+1, D)
        for m in self.modalities:
            projected = self.proj[m](getattr(self, f"{m}_pooled"))  # (N+1, D)
            table = table + torch.where(getattr(self, f"{m}_present")[:, None], projected, self.missing[m])  # (N+1, D)
        real = torch.ones_like(table[:, :1])  # (N+1, 1)
        real[0] = 0.0
        return table * real  # (N+1, D)

    def encode(self, input_ids: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        """(B, L) left-padded item ids -> (B, L, D) hidden states; position t sees items at positions <= t."""
        positions = left_padded_positions(input_ids, self.max_seq_len)  # (B, L): 0 = oldest real item
        x = table[input_ids] + self.pos_emb(positions)  # (B, L, D)
        x = self.emb_dropout(self.emb_norm(x))  # (B, L, D)
        return self.encoder(x, causal_padding_mask(input_ids))  # (B, L, D)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Full-softmax cross-entropy over items 1..N at every position whose ``target_ids`` is > 0."""
        table = self.item_table()  # (N+1, D)
        hidden = self.encode(batch["input_ids"], table)  # (B, L, D)
        targets = batch["target_ids"]  # (B, L)
        has_target = targets > 0  # (B, L)
        ce = full_cross_entropy(hidden[has_target], table[1:], targets[has_target] - 1)  # logits (P, N), chunked
        return {"loss": ce, "ce": ce}

    def user_vectors(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(B, L) left-padded histories -> (B, D): the hidden state of the most recent item."""
        return self.encode(input_ids, self.item_table())[:, -1]  # (B, D)

    def item_vectors(self) -> torch.Tensor:
        """(N+1, D) the output layer, tied to the fused input table (row 0 = padding)."""
        return self.item_table()  # (N+1, D)
