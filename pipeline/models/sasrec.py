"""SASRec (Kang & McAuley, "Self-Attentive Sequential Recommendation", ICDM 2018) trained with full cross-entropy.

The ID-only baseline. The architecture follows Sec. III of the paper: item + learned positional embedding
(III-A), causal self-attention blocks (III-B/C, see :mod:`pipeline.models.layers`), and a prediction layer that
scores items by the inner product with the *shared* item embedding (III-D). Training replaces the paper's binary
cross-entropy with one sampled negative by a softmax over all N items at every position that has a next item
(Klenitskiy & Vasilev, "Turning Dross Into Gold Loss: is BERT4Rec really better than SASRec?", RecSys 2023).

Positions count real items from the oldest one kept (0, 1, 2, ...), so a hidden state depends only on the items up
to it: the amount of left padding never changes an output, and ``max_seq_len`` bounds the position table.
"""

from __future__ import annotations

import torch
from torch import nn

from pipeline.catalog import ItemCatalog
from pipeline.models.configs import SASRecConfig
from pipeline.models.layers import (
    CausalTransformer,
    causal_padding_mask,
    full_cross_entropy,
    init_weights,
    left_padded_positions,
)
from pipeline.schema import check

FFN_MULTIPLIER = 4  # feed-forward width = 4 x hidden_dim
INIT_STD = 0.02


class SASRec(nn.Module):
    """Next-item prediction from item IDs only; scores are ``user_vectors(x) @ item_vectors().T``."""

    def __init__(self, config: SASRecConfig, catalog: ItemCatalog, max_seq_len: int | None = None) -> None:
        """``max_seq_len`` sizes the position table (``data.max_seq_len``, the checkpoint's); None = the catalog's."""
        super().__init__()
        check(config)  # types, ranges and rules of its config (pipeline.models.configs), named model.<key>
        self.config = config
        self.num_items = catalog.num_items
        self.max_seq_len = catalog.max_seq_len if max_seq_len is None else max_seq_len
        self.item_emb = nn.Embedding(catalog.num_items + 1, config.hidden_dim, padding_idx=0)  # (N+1, D)
        self.pos_emb = nn.Embedding(self.max_seq_len, config.hidden_dim)  # (L_max, D)
        self.emb_norm = nn.LayerNorm(config.hidden_dim)
        self.emb_dropout = nn.Dropout(config.dropout)
        self.encoder = CausalTransformer(
            config.num_layers,
            config.hidden_dim,
            config.num_heads,
            config.dropout,
            ffn_dim=FFN_MULTIPLIER * config.hidden_dim,
        )
        self.apply(lambda m: init_weights(m, INIT_STD))

    def encode(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(B, L) left-padded item ids -> (B, L, D) hidden states; position t sees items at positions <= t."""
        positions = left_padded_positions(input_ids, self.max_seq_len)  # (B, L): 0 = oldest real item
        x = self.item_emb(input_ids) + self.pos_emb(positions)  # (B, L, D)
        x = self.emb_dropout(self.emb_norm(x))  # (B, L, D)
        return self.encoder(x, causal_padding_mask(input_ids))  # (B, L, D)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Full-softmax cross-entropy over items 1..N at every position whose ``target_ids`` is > 0."""
        hidden = self.encode(batch["input_ids"])  # (B, L, D)
        targets = batch["target_ids"]  # (B, L)
        has_target = targets > 0  # (B, L)
        h = hidden[has_target]  # (P, D): only positions with a next item reach the output layer
        # logits h @ item_emb[1:].T (P, N), column j scoring item j + 1 (padding excluded), built in chunks
        ce = full_cross_entropy(h, self.item_emb.weight[1:], targets[has_target] - 1)
        return {"loss": ce, "ce": ce}

    def user_vectors(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(B, L) left-padded histories -> (B, D): the hidden state of the most recent item."""
        return self.encode(input_ids)[:, -1]  # (B, D)

    def item_vectors(self) -> torch.Tensor:
        """(N+1, D) the output layer, tied to the input item embedding (row 0 = padding)."""
        return self.item_emb.weight  # (N+1, D)
