"""MP4SR toys: a 30-item catalog with pooled text (12-d) and image (8-d) features, the tiny config, models, a batch."""

from __future__ import annotations

import torch

from pipeline.catalog import ItemCatalog
from pipeline.models.mp4sr import MP4SR, MP4SRConfig

N_ITEMS = 30
TAU = 0.07
CONFIG = MP4SRConfig(
    hidden_dim=16,
    num_layers=1,
    num_heads=2,
    dropout=0.1,
    num_experts=4,
    adaptor_dropout=0.1,
    temperature=TAU,
    cm_weight=0.01,
    mixup_max_prob=0.5,
    item_drop_max=0.2,
    finetune_id_embeddings=True,
)


def make_catalog(seed: int = 0, unseen: tuple[int, ...] = (), no_image: tuple[int, ...] = ()) -> ItemCatalog:
    gen = torch.Generator().manual_seed(seed)
    text = torch.randn(N_ITEMS + 1, 12, generator=gen)  # (N+1, 12)
    image = torch.randn(N_ITEMS + 1, 8, generator=gen)  # (N+1, 8)
    text[0] = 0
    image[0] = 0
    popularity = torch.ones(N_ITEMS + 1)
    popularity[0] = 0
    popularity[list(unseen)] = 0
    masks = {m: torch.ones(N_ITEMS + 1, dtype=torch.bool) for m in ("text", "image")}
    for mask in masks.values():
        mask[0] = False
    masks["image"][list(no_image)] = False
    image[list(no_image)] = 0
    return ItemCatalog(N_ITEMS, 12, popularity, features={"text": text, "image": image}, masks=masks)


def make_model(seed: int = 0, config: MP4SRConfig = CONFIG, **catalog_kw) -> MP4SR:
    torch.manual_seed(seed)
    return MP4SR(config, make_catalog(**catalog_kw))


def batch(seed: int = 1) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    seq = torch.randint(1, N_ITEMS + 1, (4, 9), generator=gen)  # (B, L+1)
    seq[0, :4] = 0  # a short, left-padded user
    inputs, targets = seq[:, :-1].clone(), seq[:, 1:].clone()  # (B, L)
    targets[inputs == 0] = 0
    return {"input_ids": inputs, "target_ids": targets}
