"""The early-fusion SASRec (control (d)): a training step, missing-modality masks, causality, padding, registry."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.catalog import ItemCatalog
from pipeline.config import ConfigError, ModelConfig, load_section
from pipeline.data.dataset import left_pad
from pipeline.models import registry
from pipeline.models.sasrec_fusion import SASRecFusion, SASRecFusionConfig

NUM_ITEMS = 15
MAX_LEN = 8
REPO = Path(__file__).resolve().parents[1]


def catalog(modalities: tuple[str, ...] = ("text", "image"), seed: int = 0) -> ItemCatalog:
    """Text on every item; image missing on items 3 and 7 (their feature rows hold noise that must not be read)."""
    gen = torch.Generator().manual_seed(seed)
    features, masks = {}, {}
    for m, dim in (("text", 6), ("image", 10)):
        if m not in modalities:
            continue
        features[m] = torch.randn(NUM_ITEMS + 1, dim, generator=gen)  # (N+1, d_m)
        features[m][0] = 0.0
        masks[m] = torch.ones(NUM_ITEMS + 1, dtype=torch.bool)
        masks[m][0] = False
        if m == "image":
            masks[m][[3, 7]] = False
    return ItemCatalog(NUM_ITEMS, MAX_LEN, torch.zeros(NUM_ITEMS + 1), features=features, masks=masks)


def make_model(cat: ItemCatalog | None = None, dropout: float = 0.0) -> SASRecFusion:
    torch.manual_seed(0)
    return SASRecFusion(SASRecFusionConfig(hidden_dim=16, num_layers=2, num_heads=2, dropout=dropout), cat or catalog())


def batch() -> dict[str, torch.Tensor]:
    seqs = [np.array([3, 5, 7, 9, 11, 2]), np.array([1, 4, 7]), np.array([8, 3, 15, 14, 5, 6, 2, 1])]
    ids = torch.from_numpy(left_pad(seqs, MAX_LEN + 1))  # (3, 9)
    return {"input_ids": ids[:, :-1], "target_ids": ids[:, 1:] * (ids[:, :-1] > 0)}


def test_a_training_step_reaches_every_part_and_lowers_the_loss() -> None:
    model = make_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    first = model(batch())
    assert set(first) == {"loss", "ce"} and torch.isfinite(first["loss"])
    first["loss"].backward()
    for name in ("item_emb.weight", "proj.text.weight", "proj.image.weight", "missing.image", "missing.text"):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None, name
    assert dict(model.named_parameters())["missing.image"].grad.abs().sum() > 0  # items 3 and 7 are scored
    assert dict(model.named_parameters())["missing.text"].grad.abs().sum() == 0  # no item lacks text
    optimizer.step()
    for _ in range(20):
        optimizer.zero_grad()
        model(batch())["loss"].backward()
        optimizer.step()
    assert model(batch())["loss"] < first["loss"]


def test_a_missing_modality_is_the_learned_vector_never_the_feature_row() -> None:
    cat = catalog()
    model = make_model(cat)
    with torch.no_grad():
        table = model.item_table()  # (N+1, D)
        changed = catalog()
        changed.features["image"][[3, 7]] = 100.0  # the rows of items without an image
        other = make_model(changed).item_table()
    torch.testing.assert_close(table, other)
    expected = model.item_emb.weight[3] + model.proj["text"](cat.features["text"][3]) + model.missing["image"]
    torch.testing.assert_close(table[3], expected)
    assert torch.all(table[0] == 0)  # padding row
    assert torch.equal(model.item_vectors(), table)  # tied output layer


def test_one_modality_is_enough_and_none_is_an_error() -> None:
    model = make_model(catalog(("text",)))
    assert model.modalities == ("text",) and "image_pooled" not in dict(model.named_buffers())
    with pytest.raises(ValueError, match="sasrec_fusion needs text or image features"):
        make_model(catalog(()))
    broken = catalog()
    del broken.masks["image"]
    with pytest.raises(ValueError, match="image features of .* need a"):
        make_model(broken)


def test_causality_and_padding_invariance() -> None:
    model = make_model().eval()
    ids = batch()["input_ids"]  # (3, 8)
    with torch.no_grad():
        table = model.item_table()
        out = model.encode(ids, table)  # (3, 8, D)
        future = ids.clone()
        future[:, -1] = 13  # change the newest item only
        changed = model.encode(future, table)
        torch.testing.assert_close(out[:, :-1], changed[:, :-1])
        assert not torch.allclose(out[:, -1], changed[:, -1])
        short = ids[1:2, -3:]  # user 1's three items without their left padding
        torch.testing.assert_close(model.user_vectors(short), model.user_vectors(ids[1:2]))


def test_registered_strict_and_buildable_from_params_yaml() -> None:
    spec = registry.spec("sasrec_fusion")
    assert spec.model_cls is SASRecFusion and spec.needs_features == ("text", "image")
    assert not spec.all_modalities_required
    params = REPO / "params.yaml"
    options = load_section(ModelConfig, "model", params).options
    config = ModelConfig(name="sasrec_fusion", options=options).build(params)
    assert isinstance(config, SASRecFusionConfig)
    with pytest.raises(ConfigError, match="`model.distill_weight` = 0.5 is read only by odmt"):
        registry.model_config("sasrec_fusion", {"distill_weight": 0.5}, params)
    with pytest.raises(ConfigError, match="unknown key `model.hidden_size`"):
        registry.model_config("sasrec_fusion", {"hidden_size": 8}, params)
    with pytest.raises(ValueError, match="model.dropout"):
        make_model(dropout=1.0)
