"""ODMT's training loss, fused: every head's cross-entropy plus the online-distillation terms without a (P, C) tensor.

:func:`head_losses` computes ``sum_h CE_h + kd_weight * sum KD`` (the terms of
:class:`pipeline.models.odmt.OnlineDistillation`, paper Fig. 3c) in row chunks, with the gradient written in closed
form during the forward pass (:class:`_HeadLosses`); ``compile_loss`` fuses a chunk's arithmetic with
``torch.compile`` (:func:`chunk_logit_grads`, the same numbers written functionally). The tests check both against
cross-entropy + ``OnlineDistillation`` over explicit logits. :func:`log_inclusion_probability` is the logQ
correction of ``softmax: in_batch``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

MASKED_LOGIT = -1e4  # finite (as in the authors' code) so that KL terms stay finite where both sides are masked


@dataclass(frozen=True)
class LossOptions:
    temperature: float  # tau of the KD terms
    kd_weight: float  # distill_weight x ramp; 0 = cross-entropy only (KD is then not computed at all)
    mode: str = "mutual"  # model.distill_mode: mutual | detached | one_way
    max_logits: int = 1 << 22  # logits per head alive at once (4M floats = 16 MB)
    # bfloat16: the three logit matmuls per head (forward, two gradients) in bf16; softmax, log-sum-exp, KD and
    # gradient accumulation stay float32. None = float32 throughout.
    matmul_dtype: torch.dtype | None = None
    compiled: bool = False  # model.compile_loss: the chunk's softmax/KD arithmetic fused by torch.compile
    # per-head weights of the cross-entropies in ``loss`` (and their gradients); None = 1 each. ``parts`` keeps the
    # unweighted means. ODMT's content_max_seq_len gives the ID head's CE on the recent positions its share there.
    ce_weights: tuple[float, ...] | None = None


def head_losses(
    hidden: list[torch.Tensor],
    tables: list[torch.Tensor],
    target_col: torch.Tensor,
    options: LossOptions,
    column_bias: torch.Tensor | None = None,
    seen: torch.Tensor | None = None,
    rows: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every head's cross-entropy plus the online-distillation terms, from queries and candidate vectors.

    ``hidden[h]`` (P, D) are head h's queries (head 0 = id), ``tables[h]`` (C, D) its candidate vectors, so head h's
    logits are ``hidden[h] @ tables[h].T (+ column_bias)`` (P, C); ``target_col`` (P,) the target columns. In-batch
    softmax passes ``column_bias`` (C,) = -log q, ``seen`` (B, C) bool (the user's own items) and ``rows`` (P,) (the
    user of each position): a user's own items other than the target are masked out.

    Returns ``(loss, parts)``: ``loss = sum_h w_h CE_h + kd_weight * sum KD`` (``w_h`` = ``options.ce_weights``,
    1 by default), and ``parts`` (2H,) detached =
    ``[CE_h for h] + [KD(m <- id) for each modality m] + [KD(id <- ensemble)]`` (KD zeros when kd_weight is 0).
    """
    if options.ce_weights is not None and len(options.ce_weights) != len(hidden):
        raise ValueError(f"LossOptions.ce_weights has {len(options.ce_weights)} weights for {len(hidden)} heads")
    if target_col.shape[0] == 0:  # no position has a target: zero loss, still part of the graph
        zero = sum(h.sum() for h in hidden) * 0.0
        return zero, hidden[0].new_zeros(2 * len(hidden))
    return _HeadLosses.apply(options, target_col, column_bias, seen, rows, *hidden, *tables)


