"""Transformer parts that every sequential model here shares: attention masks, a block, a stack, weight init.

Pre-LN, not the post-LN of "Attention Is All You Need": each sub-layer reads ``LayerNorm(x)`` and adds its output
to the un-normalised residual stream (GPT-2 / nanoGPT), and the stack ends with one final LayerNorm. SASRec's
reference code (Kang & McAuley, ICDM 2018, Sec. III-B/C, and its TensorFlow release) also normalises *before*
attention and the feed-forward network; pre-LN trains stably with Adam at lr 1e-3 without warm-up, which matters
because the same blocks are reused by ODMT and MP4SR under different losses.

Masks are boolean with ``True`` = "this query may attend to this key" (the convention of
``torch.nn.functional.scaled_dot_product_attention``), shaped (B, 1, L, L) so they broadcast over heads; a float
mask of 0 / -inf (:func:`additive_mask`) is accepted too. Every query row must allow at least one key.

CPU speed: attention-weight dropout (``attn_dropout`` > 0) makes PyTorch fall back from the fused CPU attention
kernel to the unfused one (~10x slower at B=128, L=200, and it keeps the (B, H, L, L) weights for backward).
So blocks default to ``attn_dropout=0.0`` (every model here uses that); embedding, residual and feed-forward
dropout (``dropout``) remain.
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


def left_padded_positions(input_ids: torch.Tensor, max_seq_len: int) -> torch.Tensor:
    """(B, L) left-padded item ids -> (B, L) learned-position indices counting real items from the oldest one kept
    (0, 1, 2, ...; padding gets 0), so extra left padding never changes an output. ``max_seq_len`` is the size of
    the position table: longer inputs are an error."""
    if input_ids.shape[1] > max_seq_len:
        raise ValueError(
            f"input has {input_ids.shape[1]} positions but the model was built for max_seq_len "
            f"{max_seq_len}; left-pad/truncate inputs to data.max_seq_len"
        )
    return ((input_ids != 0).cumsum(dim=1) - 1).clamp(min=0)  # (B, L)


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


def additive_mask(attn_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Boolean mask (True = attend) -> float mask of 0 / -inf that SDPA adds to the scores; float masks pass."""
    if attn_mask.dtype != torch.bool:
        return attn_mask
    return torch.zeros(attn_mask.shape, dtype=dtype, device=attn_mask.device).masked_fill_(~attn_mask, -torch.inf)


class MultiHeadSelfAttention(nn.Module):
    """Scaled dot-product self-attention over ``num_heads`` heads with an explicit (boolean or additive) mask."""

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
    """Position-wise two-layer network ``dim -> ffn_dim -> dim`` with a configurable activation.

    Dropout only on the output, as in GPT-2 / nanoGPT: a mask over the 4x wider hidden layer costs more than the
    rest of the block on CPU.
    """

    def __init__(self, dim: int, ffn_dim: int, dropout: float, activation: str = "gelu") -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation {activation!r} must be one of: {', '.join(ACTIVATIONS)}")
        self.fc1 = nn.Linear(dim, ffn_dim)
        self.fc2 = nn.Linear(ffn_dim, dim)
        self.activation = ACTIVATIONS[activation]
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.activation(self.fc1(x))  # (B, L, F)
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
        attn_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.ln_attn = nn.LayerNorm(dim)
        self.attn = MultiHeadSelfAttention(dim, num_heads, attn_dropout, dropout)
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
        attn_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            TransformerBlock(dim, num_heads, dropout, ffn_dim, activation, attn_dropout) for _ in range(num_layers)
        )
        self.ln_final = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
        attn_mask = additive_mask(attn_mask, x.dtype)  # (B, 1, L, L): converted once, not once per layer
        for block in self.blocks:
            x = block(x, attn_mask)  # (B, L, D)
        return self.ln_final(x)  # (B, L, D)


