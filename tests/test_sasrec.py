"""SASRec and the shared transformer layers: shapes, causality, padding invariance, masks, the loss."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipeline.catalog import ItemCatalog
from pipeline.config import ModelConfig, load_section
from pipeline.data.dataset import left_pad
from pipeline.models import registry
from pipeline.models.layers import (
    CausalTransformer,
    TransformerBlock,
    causal_padding_mask,
    full_cross_entropy,
    padding_mask,
)
from pipeline.models.sasrec import SASRec, SASRecConfig

NUM_ITEMS = 17
MAX_LEN = 10
REPO = Path(__file__).resolve().parents[1]


def make_model(dropout: float = 0.0, max_len: int = MAX_LEN, seed: int = 0) -> SASRec:
    torch.manual_seed(seed)
    catalog = ItemCatalog(num_items=NUM_ITEMS, max_seq_len=max_len, popularity=torch.zeros(NUM_ITEMS + 1))
    return SASRec(SASRecConfig(hidden_dim=16, num_layers=2, num_heads=2, dropout=dropout), catalog)


def batch_ids() -> torch.Tensor:
    seqs = [np.array([3, 5, 7, 9, 11, 2]), np.array([1, 4]), np.array([8, 8, 16, 17, 5, 6, 2, 1, 3, 12, 14])]
    return torch.from_numpy(left_pad(seqs, MAX_LEN))  # (3, 10); row 2 truncated to its last 10 items


def test_shapes() -> None:
    model = make_model()
    ids = batch_ids()
    targets = torch.roll(ids, -1, dims=1) * (ids != 0)
    out = model({"input_ids": ids, "target_ids": targets})
    assert set(out) == {"loss", "ce"} and out["loss"].shape == ()
    assert model.encode(ids).shape == (3, MAX_LEN, 16)
    assert model.user_vectors(ids).shape == (3, 16)
    assert model.item_vectors().shape == (NUM_ITEMS + 1, 16)


def test_causal_padding_mask_by_hand() -> None:
    mask = causal_padding_mask(torch.tensor([[0, 0, 4, 5]]))[0, 0]  # (L, L)
    expected = torch.tensor(
        [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 1, 1]],
        dtype=torch.bool,
    )
    assert torch.equal(mask, expected)
    full = padding_mask(torch.tensor([[0, 3, 4]]))[0, 0]  # bidirectional over real keys, plus the diagonal
    assert torch.equal(full, torch.tensor([[1, 1, 1], [0, 1, 1], [0, 1, 1]], dtype=torch.bool))


def test_causality_future_items_do_not_change_the_past() -> None:
    model = make_model().eval()
    ids = batch_ids()
    changed = ids.clone()
    changed[:, 7:] = torch.tensor([13, 15, 10])  # new items at positions 7, 8, 9
    with torch.no_grad():
        before, after = model.encode(ids), model.encode(changed)  # (B, L, D)
    torch.testing.assert_close(before[:, :7], after[:, :7], rtol=0, atol=1e-6)
    assert not torch.allclose(before[:, 7:], after[:, 7:])


def test_padding_invariance() -> None:
    model = make_model(max_len=16).eval()
    seqs = [np.array([3, 5, 7, 9, 11, 2]), np.array([1, 4]), np.array([8, 16, 17, 5])]
    short = torch.from_numpy(left_pad(seqs, 6))  # (3, 6)
    long = torch.from_numpy(left_pad(seqs, 16))  # (3, 16): 10 more padding columns
    with torch.no_grad():
        torch.testing.assert_close(model.user_vectors(short), model.user_vectors(long), rtol=0, atol=1e-5)
        torch.testing.assert_close(model.encode(short), model.encode(long)[:, 10:], rtol=0, atol=1e-5)


def test_no_nan_with_fully_padded_rows() -> None:
    model = make_model(dropout=0.3).train()
    ids = batch_ids()
    ids[1] = 0  # a row that is padding everywhere
    targets = torch.roll(ids, -1, dims=1) * (ids != 0)
    loss = model({"input_ids": ids, "target_ids": targets})["loss"]
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    model.eval()
    with torch.no_grad():
        assert torch.isfinite(model.encode(ids)).all()
        assert torch.isfinite(model.user_vectors(torch.zeros(2, 5, dtype=torch.long))).all()


def test_loss_matches_reference_cross_entropy() -> None:
    model = make_model().eval()
    ids = batch_ids()
    targets = torch.roll(ids, -1, dims=1) * (ids != 0)
    targets[:, -1] = torch.tensor([4, 9, 1])
    with torch.no_grad():
        loss = model({"input_ids": ids, "target_ids": targets})["loss"]
        logits = model.encode(ids) @ model.item_vectors().T  # (B, L, N+1): every position, every column
        logits[..., 0] = -torch.inf  # padding is never a candidate
        reference = F.cross_entropy(logits.reshape(-1, NUM_ITEMS + 1), targets.reshape(-1), ignore_index=0)
    torch.testing.assert_close(loss, reference)


def test_chunked_cross_entropy_matches_torch_in_value_and_gradient() -> None:
    torch.manual_seed(0)
    hidden = torch.randn(11, 6, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(7, 6, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 7, (11,))
    loss = full_cross_entropy(hidden, weight, targets, max_logits=20)  # 2 rows per chunk: 6 chunks
    (2.0 * loss).backward()
    grads = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    reference = F.cross_entropy(hidden @ weight.T, targets)
    (2.0 * reference).backward()
    torch.testing.assert_close(loss, reference)
    torch.testing.assert_close(grads, (hidden.grad, weight.grad))
    empty = full_cross_entropy(hidden[:0], weight, targets[:0])
    assert empty.item() == 0.0


def test_ranking_scores_are_the_loss_logits_at_the_last_position() -> None:
    model = make_model().eval()
    ids = batch_ids()
    last = torch.tensor([6, 2, 17])
    targets = torch.zeros_like(ids)
    targets[:, -1] = last  # only the last position has a target
    with torch.no_grad():
        loss = model({"input_ids": ids, "target_ids": targets})["loss"]
        scores = model.user_vectors(ids) @ model.item_vectors().T  # (B, N+1)
    torch.testing.assert_close(loss, F.cross_entropy(scores[:, 1:], last - 1))


def test_item_vectors_are_the_tied_embedding_with_zero_padding_row() -> None:
    model = make_model()
    assert model.item_vectors() is model.item_emb.weight
    assert torch.count_nonzero(model.item_vectors()[0]) == 0


def test_input_longer_than_max_seq_len_is_an_error() -> None:
    with pytest.raises(ValueError, match="max_seq_len"):
        make_model(max_len=4).encode(torch.ones(1, 5, dtype=torch.long))


def test_block_accepts_non_causal_masks_and_other_activations() -> None:
    torch.manual_seed(0)
    block = TransformerBlock(8, num_heads=2, dropout=0.0, activation="relu").eval()
    x = torch.randn(2, 5, 8)
    mask = torch.ones(2, 1, 5, 5, dtype=torch.bool)
    full = block(x, mask)  # (2, 5, 8)
    changed = x.clone()
    changed[:, -1] = torch.randn(2, 8)
    assert not torch.allclose(full[:, 0], block(changed, mask)[:, 0])  # bidirectional: the future matters
    stack = CausalTransformer(2, 8, 2, 0.1, activation="silu", attn_dropout=0.0)
    assert stack(x, mask).shape == (2, 5, 8)
    with pytest.raises(ValueError, match="activation"):
        TransformerBlock(8, 2, 0.0, activation="tanhh")
    with pytest.raises(ValueError, match="divisible"):
        TransformerBlock(10, 3, 0.0)


def test_registered_and_buildable_from_params_yaml() -> None:
    params = REPO / "params.yaml"
    model_cfg = load_section(ModelConfig, "model", params)
    spec = registry.spec("sasrec")
    assert spec.config_cls is SASRecConfig and spec.model_cls is SASRec and spec.needs_features == ()
    # Whatever params.yaml selects, its `model:` keys must build SASRec (not a no-op once another model is chosen).
    config = ModelConfig(name="sasrec", options=model_cfg.options).build(params)
    catalog = ItemCatalog(num_items=NUM_ITEMS, max_seq_len=MAX_LEN, popularity=torch.zeros(NUM_ITEMS + 1))
    model = registry.build_model("sasrec", config, catalog, MAX_LEN)
    assert model.item_vectors().shape == (NUM_ITEMS + 1, config.hidden_dim)