class _HeadLosses(torch.autograd.Function):
    """:func:`head_losses`, in row chunks, with the gradient written in closed form during the forward pass.

    With ``p`` the student's and ``q`` the teacher's softmax at temperature tau and ``KL = sum q (log q - log p)``
    per row, ``tau^2 * mean(KL)`` has gradient ``tau / P * (p - q)`` w.r.t. the student logits and, for a teacher
    that is not detached, ``tau / P * q * (log q - log p - KL)``; the ensemble (mean of the heads' logits) passes
    1/H of its teacher gradient to each head. Cross-entropy: ``(softmax - one-hot) / P``. Each chunk's logit
    gradient goes straight into the gradients of ``hidden`` and ``tables`` (two matmuls), as in
    :func:`pipeline.models.layers.full_cross_entropy`.
    """

    @staticmethod
    def forward(ctx, options, target_col, column_bias, seen, rows, *tensors):  # noqa: ANN001, ANN205
        with torch.autocast(tensors[0].device.type, enabled=False):  # precision is options.matmul_dtype's
            return _HeadLosses._forward(ctx, options, target_col, column_bias, seen, rows, *tensors)

    @staticmethod
    def _forward(ctx, options, target_col, column_bias, seen, rows, *tensors):  # noqa: ANN001, ANN205
        heads = len(tensors) // 2
        need_grad = any(ctx.needs_input_grad[5:])
        mm = options.matmul_dtype or tensors[0].dtype  # the matmuls' dtype
        acc = tensors[0].dtype if options.matmul_dtype is None else torch.float32  # softmax, KD, gradient sums
        grads = [torch.zeros_like(t, dtype=acc) for t in tensors] if need_grad else []
        tensors = [t.to(mm) for t in tensors]  # no copy when already mm
        hidden, tables = tensors[:heads], tensors[heads:]
        count, tau, weight = hidden[0].shape[0], options.temperature, options.kd_weight
        ce = hidden[0].new_zeros(heads, dtype=acc)  # (H,) summed over rows
        kd = hidden[0].new_zeros(heads, dtype=acc)  # (H,): modalities' KD, then the id head's
        ce_weight = hidden[0].new_tensor(options.ce_weights or (1.0,) * heads, dtype=acc)  # (H,)
        chunk = max(1, options.max_logits // max(1, tables[0].shape[0]))
        for start in range(0, count, chunk):
            part = slice(start, start + chunk)
            t = target_col[part]  # (R,)
            at = torch.arange(len(t), device=t.device)  # (R,)
            z = [(hidden[i][part] @ tables[i].T).to(acc) for i in range(heads)]  # H x (R, C)
            if column_bias is not None:
                own = seen[rows[part]]  # (R, C): the user's own items ...
                own[at, t] = False  # ... except the target
                bias = column_bias.expand(len(t), -1).masked_fill(own, MASKED_LOGIT)  # (R, C)
                z = [x + bias for x in z]
            if options.compiled and need_grad:  # one fused pass per output instead of ~20 eager passes
                ce_sum, kd_sum, g = compiled_chunk_grads()(
                    z, t, z[0].new_tensor(tau), z[0].new_tensor(weight), ce_weight, count, options.mode, weight > 0, mm
                )
                ce += ce_sum
                kd += kd_sum
            else:
                log_p = [F.log_softmax(x, dim=-1) for x in z]  # H x (R, C)
                ce -= torch.stack([lp[at, t].sum() for lp in log_p])
                g = [lp.exp_() for lp in log_p] if need_grad else []  # H x (R, C): softmax, in place
                for x in g:
                    x[at, t] -= 1.0
                if options.ce_weights is not None:
                    for x, w in zip(g, options.ce_weights, strict=True):
                        x.mul_(w)  # (R, C): this head's CE gradient, weighted
                if weight > 0:
                    _distill_chunk(z, tau, weight, options.mode, kd, g)
                g = [x.div_(count).to(mm) for x in g]  # H x (R, C)
            for i, x in enumerate(g):
                grads[i][part] = x @ tables[i]  # (R, D)
                if mm == acc:
                    grads[heads + i].addmm_(x.T, hidden[i][part])  # (C, D)
                else:  # bf16 product, float32 accumulation over chunks
                    grads[heads + i] += x.T @ hidden[i][part]  # (C, D)
        ctx.save_for_backward(*grads)
        ce, kd = ce / count, kd * (tau * tau / count)
        weighted = ce if options.ce_weights is None else ce * ce_weight  # (H,)
        loss = weighted[0]
        for value in weighted[1:]:
            loss = loss + value
        if weight > 0:
            loss = loss + weight * kd.sum()
        ctx.mark_non_differentiable(parts := torch.cat([ce, kd]))
        return loss, parts

    @staticmethod
    def backward(ctx, grad_loss, grad_parts):  # noqa: ANN001, ANN205
        return (None,) * 5 + tuple(g * grad_loss for g in ctx.saved_tensors)


def _distill_chunk(
    z: list[torch.Tensor], tau: float, weight: float, mode: str, kd: torch.Tensor, g: list[torch.Tensor]
) -> None:
    """Add one chunk's KD sums to ``kd`` (H,) and ``weight`` x their logit gradients (x P) to ``g`` (if any).

    ``mode``: mutual (teachers learn from KD too), detached (they do not), one_way (detached, and no KD(id <-
    ensemble) term: ``kd[-1]`` stays 0 and the ID head's logits get no KD gradient at all).
    Written with in-place updates: on CPU this loop is bound by memory passes over (R, C) tensors, not by FLOPs.
    """
    heads, detach = len(z), mode != "mutual"
    log_p = [F.log_softmax(x / tau, dim=-1) for x in z]  # H x (R, C)
    p_id = log_p[0].exp()  # (R, C)
    scale = weight * tau  # d(tau^2 KL)/dz = tau * (...); the 1/P comes with the CE gradient
    for i in range(1, heads):  # modality i learns from the id head
        gap = log_p[0] - log_p[i]  # (R, C)
        kl = _row_dot(p_id, gap)  # (R, 1)
        kd[i - 1] += kl.sum()
        if g:
            g[i].add_(log_p[i].exp_(), alpha=scale).sub_(p_id, alpha=scale)  # student: p - q
            if not detach:
                g[0].addcmul_(p_id, gap.sub_(kl), value=scale)  # teacher: q (log q - log p - KL)
    if mode == "one_way":
        return
    ensemble = torch.stack(z).sum(dim=0).mul_(1.0 / (heads * tau))  # (R, C): mean of the heads' logits / tau
    log_p_ens = F.log_softmax(ensemble, dim=-1)  # (R, C)
    p_ens = log_p_ens.exp()  # (R, C)
    gap = log_p_ens.sub_(log_p[0])  # (R, C): the id head learns from the ensemble
    kl = _row_dot(p_ens, gap)  # (R, 1)
    kd[-1] += kl.sum()
    if g:
        g[0].add_(p_id, alpha=scale).sub_(p_ens, alpha=scale)
        if not detach:
            teacher = gap.sub_(kl).mul_(p_ens)  # (R, C), to every head through the mean
            for x in g:
                x.add_(teacher, alpha=scale / heads)


def _row_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(R, C), (R, C) -> (R, 1) row-wise dot products (a product and a sum: ~7x faster on CPU than a batched
    (1, C) @ (C, 1) matmul)."""
    return (a * b).sum(dim=1, keepdim=True)  # (R, 1)


def chunk_logit_grads(
    z: list[torch.Tensor],
    t: torch.Tensor,
    tau: torch.Tensor,
    weight: torch.Tensor,
    ce_weight: torch.Tensor,
    count: int,
    mode: str,
    distill: bool,
    out_dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """One chunk of :class:`_HeadLosses` written functionally, for ``torch.compile`` to fuse (``compile_loss``).

    ``z`` H x (R, C) logits (head 0 = id), ``t`` (R,) target columns, ``tau`` and ``weight`` 0-dim tensors (so a
    new KD-ramp weight needs no recompilation), ``ce_weight`` (H,) the heads' CE weights (a tensor for the same
    reason). Returns the chunk's summed CE (H,), summed KD (H,) and the logit
    gradients H x (R, C) in ``out_dtype``, divided by ``count``: the same numbers as the in-place eager path.
    """
    heads = len(z)
    hit = (torch.arange(z[0].shape[1], device=t.device)[None, :] == t[:, None]).to(z[0].dtype)  # (R, C) one-hot
    log_p = [F.log_softmax(x, dim=-1) for x in z]  # H x (R, C)
    ce = torch.stack([-(lp * hit).sum() for lp in log_p])  # (H,)
    g = [(lp.exp() - hit) * ce_weight[i] for i, lp in enumerate(log_p)]  # H x (R, C)
    kd = z[0].new_zeros(heads)  # (H,)
    if distill:
        scale = weight * tau
        log_q = [F.log_softmax(x / tau, dim=-1) for x in z]  # H x (R, C)
        p_id = log_q[0].exp()  # (R, C)
        terms = []
        for i in range(1, heads):  # modality i learns from the id head
            gap = log_q[0] - log_q[i]  # (R, C)
            kl = (p_id * gap).sum(dim=1, keepdim=True)  # (R, 1)
            terms.append(kl.sum())
            g[i] = g[i] + scale * (log_q[i].exp() - p_id)
            if mode == "mutual":
                g[0] = g[0] + scale * p_id * (gap - kl)
        if mode == "one_way":
            terms.append(kd[0])
        else:  # the id head learns from the ensemble
            log_e = F.log_softmax(torch.stack(z).mean(dim=0) / tau, dim=-1)  # (R, C)
            p_e = log_e.exp()  # (R, C)
            gap = log_e - log_q[0]  # (R, C)
            kl = (p_e * gap).sum(dim=1, keepdim=True)  # (R, 1)
            terms.append(kl.sum())
            g[0] = g[0] + scale * (p_id - p_e)
            if mode == "mutual":
                teacher = p_e * (gap - kl)  # (R, C), to every head through the mean
                g = [x + scale / heads * teacher for x in g]
        kd = torch.stack(terms)  # (H,)
    return ce, kd, [(x / count).to(out_dtype) for x in g]


_COMPILED: dict[str, object] = {}


def compiled_chunk_grads():  # noqa: ANN201
    """:func:`chunk_logit_grads` through ``torch.compile(dynamic=True)``, built once per process (inductor
    caches the generated code on disk, so later processes compile in seconds)."""
    if "chunk" not in _COMPILED:
        _COMPILED["chunk"] = torch.compile(chunk_logit_grads, dynamic=True)
    return _COMPILED["chunk"]


def log_inclusion_probability(popularity: torch.Tensor, draws: int) -> torch.Tensor:
    """(N+1,) training counts, number of item occurrences in the batch -> (N+1,) log P(item among the batch's items).

    The in-batch candidates are the *unique* items of the batch, so the sampled-softmax correction is the log of the
    probability that an item is drawn at least once in ``draws`` draws from the unigram distribution q:
    ``log(1 - (1 - q)^draws)`` (the expected count of unique sampling). With one draw it is the plain logQ, ``log q``;
    with many, popular items (almost surely in the batch) get ~0 and rare ones ~``log(draws * q)``. Subtracting the
    plain ``log q`` from unique candidates instead teaches the scores to add ``log q``: a popularity bias at ranking
    time (on ML-1M, where a batch holds most items, ODMT's valid NDCG@10 fell to half of SASRec's).
    """
    counts = popularity.double() + 1.0  # +1 so items unseen in training stay finite
    q = counts / counts.sum()  # (N+1,)
    return torch.log(-torch.expm1(max(draws, 1) * torch.log1p(-q))).to(popularity.dtype)  # (N+1,)


def in_batch_inputs(
    popularity: torch.Tensor,
    candidates: torch.Tensor,
    input_ids: torch.Tensor,
    targets: torch.Tensor,
    has_target: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """``softmax: in_batch``'s extra :func:`head_losses` inputs: ``column_bias`` (C-1,) ``-log P(item in the batch)``
    per column (logQ for unique candidates), ``seen`` (B, C-1) each user's own items (masked out as false negatives)
    and ``rows`` (P,) the user of each position. ``candidates`` (C,) sorted, ``candidates[0]`` = padding."""
    draws = int(torch.count_nonzero(torch.cat([input_ids[:, :1], targets], dim=1)))  # item occurrences
    log_q = log_inclusion_probability(popularity, draws)[candidates[1:]]  # (C-1,)
    seen = torch.zeros(input_ids.shape[0], len(candidates), dtype=torch.bool, device=input_ids.device)  # (B, C)
    seen.scatter_(1, torch.searchsorted(candidates, input_ids), True)
    seen.scatter_(1, torch.searchsorted(candidates, targets), True)
    rows = has_target.nonzero()[:, 0]  # (P,): the user of each position
    return {"column_bias": -log_q, "seen": seen[:, 1:], "rows": rows}
