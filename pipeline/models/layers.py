"""Transformer parts that every sequential model here shares: attention masks, a block, a stack, weight init.

Pre-LN, not the post-LN of "Attention Is All You Need": each sub-layer reads ``LayerNorm(x)`` and adds its output
to the un-normalised residual stream (GPT-2 / nanoGPT), and the stack ends with one final LayerNorm. SASRec's
reference code (Kang & McAuley, ICDM 2018, Sec. III-B/C, and its TensorFlow release) also normalises *before*
attention and the feed-forward network; pre-LN trains stably with Adam at lr 1e-3 without warm-up, which matters
because the same blocks are reused by ODMT and MP4SR under different losses.

Masks are boolean with ``True`` = "this query may attend to this key" (the convention of
``torch.nn.functional.scaled_dot_product_attention``), shaped (B, 1, L, L) so they broadcast over heads.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "gelu": F.gelu,
    "relu": F.relu,
    "silu": F.silu,
    "swish": F.silu,
}


def padding_mask(input_ids: torch.Tensor) -> torch.Tensor:
    """(B, L) int64 item ids, 0 = padding -> (B, 1, L, L) bool: key is a real item, plus every query's own key.

    Allowing each query its own position keeps rows that would otherwise be fully masked (a padding query) from
    producing NaN; those outputs are never used (no loss, no query vector is read there).
    """
    length = input_ids.shape[1]
    keys = (input_ids != 0)[:, None, None, :]  # (B, 1, 1, L)
    eye = torch.eye(length, dtype=torch.bool, device=input_ids.device)  # (L, L)
    return keys | eye  # (B, 1, L, L)


def causal_padding_mask(input_ids: torch.Tensor) -> torch.Tensor:
    """(B, L) int64 left-padded item ids -> (B, 1, L, L) bool: query i sees real items at positions <= i.

    Every query also sees itself, so the padding positions of a left-padded row (whose causal past is all
    padding) attend to one key instead of none and stay finite.
    """
    length = input_ids.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool, device=input_ids.device).tril()  # (L, L)
    eye = torch.eye(length, dtype=torch.bool, device=input_ids.device)  # (L, L)
    keys = (input_ids != 0)[:, None, None, :]  # (B, 1, 1, L)
    return (causal & keys) | eye  # (B, 1, L, L)


class MultiHeadSelfAttention(nn.Module):
    """Scaled dot-product self-attention over ``num_heads`` heads with an explicit boolean mask."""

    def __init__(self, dim: int, num_heads: int, attn_dropout: float, dropout: float) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"hidden_dim {dim} must be divisible by num_heads {num_heads} (change `model:`)")
        self.num_heads = num_heads
        self.attn_dropout = attn_dropout
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
        batch, length, dim = x.shape
        qkv = self.qkv(x).view(batch, length, 3, self.num_heads, dim // self.num_heads)  # (B, L, 3, H, D/H)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (B, H, L, D/H)
        dropout_p = self.attn_dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p)  # (B, H, L, D/H)
        out = out.transpose(1, 2).reshape(batch, length, dim)  # (B, L, D)
        return self.dropout(self.proj(out))  # (B, L, D)


class FeedForward(nn.Module):
    """Position-wise two-layer network ``dim -> ffn_dim -> dim`` with a configurable activation."""

    def __init__(self, dim: int, ffn_dim: int, dropout: float, activation: str = "gelu") -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation {activation!r} must be one of: {', '.join(ACTIVATIONS)}")
        self.fc1 = nn.Linear(dim, ffn_dim)
        self.fc2 = nn.Linear(ffn_dim, dim)
        self.activation = ACTIVATIONS[activation]
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.dropout(self.activation(self.fc1(x)))  # (B, L, F)
        return self.dropout(self.fc2(h))  # (B, L, D)


class TransformerBlock(nn.Module):
    """Pre-LN block: ``x + Attn(LN(x), mask)`` then ``x + FFN(LN(x))``.

    The mask decides causal (SASRec, MP4SR: :func:`causal_padding_mask`) or not (ODMT's fusion over an item's
    tokens: any (B, 1 or H, L, L) boolean mask). Every query row must allow at least one key.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        dropout: float,
        ffn_dim: int | None = None,
        activation: str = "gelu",
        attn_dropout: float | None = None,
    ) -> None:
        super().__init__()
        self.ln_attn = nn.LayerNorm(dim)
        self.attn = MultiHeadSelfAttention(dim, num_heads, dropout if attn_dropout is None else attn_dropout, dropout)
        self.ln_ffn = nn.LayerNorm(dim)
        self.ffn = FeedForward(dim, ffn_dim or 4 * dim, dropout, activation)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_attn(x), attn_mask)  # (B, L, D)
        return x + self.ffn(self.ln_ffn(x))  # (B, L, D)


class CausalTransformer(nn.Module):
    """A stack of :class:`TransformerBlock` plus the final LayerNorm a pre-LN stack needs.

    Causal when called with :func:`causal_padding_mask` (its use in SASRec and MP4SR); the mask is explicit, so
    the same stack runs bidirectionally with :func:`padding_mask` or any other boolean mask.
    """

    def __init__(
        self,
        num_layers: int,
        dim: int,
        num_heads: int,
        dropout: float,
        ffn_dim: int | None = None,
        activation: str = "gelu",
        attn_dropout: float | None = None,
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            TransformerBlock(dim, num_heads, dropout, ffn_dim, activation, attn_dropout) for _ in range(num_layers)
        )
        self.ln_final = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x, attn_mask)  # (B, L, D)
        return self.ln_final(x)  # (B, L, D)


def init_weights(module: nn.Module, std: float = 0.02) -> None:
    """BERT/GPT-style init, applied with ``model.apply(init_weights)``: N(0, std) weights, zero biases.

    An embedding's ``padding_idx`` row is re-zeroed so padding contributes nothing.
    """
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, mean=0.0, std=std)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, mean=0.0, std=std)
        if module.padding_idx is not None:
            with torch.no_grad():
                module.weight[module.padding_idx].zero_()
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
