"""ODMT's item-side token inputs: the catalog's content kept as buffers and gathered per item
(:func:`register_content`, :func:`gather_content` -> :class:`ModalityInput`), the model-side token caps
(:func:`cap_tokens`) and the packed layout of the item-side transformer (the same outputs as the padded one, less
compute).

Attention over an item's tokens has no positions (only role embeddings), so its tokens may come in any order: each
item is laid out ``[ID, summaries, its real tokens]``, items are grouped by length (:func:`packed_layout`) and each
group runs padded only to its own longest item; the last block computes queries and feed-forward only at the output
positions (:func:`block_outputs`). Used by
:meth:`pipeline.models.odmt.IDAwareMultimodalTransformer._packed`; exact (tested against the padded layout).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.catalog import ItemCatalog
from pipeline.models.layers import TransformerBlock


@dataclass
class ModalityInput:
    """One modality of M items, gathered from the catalog."""

    pooled: torch.Tensor  # (M, d_m) float32 pooled feature
    present: torch.Tensor  # (M,) bool: the item has this modality
    tokens: torch.Tensor | None = None  # (M, T_m, d_m) per-token features (None in the "w/o IMT" ablation)
    token_mask: torch.Tensor | None = None  # (M, T_m) bool: real token
    # Optional, precomputed for the full catalog (the packed path derives them otherwise):
    flat: torch.Tensor | None = None  # (R_m, d_m) the real tokens only (token_mask & present), item-major
    counts: torch.Tensor | None = None  # (M,) int64 real tokens per item

    def real_tokens(self) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (R_m, d_m) the tokens that exist (a missing modality has none), item-major, and (M,) counts per item."""
        if self.flat is not None and self.counts is not None:
            return self.flat, self.counts
        if self.tokens is None or self.token_mask is None:
            raise ValueError("the ID-aware transformer needs tokens; set embed.store_tokens: true")
        real = self.token_mask & self.present[:, None]  # (M, T_m)
        return self.tokens[real], real.sum(dim=1)  # (R_m, d_m), (M,)


def register_content(
    module: nn.Module, catalog: ItemCatalog, modalities: tuple[str, ...], with_tokens: bool, caps: dict[str, int]
) -> None:
    """Keep each modality's pooled features, presence mask and (capped, trimmed) tokens as non-persistent buffers
    of ``module`` (data, not weights: they stay out of checkpoints). ``caps``: ``max_<m>_tokens`` per modality."""
    rows = catalog.num_items + 1
    for m in modalities:
        pooled = catalog.features[m]
        present = catalog.masks.get(m)
        if present is None:
            raise ValueError(f"catalog has {m} features but no {m} mask; load features with load_catalog")
        if pooled.shape[0] != rows or present.shape != (rows,):
            raise ValueError(
                f"{m} features have {pooled.shape[0]} rows and a mask of {tuple(present.shape)}; expected "
                f"{rows} (items + padding row). Run `dvc repro embed`."
            )
        module.register_buffer(f"{m}_pooled", pooled.float(), persistent=False)  # (N+1, d_m)
        module.register_buffer(f"{m}_present", present.bool(), persistent=False)  # (N+1,)
        if not with_tokens:
            continue
        if m not in catalog.tokens or m not in catalog.token_masks:
            raise ValueError(
                f"model.id_aware_transformer is true but the catalog has no {m} tokens; set "
                "embed.store_tokens: true and run `dvc repro embed` (or set model.id_aware_transformer: false)"
            )
        tokens, token_mask = cap_tokens(m, catalog.tokens[m], catalog.token_masks[m].bool(), caps[m])
        used = token_mask.any(dim=0)  # (T,): drop columns that are padding for every item (less compute)
        used[0] = True  # keep at least one column
        tokens, token_mask = tokens[:, used], token_mask[:, used]  # (N+1, T_m, d_m) float16, (N+1, T_m)
        module.register_buffer(f"{m}_tokens", tokens, persistent=False)  # (N+1, T_m, d_m)
        module.register_buffer(f"{m}_token_mask", token_mask, persistent=False)  # (N+1, T_m)
        # the packed item transformer's input for the whole catalog, float32 once (full softmax reads it
        # every step): only the tokens that exist, item-major, and their count per item
        real = token_mask & present.bool()[:, None]  # (N+1, T_m)
        module.register_buffer(f"{m}_flat", tokens[real].float(), persistent=False)  # (R_m, d_m)
        module.register_buffer(f"{m}_counts", real.sum(dim=1), persistent=False)  # (N+1,)


