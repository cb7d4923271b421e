"""The model contract (pipeline.models.contract): every registered model provides it, capabilities are found by
isinstance, and a model class that lacks a member is refused when built."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch import nn

from pipeline.catalog import ItemCatalog
from pipeline.models import contract, registry
from pipeline.models.sasrec import SASRecConfig
from tests.helpers import mp4sr as mp4sr_toys
from tests.helpers import odmt as odmt_toys


def test_models_provide_the_contract_and_their_capabilities() -> None:
    catalog = ItemCatalog(num_items=5, max_seq_len=4, popularity=torch.zeros(6))
    sasrec = registry.build_model("sasrec", SASRecConfig(hidden_dim=8, num_layers=1, num_heads=1), catalog, 7)
    odmt = registry.build_model("odmt", odmt_toys.make_config(head_weights="validation"), odmt_toys.make_catalog(), 9)
    mp4sr = registry.build_model("mp4sr", mp4sr_toys.CONFIG, mp4sr_toys.make_catalog(), 6)
    assert all(isinstance(m, contract.Recommender) for m in (sasrec, odmt, mp4sr))
    # max_seq_len is the constructor's argument, not the catalog's
    assert (sasrec.max_seq_len, odmt.max_seq_len, mp4sr.max_seq_len) == (7, 9, 6)
    assert sasrec.pos_emb.num_embeddings == 7 and mp4sr.backbone.pos_emb.num_embeddings == 6
    assert not contract.is_multi_head(sasrec) and contract.head_count(sasrec) == 1
    assert contract.is_multi_head(odmt) and contract.head_count(odmt) == 3
    assert contract.tunes_on_validation(odmt) and not contract.tunes_on_validation(sasrec)
    assert not contract.starts_from_baseline(odmt)  # the toy config has init_from_baseline: false
    assert isinstance(mp4sr, contract.Phased) and not isinstance(sasrec, contract.Phased)
    contract.set_phase(mp4sr, "pretrain")
    assert mp4sr.phase == "pretrain" and not contract.tunes_on_validation(mp4sr)
    contract.set_phase(sasrec, "train")  # a model without phases: nothing to do
    contract.start_epoch(odmt, 1)


def test_a_model_without_the_contract_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    class NoVectors(nn.Module):
        def __init__(self, config: object, catalog: ItemCatalog, max_seq_len: int) -> None:
            super().__init__()
            self.config, self.num_items, self.max_seq_len = config, catalog.num_items, max_seq_len

    spec = registry.spec("sasrec")
    monkeypatch.setattr(registry, "spec", lambda name: replace(spec, model_cls=NoVectors))
    catalog = ItemCatalog(num_items=5, max_seq_len=4, popularity=torch.zeros(6))
    with pytest.raises(TypeError, match=r"'sasrec' \(NoVectors\) lacks user_vectors, item_vectors"):
        registry.build_model("sasrec", SASRecConfig(), catalog, 4)
