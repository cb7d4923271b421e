"""ODMT toys: a 20-item catalog with text and image tokens (a few items lack a modality), configs and models; and
the reference the fused losses are tested against (cross-entropy + OnlineDistillation over explicit logits)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.catalog import ItemCatalog
from pipeline.data.splits import UserSplit
from pipeline.models.losses import MASKED_LOGIT, LossOptions
from pipeline.models.odmt import ODMT, ODMTConfig, OnlineDistillation

NUM_ITEMS = 20
MAX_LEN = 10
DIM = 16
TEXT_DIM, TEXT_TOKENS = 12, 5
IMAGE_DIM, IMAGE_TOKENS = 10, 4
NO_IMAGE = (3, 7)  # items without an image
NO_TEXT = (5,)  # items without text

# The `model:` keys ODMT adds to params.yaml, with their defaults (the shared keys come from SASRec's block).
ODMT_PARAMS: dict = {
    "backbone": "sasrec",
    "id_aware_transformer": True,
    "fusion_layers": 2,
    "fusion_heads": 2,
    "id_init": "features",
    "softmax": "full",
    "distill_weight": 1.0,
    "distill_temperature": 0.5,
    "distill_ramp_epochs": 10,
    "distill_mode": "mutual",
    "head_weight_id": 1.0,
    "head_weight_text": 1.0,
    "head_weight_image": 1.0,
    "residual_id": False,
    "item_dropout": None,
    "head_weights": "fixed",
    "max_text_tokens": 0,
    "max_image_tokens": 0,
    "content_max_seq_len": 0,
    "init_from_baseline": False,
    "compile_loss": False,
}


def make_catalog(images: bool = True, tokens: bool = True, seed: int = 0) -> ItemCatalog:
    """Random pooled features and tokens; a few items lack a modality; text has a variable number of tokens."""
    g = torch.Generator().manual_seed(seed)
    rows = NUM_ITEMS + 1
    text_len = torch.randint(1, TEXT_TOKENS + 1, (rows,), generator=g)  # (N+1,)
    specs = {"text": (TEXT_DIM, TEXT_TOKENS, NO_TEXT)}
    if images:
        specs["image"] = (IMAGE_DIM, IMAGE_TOKENS, NO_IMAGE)
    catalog = ItemCatalog(NUM_ITEMS, MAX_LEN, torch.arange(rows, dtype=torch.float32) % 5)
    for m, (dim, count, missing) in specs.items():
        present = torch.ones(rows, dtype=torch.bool)
        present[[0, *missing]] = False
        catalog.features[m] = torch.randn(rows, dim, generator=g) * present[:, None]  # (N+1, d)
        catalog.masks[m] = present
        if tokens:
            token_mask = torch.arange(count)[None] < (text_len[:, None] if m == "text" else count)  # (N+1, T)
            token_mask = token_mask & present[:, None]  # (N+1, T)
            catalog.tokens[m] = (torch.randn(rows, count, dim, generator=g) * token_mask[..., None]).half()
            catalog.token_masks[m] = token_mask
    return catalog


def make_config(**overrides: object) -> ODMTConfig:
    base = {"hidden_dim": DIM, "num_layers": 2, "num_heads": 2, "dropout": 0.0} | ODMT_PARAMS
    return ODMTConfig(**(base | {"distill_ramp_epochs": 0} | overrides))


def make_model(catalog: ItemCatalog | None = None, seed: int = 0, **overrides: object) -> ODMT:
    torch.manual_seed(seed)
    return ODMT(make_config(**overrides), catalog or make_catalog())


def tiny_split(test_shift: int = 0) -> UserSplit:
    """40 users walking the item cycle; ``test_shift`` moves every test target (valid targets stay)."""
    rng = np.random.default_rng(0)
    seqs = [(rng.integers(NUM_ITEMS) + np.arange(rng.integers(5, 12))) % NUM_ITEMS + 1 for _ in range(40)]
    return UserSplit(
        user_idx=np.arange(40, dtype=np.int64),
        train=[s[:-2] for s in seqs],
        valid_target=np.array([s[-2] for s in seqs], dtype=np.int64),
        test_target=np.array([(s[-1] + test_shift - 1) % NUM_ITEMS + 1 for s in seqs], dtype=np.int64),
    )


def explicit_head_losses(
    hidden: list[torch.Tensor],
    tables: list[torch.Tensor],
    target_col: torch.Tensor,
    options: LossOptions,
    column_bias: torch.Tensor | None = None,
    seen: torch.Tensor | None = None,
    rows: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`pipeline.models.losses.head_losses` the plain autograd way: cross-entropy + the paper's
    :class:`OnlineDistillation` over explicit (P, C) logits (memory-hungry; the tests' reference)."""
    logits = [h @ t.T for h, t in zip(hidden, tables, strict=True)]  # H x (P, C)
    if column_bias is not None:
        own = seen[rows]  # (P, C)
        own[torch.arange(len(rows), device=rows.device), target_col] = False
        bias = column_bias.expand(len(rows), -1).masked_fill(own, MASKED_LOGIT)  # (P, C)
        logits = [x + bias for x in logits]
    ce = torch.stack([F.cross_entropy(x, target_col) for x in logits])  # (H,)
    loss = ce.sum() if options.ce_weights is None else (ce * ce.new_tensor(options.ce_weights)).sum()
    kd = torch.zeros_like(ce)  # (H,)
    if options.kd_weight > 0:
        names = ["id", *(f"m{i}" for i in range(1, len(logits)))]
        terms = OnlineDistillation(options.temperature, options.mode)(dict(zip(names, logits, strict=True)))
        kd = torch.stack(list(terms.values()))  # (H,): modalities first, then kd_id
        loss = loss + options.kd_weight * kd.sum()
    return loss, torch.cat([ce, kd]).detach()