def gather_content(
    module: nn.Module, modalities: tuple[str, ...], ids: torch.Tensor | None, with_tokens: bool, dtype: torch.dtype
) -> dict[str, ModalityInput]:
    """(M,) item ids, or None for all N+1 rows (no gather) -> each modality's inputs for those items, from the
    buffers of :func:`register_content`, in ``dtype``."""

    def rows(name: str) -> torch.Tensor:
        table = getattr(module, name)  # (N+1, ...)
        return table if ids is None else table[ids]  # (M, ...)

    out = {}
    for m in modalities:
        tokens = token_mask = None
        flat = counts = None
        if with_tokens:
            tokens = rows(f"{m}_tokens").to(dtype)  # (M, T_m, d_m): float16 on the catalog side
            token_mask = rows(f"{m}_token_mask")  # (M, T_m)
            if ids is None:  # all items: the packed tokens are ready
                flat, counts = getattr(module, f"{m}_flat"), getattr(module, f"{m}_counts")  # (R_m, d_m), (N+1,)
        pooled, present = rows(f"{m}_pooled").to(dtype), rows(f"{m}_present")  # (M, d_m), (M,)
        out[m] = ModalityInput(pooled, present, tokens, token_mask, flat, counts)
    return out


def cap_tokens(modality: str, tokens: torch.Tensor, mask: torch.Tensor, cap: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``max_<m>_tokens``: (N+1, T, d) tokens and (N+1, T) mask -> at most ``cap`` tokens per item (0 = all).

    Text keeps the first ``cap`` tokens (the tokenizer pads at the end). Image tokens are a row-major spatial grid
    (``pipeline.features.encoders.token_grid``); it is average-pooled to the grid of at most ``cap`` cells that
    embed would have stored with ``embed.image.max_tokens: cap`` (pooling before the linear projection equals
    pooling after it).
    """
    if cap <= 0 or tokens.shape[1] <= cap:
        return tokens, mask
    if modality == "text":
        return tokens[:, :cap], mask[:, :cap]
    rows, count, dim = tokens.shape
    height = max(1, math.isqrt(count))
    width = count // height
    if height * width != count:
        raise ValueError(f"{modality} tokens: {count} per item is not a grid; set model.max_image_tokens: 0")
    out_h = max(1, math.isqrt(cap))
    out_w = max(1, cap // out_h)
    grid = tokens.float().view(rows, height, width, dim).permute(0, 3, 1, 2)  # (N+1, d, h, w)
    pooled = F.adaptive_avg_pool2d(grid, (min(out_h, height), min(out_w, width)))  # (N+1, d, h', w')
    pooled = pooled.flatten(2).transpose(1, 2).to(tokens.dtype)  # (N+1, h'w', d)
    return pooled, mask.any(dim=1, keepdim=True).expand(-1, pooled.shape[1])  # (N+1, h'w', d), (N+1, h'w')


GROUP_ITEMS = 256  # the packed item transformer groups at least this many items of similar length per call


def packed_layout(
    counts: list[torch.Tensor], items: int, fixed: int, pad: int
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Row indices that lay M items out as ``[fixed tokens, real tokens of each modality]``, grouped by length.

    The rows are ``[fixed x M (token k of item i at k*M + i), modality 0's R_0 real tokens, modality 1's, ...]``
    (each modality item-major, ``counts[m]`` (M,) per item), ``pad`` the padding row. Items are sorted by length and
    cut into groups of at least :data:`GROUP_ITEMS` items, each padded to its own longest item only. Returns
    ``[(members (M_g,) item indices, index (M_g, S_g) row indices)]``; every item is in exactly one group.
    """
    device = counts[0].device if counts else torch.device("cpu")
    arange = torch.arange(items, device=device)  # (M,)
    length = fixed + (torch.stack(counts).sum(dim=0) if counts else torch.zeros_like(arange))  # (M,)
    index = torch.full((items, int(length.max()) if items else fixed), pad, dtype=torch.long, device=device)
    index[:, :fixed] = torch.arange(fixed, device=device)[None] * items + arange[:, None]  # (M, F)
    base, offset = fixed * items, torch.full_like(arange, fixed)  # next row id; next free slot per item
    for count in counts:
        owner = torch.repeat_interleave(arange, count)  # (R_m,): the item of each real token
        rank = torch.arange(len(owner), device=device) - (count.cumsum(0) - count)[owner]  # (R_m,) within item
        index[owner, offset[owner] + rank] = base + torch.arange(len(owner), device=device)
        base, offset = base + len(owner), offset + count
    order = torch.argsort(length, stable=True)  # (M,)
    sorted_length = length[order].tolist()
    groups, start = [], 0
    while start < items:
        end = min(start + GROUP_ITEMS, items)
        while end < items and sorted_length[end] == sorted_length[end - 1]:
            end += 1  # a group ends where the length changes
        if items - end < GROUP_ITEMS // 2:
            end = items  # no tiny last group
        members = order[start:end]  # (M_g,)
        groups.append((members, index[members, : sorted_length[end - 1]]))  # (M_g,), (M_g, S_g)
        start = end
    return groups


def id_first_mask(keys: torch.Tensor) -> torch.Tensor:
    """(M, S) bool valid keys, the first one the ID token -> (M, 1, S, S) bool mask (True = may attend): the packed
    layout's version of :func:`id_aware_mask` (content queries never see the ID key; the ID query sees all)."""
    length = keys.shape[1]
    mask = keys[:, None, None, :].expand(-1, 1, length, length).clone()  # (M, 1, S, S)
    mask[:, :, 1:, 0] = False
    return mask  # (M, 1, S, S)


def block_outputs(block: TransformerBlock, x: torch.Tensor, mask: torch.Tensor, first: int) -> torch.Tensor:
    """``block(x, mask)[:, :first]`` (M, first, D) from x (M, S, D), computing queries, attention output and the
    feed-forward network only at the first ``first`` positions (keys and values at all S): the last item-side
    block, whose other outputs nobody reads."""
    attn = block.attn
    batch, length, dim = x.shape
    heads, head_dim = attn.num_heads, dim // attn.num_heads
    h = block.ln_attn(x)  # (M, S, D)
    q = F.linear(h[:, :first], attn.qkv.weight[:dim], attn.qkv.bias[:dim])  # (M, F, D)
    kv = F.linear(h, attn.qkv.weight[dim:], attn.qkv.bias[dim:]).view(batch, length, 2, heads, head_dim)
    k, v = kv.permute(2, 0, 3, 1, 4).unbind(0)  # 2 x (M, H, S, D/H)
    q = q.view(batch, first, heads, head_dim).transpose(1, 2)  # (M, H, F, D/H)
    dropout_p = attn.attn_dropout if attn.training else 0.0
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, :, :first], dropout_p=dropout_p)  # (M, H, F, D/H)
    out = attn.dropout(attn.proj(out.transpose(1, 2).reshape(batch, first, dim)))  # (M, F, D)
    y = x[:, :first] + out  # (M, F, D)
    return y + block.ffn(block.ln_ffn(y))  # (M, F, D)
