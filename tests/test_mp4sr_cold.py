"""MP4SR's cold-start extensions (pipeline/models/mp4sr.py): ID dropout in fine-tuning, a cold-item score offset
chosen on validation only, and a frozen transformer while fine-tuning."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from pipeline.data.splits import UserSplit
from pipeline.models.mp4sr import MP4SR, ndcg_at_10_per_offset
from pipeline.training.fit import fit
from tests.helpers.mp4sr import CONFIG, N_ITEMS, batch, make_catalog, make_model
from tests.helpers.training import train_cfg

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors run fastest on one thread

COLD = (29, 30)  # items without training interactions in the catalog below


def test_id_dropout_zeroes_a_share_of_the_ids_in_training_only() -> None:
    model = make_model(config=dataclasses.replace(CONFIG, id_dropout=0.5), unseen=COLD)
    model.train()
    torch.manual_seed(0)
    zero_rows = torch.stack([model.id_table().abs().sum(dim=1) == 0 for _ in range(200)])  # (200, N+1)
    warm = zero_rows[:, 1:29].float().mean()
    assert 0.45 < warm < 0.55  # each warm item's ID is dropped with p = 0.5
    assert zero_rows[:, [0, *COLD]].all()  # padding and cold items never have an ID
    model.eval()
    assert torch.equal(model.id_table(), model.id_emb.weight * model.seen[:, None])  # ranking: every ID


def test_id_dropout_is_one_draw_shared_by_inputs_and_candidates() -> None:
    model = make_model(config=dataclasses.replace(CONFIG, id_dropout=0.5, dropout=0.0, adaptor_dropout=0.0))
    model.train()
    calls = []
    original = model.id_table
    model.id_table = lambda: calls.append(1) or original()  # type: ignore[method-assign]
    model(batch())
    assert len(calls) == 1  # one table feeds both the input sequence and the softmax candidates


def test_ndcg_per_offset_by_hand() -> None:
    scores = torch.tensor([[3.0, 2.0, 1.0, 0.0]])  # one user; items 0..3, item 3 cold, target 3
    cold = torch.tensor([0.0, 0.0, 0.0, 1.0])
    exclude = torch.tensor([[True, False, False, False]])  # item 0 = padding
    gains = ndcg_at_10_per_offset(scores, cold, torch.tensor([3]), exclude, torch.tensor([0.0, 1.5, 2.5]))
    # offset 0: items 1 and 2 score higher (rank 2); 1.5: item 1 only (rank 1); 2.5: none (rank 0)
    assert gains.tolist() == pytest.approx([1 / np.log2(4), 1 / np.log2(3), 1.0])
    weighted = ndcg_at_10_per_offset(scores, cold, torch.tensor([3]), exclude, torch.tensor([0.0]), torch.tensor([3.0]))
    assert weighted.tolist() == pytest.approx([3 / np.log2(4)])


def test_the_weight_of_cold_targets_moves_the_chosen_offset() -> None:
    plain, _ = trained(cold_split())  # 6 of 24 valid targets are cold: a large offset pays
    warm_only, _ = trained(cold_split(), cold_offset_weight=1e-3)  # cold targets barely count
    assert float(warm_only.cold_offset) < float(plain.cold_offset)


def cold_split(test_shift: int = 0, cold_users: int = 6) -> UserSplit:
    """24 users over items 1..28 in training; items 29/30 are the valid targets of the first ``cold_users`` users
    (cold-validation items)."""
    rng = np.random.default_rng(0)
    seqs = [rng.choice(np.arange(1, 29), size=int(rng.integers(5, 11)), replace=False) for _ in range(24)]
    valid = np.array([s[-2] for s in seqs])
    valid[:cold_users] = [29, 30] * (cold_users // 2) + [29] * (cold_users % 2)
    return UserSplit(
        user_idx=np.arange(24),
        train=[s[:-2] for s in seqs],
        valid_target=valid,
        test_target=np.array([(s[-1] + test_shift - 1) % 28 + 1 for s in seqs]),
    )


def trained(split: UserSplit, **config: float) -> tuple[MP4SR, dict]:
    torch.manual_seed(0)
    model = MP4SR(dataclasses.replace(CONFIG, cold_offset="validation", **config), make_catalog(unseen=COLD))
    result = fit(model, split, train_cfg(seed=3, epochs=2, batch_size=8, lr=1e-2), 12, out_dir=None)
    return model, result.selected_on_validation


def test_cold_offset_is_chosen_on_validation_only_and_moves_only_cold_scores() -> None:
    model, selected = trained(cold_split())
    offset = float(model.cold_offset)
    assert selected["choice"]["cold_offset"] == offset != 0.0  # the 6 cold valid targets pull it up
    other, other_selected = trained(cold_split(test_shift=5))  # other test targets: same choice, same weights
    assert float(other.cold_offset) == offset and other_selected == selected
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), other.state_dict().values(), strict=True))
    model.eval()
    with torch.no_grad():
        users, items = model.user_vectors(batch()["input_ids"]), model.item_vectors()  # (B, 2D+1), (N+1, 2D+1)
        model.cold_offset.zero_()
        base = model.user_vectors(batch()["input_ids"]) @ model.item_vectors().T
    shift = (users @ items.T) - base  # (B, N+1)
    assert torch.allclose(shift[:, list(COLD)], torch.full((4, 2), offset), atol=1e-5)
    assert torch.allclose(shift[:, 1:29], torch.zeros(4, 28), atol=1e-5)


def test_frozen_transformer_keeps_the_backbone_while_the_rest_fine_tunes() -> None:
    model = make_model(config=dataclasses.replace(CONFIG, freeze_transformer=True))
    model.set_phase("train")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    model(batch())["loss"].backward()
    optimizer.step()
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("backbone."))
    assert not torch.equal(before["id_emb.weight"], after["id_emb.weight"])
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("adaptors."))
    model.set_phase("pretrain")  # pre-training always trains the transformer
    assert all(p.requires_grad for p in model.backbone.parameters())


def test_checkpoints_without_the_offset_load_unchanged() -> None:
    assert "cold_offset" not in make_model().state_dict()  # default cold_offset: none adds no state
    assert make_model().item_vectors().shape == (N_ITEMS + 1, 2 * CONFIG.hidden_dim)


def test_a_cold_offset_weight_without_the_offset_is_an_error() -> None:
    with pytest.raises(ValueError, match="cold_offset_weight = 3.0 is read only with model.cold_offset: validation"):
        make_model(config=dataclasses.replace(CONFIG, cold_offset_weight=3.0))