class _FullSoftmaxCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of ``hidden @ weight.T`` that never holds the whole (P, N) logit matrix.

    Logits are built ``chunk`` rows at a time; the gradient of each chunk (softmax - one-hot) is folded into the
    gradients of ``hidden`` and ``weight`` right away, so memory is O(chunk x N) instead of O(P x N) for logits,
    log-probabilities and their gradient. Compute equals the plain version: one forward and two gradient matmuls.
    """

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        targets: torch.Tensor,
        chunk: int,
        matmul_dtype: torch.dtype | None,
    ) -> torch.Tensor:
        with torch.autocast(hidden.device.type, enabled=False):  # the precision is matmul_dtype's
            grad_hidden, grad_weight, loss = _full_softmax_ce(
                hidden, weight, targets, chunk, matmul_dtype, ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
            )
        ctx.save_for_backward(grad_hidden, grad_weight)
        return loss

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad_out: torch.Tensor):
        grad_hidden, grad_weight = ctx.saved_tensors
        return grad_hidden * grad_out, grad_weight * grad_out, None, None, None


def _full_softmax_ce(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    chunk: int,
    matmul_dtype: torch.dtype | None,
    need_grad: bool,
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor]:
    """The body of :class:`_FullSoftmaxCrossEntropy`: (grad_hidden, grad_weight, mean loss).

    ``matmul_dtype`` (bf16 under autocast) is the dtype of the three matmuls; softmax, log-sum-exp and the gradient
    sums over chunks stay float32 then. None: everything in ``hidden``'s dtype.
    """
    count = hidden.shape[0]
    mm = matmul_dtype or hidden.dtype
    acc = hidden.dtype if matmul_dtype is None else torch.float32
    grad_hidden = torch.empty_like(hidden, dtype=acc) if need_grad else None  # (P, D)
    grad_weight = torch.zeros_like(weight, dtype=acc) if need_grad else None  # (N, D)
    hidden, weight = hidden.to(mm), weight.to(mm)  # no copy when already mm
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, count, chunk):
        h = hidden[start : start + chunk]  # (C, D)
        t = targets[start : start + chunk]  # (C,)
        logits = (h @ weight.T).float()  # (C, N)
        target_logit = logits.gather(1, t[:, None])  # (C, 1)
        top = logits.amax(dim=1, keepdim=True)  # (C, 1)
        probs = logits.sub_(top).exp_()  # (C, N) unnormalised softmax, in place of the logits
        norm = probs.sum(dim=1, keepdim=True)  # (C, 1)
        total += (top + norm.log() - target_logit).sum()  # log-sum-exp minus the target's logit
        if need_grad:
            grad = probs.div_(norm * count)  # (C, N) softmax / P
            grad[torch.arange(len(t), device=t.device), t] -= 1.0 / count  # d(mean loss) / d(logits)
            grad = grad.to(mm)
            grad_hidden[start : start + chunk] = grad @ weight  # (C, D)
            if mm == acc:
                grad_weight.addmm_(grad.T, h)  # (N, D)
            else:  # bf16 product, float32 sum over chunks
                grad_weight += grad.T @ h  # (N, D)
    return grad_hidden, grad_weight, (total / count).to(acc)


def full_cross_entropy(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, max_logits: int = 1 << 23
) -> torch.Tensor:
    """Mean softmax cross-entropy of ``hidden`` (P, D) against every row of ``weight`` (N, D).

    ``targets`` (P,) int64 are row indices of ``weight``. Equal to ``F.cross_entropy(hidden @ weight.T, targets)``
    with at most ``max_logits`` logits alive at once (default 8M floats = 32 MB). Under ``torch.autocast`` (e.g.
    ``train.precision: bf16``) the matmuls run in the autocast dtype and the softmax in float32.
    """
    if hidden.shape[0] == 0:
        return hidden.sum() * 0.0  # no position has a target: zero loss, still part of the graph
    chunk = max(1, max_logits // max(1, weight.shape[0]))
    device = hidden.device.type
    matmul_dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else None
    return _FullSoftmaxCrossEntropy.apply(hidden, weight, targets, chunk, matmul_dtype)


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
