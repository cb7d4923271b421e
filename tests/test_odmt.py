"""ODMT: shapes, causality and padding invariance, the ID-aware attention mask, missing modalities, the losses
(cross-entropy, online distillation, fused vs. explicit), the fused ranking score, and a tiny training run."""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

from bench.head_weight_search import exhaustive_gains
from pipeline.catalog import ItemCatalog
from pipeline.config import ConfigError, TrainConfig, from_dict
from pipeline.data.dataset import left_pad
from pipeline.evaluation.fusion import ndcg_at_10_per_weight, simplex_grid
from pipeline.models import losses, registry
from pipeline.models.item_tokens import cap_tokens, packed_layout
from pipeline.models.losses import LossOptions, chunk_logit_grads, head_losses, log_inclusion_probability
from pipeline.models.odmt import (
    ODMT,
    IDAwareMultimodalTransformer,
    ModalityInput,
    ODMTConfig,
    OnlineDistillation,
    distill_ramp,
    id_aware_mask,
)
from pipeline.training.fit import fit
from tests.helpers.odmt import (
    DIM,
    IMAGE_DIM,
    IMAGE_TOKENS,
    MAX_LEN,
    NO_IMAGE,
    NUM_ITEMS,
    ODMT_PARAMS,
    TEXT_DIM,
    TEXT_TOKENS,
    explicit_head_losses,
    make_catalog,
    make_model,
    tiny_split,
)

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parents[1]


def batch_ids() -> torch.Tensor:
    seqs = [np.array([3, 5, 7, 9, 11, 2]), np.array([1, 4]), np.array([8, 8, 16, 17, 5, 6, 2, 1, 3, 12, 14])]
    return torch.from_numpy(left_pad(seqs, MAX_LEN))  # (3, 10); row 2 truncated to its last 10 items


def next_item_batch(ids: torch.Tensor) -> dict[str, torch.Tensor]:
    targets = torch.roll(ids, -1, dims=1) * (ids != 0)  # (B, L)
    targets[:, -1] = torch.tensor([4, 9, 20])[: len(ids)]
    return {"input_ids": ids, "target_ids": targets}


def hidden_states(model: ODMT, ids: torch.Tensor) -> dict[str, torch.Tensor]:
    return model.encode(ids, model.ranking_table(), ids)  # {head: (B, L, D)}


# --- shapes and interface --------------------------------------------------------------------------------------


def test_shapes_and_loss_components() -> None:
    model = make_model()
    out = model(next_item_batch(batch_ids()))
    heads = ("id", "text", "image")
    assert set(out) == {"loss", "kd", "kd_weight", *(f"ce_{h}" for h in heads), *(f"kd_{h}" for h in heads)}
    assert all(v.shape == () and torch.isfinite(v) for v in out.values())
    model.eval()
    assert model.user_vectors(batch_ids()).shape == (3, 3 * DIM)
    items = model.item_vectors()
    assert items.shape == (NUM_ITEMS + 1, 3 * DIM)
    assert torch.count_nonzero(items[0]) == 0  # padding row
    assert all(torch.count_nonzero(items[i]) > 0 for i in range(1, NUM_ITEMS + 1))


@pytest.mark.parametrize("backbone", ["sasrec", "gru4rec"])
def test_causality_future_items_do_not_change_the_past(backbone: str) -> None:
    model = make_model(backbone=backbone).eval()
    ids = batch_ids()
    changed = ids.clone()
    changed[:, 7:] = torch.tensor([13, 15, 10])  # new items at positions 7, 8, 9
    with torch.no_grad():
        before, after = hidden_states(model, ids), hidden_states(model, changed)
    for h in model.heads:
        torch.testing.assert_close(before[h][:, :7], after[h][:, :7], rtol=0, atol=1e-6)
        assert not torch.allclose(before[h][:, 7:], after[h][:, 7:])


@pytest.mark.parametrize("backbone", ["sasrec", "gru4rec"])
def test_padding_invariance(backbone: str) -> None:
    model = make_model(backbone=backbone).eval()
    seqs = [np.array([3, 5, 7, 9, 11, 2]), np.array([1, 4]), np.array([8, 16, 17, 5])]
    short = torch.from_numpy(left_pad(seqs, 6))  # (3, 6)
    long = torch.from_numpy(left_pad(seqs, MAX_LEN))  # (3, 10): 4 more padding columns
    with torch.no_grad():
        torch.testing.assert_close(model.user_vectors(short), model.user_vectors(long), rtol=0, atol=1e-5)
        for h in model.heads:
            torch.testing.assert_close(
                hidden_states(model, short)[h], hidden_states(model, long)[h][:, 4:], rtol=0, atol=1e-5
            )


@pytest.mark.parametrize("softmax", ["full", "in_batch"])
@pytest.mark.parametrize("backbone", ["sasrec", "gru4rec"])
def test_no_nan_with_fully_padded_rows(softmax: str, backbone: str) -> None:
    model = make_model(dropout=0.3, softmax=softmax, backbone=backbone).train()
    batch = next_item_batch(batch_ids())
    batch["input_ids"][1] = 0  # a row that is padding everywhere
    batch["target_ids"][1] = 0
    loss = model(batch)["loss"]
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    with torch.no_grad():
        assert torch.isfinite(model.eval().user_vectors(torch.zeros(2, 5, dtype=torch.long))).all()


def test_input_longer_than_max_seq_len_is_an_error() -> None:
    with pytest.raises(ValueError, match="max_seq_len"):
        make_model().eval().user_vectors(torch.ones(1, MAX_LEN + 1, dtype=torch.long))


# --- the ID-aware multimodal transformer -----------------------------------------------------------------------


def test_id_aware_mask_by_hand() -> None:
    keys = torch.tensor([[True, True, False, True, True]])  # 2 text-side keys, 1 padding, 1 content, the ID last
    mask = id_aware_mask(keys)[0, 0]  # (S, S)
    expected = torch.tensor(
        [
            [1, 1, 0, 1, 0],  # content queries see valid content keys, never the ID key
            [1, 1, 0, 1, 0],
            [1, 1, 0, 1, 0],
            [1, 1, 0, 1, 0],
            [1, 1, 0, 1, 1],  # the ID query sees everything valid
        ],
        dtype=torch.bool,
    )
    assert torch.equal(mask, expected)


def _item_encoder_inputs(model: ODMT) -> tuple[torch.Tensor, dict[str, ModalityInput]]:
    ids = torch.arange(NUM_ITEMS + 1)  # (N+1,)
    return model.id_emb(ids), model.content(ids)


def test_id_token_does_not_reach_text_or_image_vectors() -> None:
    """The mask blocks text/image -> ID attention: changing the ID embeddings changes only the ID vectors."""
    model = make_model().eval()
    encoder: IDAwareMultimodalTransformer = model.item_encoder
    with torch.no_grad():
        id_emb, content = _item_encoder_inputs(model)
        before = encoder(id_emb, content)
        after = encoder(id_emb + torch.randn_like(id_emb), content)
        for m in ("text", "image"):
            torch.testing.assert_close(before[m], after[m], rtol=0, atol=0)
        assert not torch.allclose(before["id"], after["id"])

        # ... while the ID token does read the content tokens.
        content["image"].tokens = content["image"].tokens + 1.0
        changed = encoder(id_emb, content)
        assert not torch.allclose(before["id"], changed["id"])
        assert not torch.allclose(before["text"], changed["text"])  # text and image tokens attend to each other


def test_missing_modality_is_masked_not_zero_filled() -> None:
    """An item without an image: its image tokens and pooled feature are never read; its image vector comes from
    the learned "missing image" summary attending to the item's text tokens."""
    model = make_model().eval()
    item = NO_IMAGE[0]
    with torch.no_grad():
        id_emb, content = _item_encoder_inputs(model)
        before = model.item_encoder(id_emb, content)
        content["image"].tokens[item] = torch.randn(IMAGE_TOKENS, IMAGE_DIM)
        content["image"].token_mask[item] = True  # a wrong token mask is overridden by the modality mask
        content["image"].pooled[item] = torch.randn(IMAGE_DIM)
        after = model.item_encoder(id_emb, content)
        for h in model.heads:
            torch.testing.assert_close(before[h][item], after[h][item], rtol=0, atol=0)
        assert torch.count_nonzero(before["image"][item]) > 0
        model.item_encoder.missing["image"] += torch.randn(DIM)
        assert not torch.allclose(model.item_encoder(id_emb, content)["image"][item], before["image"][item])


def test_two_head_mode_without_images() -> None:
    model = make_model(make_catalog(images=False))
    assert model.heads == ("id", "text")
    out = model(next_item_batch(batch_ids()))
    assert {"ce_id", "ce_text", "kd_text", "kd_id"} <= set(out) and not any("image" in k for k in out)
    out["loss"].backward()
    model.eval()
    assert model.item_vectors().shape == (NUM_ITEMS + 1, 2 * DIM)
    assert model.user_vectors(batch_ids()).shape == (3, 2 * DIM)


def test_no_content_at_all_is_an_error() -> None:
    empty = ItemCatalog(NUM_ITEMS, MAX_LEN, torch.zeros(NUM_ITEMS + 1))
    with pytest.raises(ValueError, match="at least one content modality"):
        make_model(empty)


def test_without_tokens_only_the_no_imt_ablation_builds() -> None:
    catalog = make_catalog(tokens=False)
    with pytest.raises(ValueError, match="store_tokens"):
        make_model(catalog)
    model = make_model(catalog, id_aware_transformer=False)
    assert not hasattr(model.item_encoder, "encoder")  # "w/o IMT": MLPs over the ID and pooled features only
    out = model(next_item_batch(batch_ids()))
    out["loss"].backward()
    assert torch.isfinite(out["loss"])


def test_unused_token_columns_are_trimmed() -> None:
    catalog = make_catalog()
    catalog.tokens["text"] = torch.cat([catalog.tokens["text"], torch.zeros(NUM_ITEMS + 1, 3, TEXT_DIM).half()], 1)
    catalog.token_masks["text"] = torch.cat([catalog.token_masks["text"], torch.zeros(NUM_ITEMS + 1, 3).bool()], 1)
    model = make_model(catalog)
    assert model.text_tokens.shape[1] == TEXT_TOKENS
    torch.testing.assert_close(make_model().eval().item_vectors(), model.eval().item_vectors())


def test_id_embeddings_start_from_content() -> None:
    catalog = make_catalog()
    for m in ("text", "image"):  # items 1 and 2 have the same content
        catalog.features[m][2] = catalog.features[m][1]
    model = make_model(catalog)
    table = model.id_emb.weight.detach()
    torch.testing.assert_close(table[1], table[2])
    assert torch.count_nonzero(table[0]) == 0
    assert table[1:].std().item() == pytest.approx(0.02, rel=0.3)
    random_init = make_model(catalog, id_init="random").id_emb.weight.detach()
    assert not torch.allclose(random_init[1], random_init[2])


# --- losses ----------------------------------------------------------------------------------------------------


def test_kd_is_zero_when_equal_and_grows_with_the_difference() -> None:
    torch.manual_seed(0)
    kd = OnlineDistillation(temperature=0.5, mode="mutual")
    base = torch.randn(6, 9)
    same = kd({"id": base, "text": base.clone(), "image": base.clone()})
    assert set(same) == {"kd_text", "kd_image", "kd_id"}
    for value in same.values():
        assert value.abs().item() < 1e-6
    direction = torch.randn(6, 9)
    values = [kd({"id": base, "text": base + s * direction, "image": base})["kd_text"].item() for s in (0.1, 0.5, 1)]
    assert 0 < values[0] < values[1] < values[2]


def test_kd_is_the_temperature_scaled_kl_divergence() -> None:
    torch.manual_seed(0)
    student, teacher, tau = torch.randn(4, 7), torch.randn(4, 7), 0.3
    q, p = F.softmax(teacher / tau, -1), F.softmax(student / tau, -1)
    expected = tau**2 * (q * (q.log() - p.log())).sum(-1).mean()
    torch.testing.assert_close(OnlineDistillation(tau, "mutual").kd(student, teacher), expected)


def test_detached_teacher_gets_no_kd_gradient() -> None:
    torch.manual_seed(0)
    teacher, student = torch.randn(5, 6, requires_grad=True), torch.randn(5, 6, requires_grad=True)
    OnlineDistillation(0.5, mode="detached").kd(student, teacher).backward()
    assert teacher.grad is None and student.grad.abs().sum() > 0
    teacher2 = teacher.detach().clone().requires_grad_()
    OnlineDistillation(0.5, mode="mutual").kd(student.detach(), teacher2).backward()
    assert teacher2.grad.abs().sum() > 0  # mutual learning


@pytest.mark.parametrize("heads", [3, 2])
@pytest.mark.parametrize("weight", [0.0, 0.7])
@pytest.mark.parametrize("mode", ["mutual", "detached", "one_way"])
@pytest.mark.parametrize("in_batch", [False, True])
@pytest.mark.parametrize("functional", [False, True])
def test_fused_losses_equal_the_explicit_ones(
    heads: int, weight: float, mode: str, in_batch: bool, functional: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The chunked, closed-form-gradient losses equal cross-entropy + OnlineDistillation over explicit logits;
    ``functional``: through :func:`chunk_logit_grads`, the code ``compile_loss`` compiles (run eagerly here)."""
    monkeypatch.setitem(losses._COMPILED, "chunk", chunk_logit_grads)
    torch.manual_seed(heads + 10 * len(mode) + 100 * in_batch)
    count, cols, dim = 50, 13, 6
    hidden = [torch.randn(count, dim, dtype=torch.float64, requires_grad=True) for _ in range(heads)]
    tables = [torch.randn(cols, dim, dtype=torch.float64, requires_grad=True) for _ in range(heads)]
    target_col = torch.randint(0, cols, (count,))
    extra = {}
    if in_batch:
        extra = {
            "column_bias": torch.randn(cols, dtype=torch.float64),
            "seen": torch.rand(4, cols) > 0.6,
            "rows": torch.randint(0, 4, (count,)),
        }
    options = LossOptions(0.4, weight, mode, max_logits=cols * 7, compiled=functional)  # 8 chunks of 7 rows
    fused, fused_parts = head_losses(hidden, tables, target_col, options, **extra)
    explicit, explicit_parts = explicit_head_losses(hidden, tables, target_col, options, **extra)
    torch.testing.assert_close(fused, explicit)
    torch.testing.assert_close(fused_parts, explicit_parts)
    fused_grads = torch.autograd.grad(fused, hidden + tables)
    explicit_grads = torch.autograd.grad(explicit, hidden + tables)
    for a, b in zip(fused_grads, explicit_grads, strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("softmax", ["full", "in_batch"])
def test_distill_weight_zero_is_exactly_the_sum_of_the_cross_entropies(softmax: str) -> None:
    model = make_model(distill_weight=0.0, softmax=softmax).eval()
    batch = next_item_batch(batch_ids())
    with torch.no_grad():
        out = model(batch)
    assert torch.equal(out["loss"], out["ce_id"] + out["ce_text"] + out["ce_image"])
    assert out["kd_weight"].item() == 0.0 and "kd" not in out

    # ... and each CE is the plain full-softmax cross-entropy of that head (here: full softmax).
    if softmax == "full":
        with torch.no_grad():
            table, hidden = model.ranking_table(), hidden_states(model, batch["input_ids"])
            has = batch["target_ids"] > 0
            for h in model.heads:
                logits = hidden[h][has] @ table[h][1:].T  # (P, N)
                expected = F.cross_entropy(logits, batch["target_ids"][has] - 1)
                torch.testing.assert_close(out[f"ce_{h}"], expected)


def test_loss_adds_weighted_kd_with_the_ramp() -> None:
    model = make_model(distill_weight=0.5, distill_ramp_epochs=4).eval()
    batch = next_item_batch(batch_ids())
    for epoch in (1, 2, 4, 9):
        model.on_epoch_start(epoch)
        with torch.no_grad():
            out = model(batch)
        weight = 0.5 * distill_ramp(epoch, 4)
        assert out["kd_weight"].item() == pytest.approx(weight)
        ce = out["ce_id"] + out["ce_text"] + out["ce_image"]
        torch.testing.assert_close(out["loss"], ce + weight * out["kd"])
        torch.testing.assert_close(out["kd"], out["kd_text"] + out["kd_image"] + out["kd_id"])


def test_ramp_schedule() -> None:
    assert distill_ramp(0, 20) == pytest.approx(math.exp(-5.0))
    assert distill_ramp(10, 20) == pytest.approx(math.exp(-5.0 * 0.25))
    assert distill_ramp(20, 20) == 1.0 and distill_ramp(35, 20) == 1.0
    assert distill_ramp(1, 0) == 1.0  # no ramp


def test_in_batch_softmax_masks_own_items_and_corrects_for_popularity() -> None:
    model = make_model(softmax="in_batch")
    ids = torch.tensor([[0, 2, 3, 4], [5, 6, 2, 7]])
    targets = torch.tensor([[0, 3, 4, 9], [6, 2, 7, 11]])
    queries, columns, target_col, extra = model.loss_inputs({"input_ids": ids, "target_ids": targets})
    candidates = torch.tensor([2, 3, 4, 5, 6, 7, 9, 11])  # the batch's items: one column each
    assert all(c.shape == (len(candidates), DIM) for c in columns) and all(q.shape == (7, DIM) for q in queries)
    assert torch.equal(candidates[target_col], targets[targets > 0])
    q = (model.popularity.double() + 1) / (model.popularity.double() + 1).sum()
    draws = 8  # item occurrences in the two windows: the first input of row 1 (5) and the 7 targets
    expected = -torch.log(1 - (1 - q[candidates]) ** draws).float()
    torch.testing.assert_close(extra["column_bias"], expected)
    user0 = torch.tensor([1, 1, 1, 0, 0, 0, 1, 0], dtype=torch.bool)  # items 2, 3, 4, 9
    assert torch.equal(extra["seen"][0], user0)
    assert torch.equal(extra["rows"], torch.tensor([0, 0, 0, 1, 1, 1, 1]))


# --- ranking ---------------------------------------------------------------------------------------------------


def test_in_batch_correction_is_log_q_for_one_draw_and_vanishes_for_items_surely_in_the_batch() -> None:
    popularity = torch.tensor([0.0, 999.0, 99.0, 0.0])
    q = (popularity + 1) / (popularity + 1).sum()
    torch.testing.assert_close(log_inclusion_probability(popularity, 1), torch.log(q))
    many = log_inclusion_probability(popularity, 10_000)
    assert many[1] > -1e-6 and many[2] > -1e-6  # popular items: in the batch almost surely -> no correction
    assert many[3] < many[2]  # a rare item keeps a (smaller) boost
    torch.testing.assert_close(many[3], torch.log(-torch.expm1(10_000 * torch.log1p(-q[3]))))


def test_fused_score_is_one_inner_product() -> None:
    model = make_model(head_weight_id=2.0, head_weight_text=1.0, head_weight_image=1.0).eval()
    ids = batch_ids()
    with torch.no_grad():
        fused = model.user_vectors(ids) @ model.item_vectors().T  # (B, N+1): what FAISS computes
        queries, table = model.head_user_vectors(ids), model.ranking_table()
        scores = {h: queries[h] @ table[h].T for h in model.heads}  # each (B, N+1)
    expected = 0.5 * scores["id"] + 0.25 * scores["text"] + 0.25 * scores["image"]
    torch.testing.assert_close(fused, expected)


def test_single_head_ranks_with_that_head_alone_and_restores_the_fusion() -> None:
    model = make_model(head_weight_id=2.0).eval()
    ids = batch_ids()
    with torch.no_grad():
        fused = model.user_vectors(ids) @ model.item_vectors().T  # (B, N+1)
        queries, table = model.head_user_vectors(ids), model.ranking_table()
        for head in model.heads:
            with model.single_head(head):
                alone = model.user_vectors(ids) @ model.item_vectors().T
            torch.testing.assert_close(alone, queries[head] @ table[head].T)
        torch.testing.assert_close(model.user_vectors(ids) @ model.item_vectors().T, fused)
    with pytest.raises(ValueError, match="no head 'audio'"):
        with model.single_head("audio"):
            pass


def test_ranking_scores_are_the_training_logits_at_the_last_position() -> None:
    model = make_model(distill_weight=0.0).eval()
    ids = batch_ids()
    targets = torch.zeros_like(ids)
    targets[:, -1] = torch.tensor([6, 2, 17])
    with torch.no_grad():
        out = model({"input_ids": ids, "target_ids": targets})
        queries, table = model.head_user_vectors(ids), model.ranking_table()
    for h in model.heads:
        torch.testing.assert_close(out[f"ce_{h}"], F.cross_entropy(queries[h] @ table[h][1:].T, targets[:, -1] - 1))


def test_ranking_table_cache_follows_the_weights() -> None:
    model = make_model()
    batch = next_item_batch(batch_ids())
    model.eval()
    first = model.item_vectors()
    assert model.ranking_table() is model.ranking_table()  # cached in eval mode
    assert not any(t.requires_grad for t in model.train().ranking_table().values())  # never part of a graph
    model.eval()
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
    model(batch)["loss"].backward()
    optimizer.step()
    model.eval()
    second = model.item_vectors()
    assert not torch.allclose(first, second)
    with torch.no_grad():
        model.train()
        fresh = model.eval().item_table()  # built without the cache
    torch.testing.assert_close(second, torch.cat([fresh[h] for h in model.heads], dim=1))


def test_eval_queries_are_encoded_once_per_batch_until_the_weights_change(monkeypatch: pytest.MonkeyPatch) -> None:
    model = make_model()
    ids = batch_ids()
    calls = {"n": 0}
    real = model.encode

    def counting(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        calls["n"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(model, "encode", counting)
    model.eval()
    with torch.no_grad():
        first = model.head_user_vectors(ids)
        model.head_weight.copy_(torch.tensor([0.2, 0.3, 0.5]))  # the fusion weights: queries do not depend on them
        again = model.head_user_vectors(ids.clone())  # the same histories in another tensor
        other = model.head_user_vectors(ids[:2])
    assert calls["n"] == 2 and again is first and len(other["id"]) == 2
    with torch.enable_grad():
        model.head_user_vectors(ids)  # with gradients: never served from the cache
    assert calls["n"] == 3

    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
    model(next_item_batch(ids))["loss"].backward()
    optimizer.step()
    model.eval()
    with torch.no_grad():
        after_step = model.head_user_vectors(ids)
    assert calls["n"] == 5 and not torch.allclose(after_step["text"], first["text"])  # train forward + re-encoded
    monkeypatch.undo()
    with torch.no_grad():
        fresh = make_model().eval()
        fresh.load_state_dict(model.state_dict())
        expected = fresh.head_user_vectors(ids)
    for head in model.heads:
        torch.testing.assert_close(after_step[head], expected[head])


def test_checkpoint_round_trip_keeps_catalog_content_out_of_the_state_dict() -> None:
    model = make_model(seed=1).eval()
    state = model.state_dict()
    assert not any(k.endswith(("_tokens", "_pooled", "_present", "_token_mask", "popularity")) for k in state)
    clone = make_model(seed=2)
    clone.load_state_dict(state)
    clone.eval()
    torch.testing.assert_close(clone.item_vectors(), model.item_vectors())
    torch.testing.assert_close(clone.user_vectors(batch_ids()), model.user_vectors(batch_ids()))


# --- training --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides",
    [{}, {"softmax": "in_batch", "backbone": "gru4rec"}, {"id_aware_transformer": False, "distill_weight": 0.0}],
)
def test_tiny_training_run_lowers_the_loss(overrides: dict) -> None:
    torch.manual_seed(0)
    seqs = [np.array([(u + 3 * k) % NUM_ITEMS + 1 for k in range(8)]) for u in range(12)]  # simple patterns
    ids = torch.from_numpy(left_pad([s[:-1] for s in seqs], MAX_LEN))  # (12, 10)
    targets = torch.from_numpy(left_pad([s[1:] for s in seqs], MAX_LEN))  # (12, 10)
    batch = {"input_ids": ids, "target_ids": targets}
    model = make_model(**overrides)
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-3)

    def eval_loss() -> float:
        model.eval()
        with torch.no_grad():
            return model(batch)["loss"].item()

    before = eval_loss()
    model.train()
    for epoch in range(1, 31):
        model.on_epoch_start(epoch)
        loss = model(batch)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert eval_loss() < 0.75 * before


# --- config ----------------------------------------------------------------------------------------------------


def test_registered_with_the_features_it_needs() -> None:
    spec = registry.spec("odmt")
    assert spec.config_cls is ODMTConfig and spec.model_cls is ODMT
    assert set(spec.needs_features) == {"text", "image", "text_tokens", "image_tokens"}
    assert "pipeline.models.odmt" in registry.MODEL_MODULES, "add pipeline.models.odmt to registry.MODEL_MODULES"


def test_params_yaml_has_every_odmt_key() -> None:
    """Each key must be in params.yaml so that `dvc exp run -S model.distill_weight=0.5` works as written."""
    model_section = yaml.safe_load((REPO / "params.yaml").read_text())["model"]
    listed = set(model_section) | set(model_section["odmt"])  # keys several models read: under model.odmt
    missing = sorted({f.name for f in dataclasses.fields(ODMTConfig)} - listed)
    assert not missing, f"params.yaml `model:` lacks {missing}"
    config = registry.model_config("odmt", {k: v for k, v in model_section.items() if k != "name"})
    assert isinstance(config, ODMTConfig)


def test_strict_config_names_the_key(tmp_path: Path) -> None:
    raw = {"hidden_dim": 16, "num_layers": 1, "num_heads": 2, "dropout": 0.1} | ODMT_PARAMS
    assert from_dict(ODMTConfig, raw, tmp_path / "params.yaml", "model").distill_weight == 1.0
    with pytest.raises(ConfigError, match="model.distill_weight"):
        from_dict(ODMTConfig, {k: v for k, v in raw.items() if k != "distill_weight"}, tmp_path, "model")
    with pytest.raises(ConfigError, match="model.softmax"):
        from_dict(ODMTConfig, raw | {"softmax": "sampled"}, tmp_path, "model")
    with pytest.raises(ValueError, match="model.distill_temperature"):
        make_model(distill_temperature=0.0)
    with pytest.raises(ValueError, match="head_weight"):
        make_model(head_weight_id=0.0, head_weight_text=0.0, head_weight_image=0.0)


# --- extensions and speed levers -------------------------------------------------------------------------------


@pytest.mark.parametrize("caps", [(0, 0), (3, 1)])
def test_packed_item_transformer_equals_the_padded_layout(caps: tuple[int, int]) -> None:
    """No compute on padding tokens (and the last block only at the output positions) changes no output."""
    model = make_model(max_text_tokens=caps[0], max_image_tokens=caps[1]).eval()
    ids = torch.tensor([4, 0, 3, 5, 9, 9, 20])  # a subset with padding, a repeat and items missing a modality
    with torch.no_grad():
        packed_all, packed_some = model.item_table(), model.item_table(ids)
        model.item_encoder.packed = False
        padded_all, padded_some = model.item_table(), model.item_table(ids)
    for h in model.heads:
        torch.testing.assert_close(packed_all[h], padded_all[h], rtol=0, atol=1e-5)
        torch.testing.assert_close(packed_some[h], padded_some[h], rtol=0, atol=1e-5)


def test_packed_layout_by_hand() -> None:
    counts = [torch.tensor([2, 0, 1]), torch.tensor([1, 1, 0])]  # 3 items, 2 modalities: R_0 = 3, R_1 = 2
    groups = packed_layout(counts, items=3, fixed=3, pad=14)  # rows: 9 fixed, 3 + 2 tokens, pad = 14
    assert len(groups) == 1  # fewer items than a group
    members, index = groups[0]
    assert sorted(members.tolist()) == [0, 1, 2]
    by_item = {int(i): row.tolist() for i, row in zip(members, index, strict=True)}
    assert by_item[0] == [0, 3, 6, 9, 10, 12]  # ID, two summaries, 2 tokens of modality 0, 1 of modality 1
    assert by_item[1] == [1, 4, 7, 13, 14, 14]
    assert by_item[2] == [2, 5, 8, 11, 14, 14]


def test_caps_keep_the_first_text_tokens_and_pool_the_image_grid() -> None:
    tokens = torch.arange(2 * 16 * 3, dtype=torch.float32).view(2, 16, 3)  # a 4x4 grid per item
    mask = torch.ones(2, 16, dtype=torch.bool)
    text, text_mask = cap_tokens("text", tokens, mask, 5)
    assert torch.equal(text, tokens[:, :5]) and text_mask.shape == (2, 5)
    image, image_mask = cap_tokens("image", tokens, mask, 4)  # -> 2x2 cells, each the mean of a 2x2 block
    grid = tokens.view(2, 4, 4, 3)
    torch.testing.assert_close(image[:, 0], grid[:, :2, :2].mean(dim=(1, 2)))
    torch.testing.assert_close(image[:, 3], grid[:, 2:, 2:].mean(dim=(1, 2)))
    assert image_mask.all() and cap_tokens("image", tokens, mask, 0)[0] is tokens


def test_residual_id_at_init_is_the_id_embedding() -> None:
    """With residual_id the ID head's item vectors are SASRec's tied embedding at initialisation."""
    model = make_model(residual_id=True, dropout=0.3).train()  # even with dropout on the item side
    table = model.item_table()
    torch.testing.assert_close(table["id"], model.id_emb.weight, rtol=0, atol=0)
    assert torch.count_nonzero(table["id"][0]) == 0


def test_item_dropout_zero_builds_candidates_without_dropout() -> None:
    model = make_model(dropout=0.5, item_dropout=0.0).train()
    first, second = model.item_table(), model.item_table()
    for h in model.heads:
        torch.testing.assert_close(first[h], second[h], rtol=0, atol=0)  # deterministic in train mode
    ids = batch_ids()
    a, b = model.encode(ids, first, ids), model.encode(ids, first, ids)
    assert not torch.allclose(a["id"], b["id"])  # the user encoders keep their input dropout
    authors = make_model(dropout=0.5, item_dropout=None).train()
    assert not torch.allclose(authors.item_table()["text"], authors.item_table()["text"])


def _loss_grads(mode: str, weight: float, matmul_dtype: torch.dtype | None = None) -> tuple:
    torch.manual_seed(3)
    hidden = [torch.randn(40, 6, requires_grad=True) for _ in range(3)]
    tables = [torch.randn(11, 6, requires_grad=True) for _ in range(3)]
    target_col = torch.randint(0, 11, (40,))
    loss, parts = head_losses(hidden, tables, target_col, LossOptions(0.5, weight, mode, matmul_dtype=matmul_dtype))
    return loss, parts, torch.autograd.grad(loss, hidden + tables)


def test_one_way_kd_gives_the_id_head_no_gradient_and_no_term() -> None:
    _, parts, one_way = _loss_grads("one_way", 0.7)
    _, _, no_kd = _loss_grads("one_way", 0.0)
    _, _, mutual = _loss_grads("mutual", 0.7)
    for i in (0, 3):  # the ID head's queries and item vectors: exactly its cross-entropy gradient
        torch.testing.assert_close(one_way[i], no_kd[i], rtol=0, atol=0)
        assert not torch.allclose(mutual[i], no_kd[i])
    assert parts[-1] == 0 and parts[3] > 0 and parts[4] > 0  # kd_id is 0; kd_text, kd_image are not
    assert not torch.allclose(one_way[1], no_kd[1])  # the content heads do learn from the ID head


def test_bf16_logit_matmuls_match_fp32() -> None:
    loss32, parts32, grads32 = _loss_grads("mutual", 0.7)
    loss16, parts16, grads16 = _loss_grads("mutual", 0.7, torch.bfloat16)
    assert loss16.dtype == torch.float32
    torch.testing.assert_close(loss16, loss32, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(parts16, parts32, rtol=3e-2, atol=3e-2)
    for a, b in zip(grads16, grads32, strict=True):
        torch.testing.assert_close(a, b, rtol=5e-2, atol=5e-3)


def test_model_under_bf16_autocast_matches_fp32() -> None:
    model = make_model(residual_id=True, distill_mode="one_way").eval()
    batch = next_item_batch(batch_ids())
    with torch.no_grad():
        fp32 = model(batch)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = model(batch)
    for key in ("loss", "ce_id", "ce_text", "ce_image"):
        torch.testing.assert_close(bf16[key].float(), fp32[key], rtol=2e-2, atol=2e-2)


def test_simplex_grid() -> None:
    grid = simplex_grid(3, 0.05)
    assert grid.shape == (231, 3)  # C(22, 2)
    torch.testing.assert_close(grid.sum(dim=1), torch.ones(231, dtype=torch.float64))
    assert {tuple(r) for r in simplex_grid(2, 0.5).tolist()} == {(1.0, 0.0), (0.5, 0.5), (0.0, 1.0)}


def test_ndcg_per_weight_by_hand() -> None:
    # 2 users, items 0..4 (0 = padding, excluded); head 0 ranks the target first, head 1 ranks it third
    s0 = torch.tensor([[0.0, 5.0, 1.0, 2.0, 0.0], [0.0, 1.0, 9.0, 3.0, 2.0]])
    s1 = torch.tensor([[0.0, 1.0, 3.0, 2.0, 0.0], [0.0, 1.0, 0.0, 3.0, 2.0]])
    targets = torch.tensor([1, 2])
    exclude = torch.zeros(2, 5, dtype=torch.bool)
    exclude[:, 0] = True
    exclude[1, 3] = True  # user 1 has seen item 3: it is not ranked
    grid = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    gains = ndcg_at_10_per_weight([s0, s1], targets, exclude, grid)
    # w = (1, 0): both targets rank 0 -> 1 + 1. w = (0, 1): user 0 rank 2 (items 2, 3 above), user 1 rank 2 (1, 4)
    torch.testing.assert_close(gains, torch.tensor([2.0, 2 / math.log2(4)], dtype=torch.float64))


def test_ndcg_per_weight_pruning_matches_brute_force() -> None:
    # the pruned search (users with >= 10 items ahead in every head dropped, only contested items fused) must give
    # exactly the brute-force fused ranks: random scores with ties, targets strong in one head and weak in another
    gen = torch.Generator().manual_seed(0)
    users, items, heads = 300, 60, 3
    scores = [torch.randint(0, 25, (users, items + 1), generator=gen).float() for _ in range(heads)]
    targets = torch.randint(1, items + 1, (users,), generator=gen)
    scores[0][torch.arange(100), targets[:100]] = 100.0  # head 0 ranks these targets first, the others do not
    exclude = torch.rand(users, items + 1, generator=gen) < 0.2
    exclude[:, 0] = True
    grid = simplex_grid(heads, 0.1)
    expected = exhaustive_gains(scores, targets, exclude, grid)  # every user, every item (bench.head_weight_search)
    gains = ndcg_at_10_per_weight(scores, targets, exclude, grid)
    torch.testing.assert_close(gains, expected)
    assert expected.min() < expected.max()  # the weights matter on this data


def test_validation_head_weights_are_chosen_on_valid_only_and_kept_in_the_checkpoint(tmp_path: Path) -> None:
    cfg = TrainConfig(0, "cpu", 2, 16, 0.01, 0.0, 5, 1.0, 1)
    results, states = [], []
    for shift in (0, 7):  # different test targets: nothing may change
        model = make_model(head_weights="validation", residual_id=True, distill_mode="one_way")
        results.append(fit(model, tiny_split(shift), cfg, MAX_LEN, tmp_path / str(shift)))
        states.append(model.state_dict())
    chosen = results[0].selected_on_validation["choice"]
    assert chosen == results[1].selected_on_validation["choice"]
    assert sum(chosen.values()) == pytest.approx(1.0) and set(chosen) == {"id", "text", "image"}
    assert all(round(w / 0.05, 6).is_integer() for w in chosen.values())  # a grid point
    assert results[0].best_valid["NDCG@10"] >= results[0].selected_on_validation["valid_before"]["NDCG@10"] - 1e-9
    torch.testing.assert_close(states[0]["head_weight"], states[1]["head_weight"])
    checkpoint = torch.load(tmp_path / "0" / "model.pt", weights_only=True)
    torch.testing.assert_close(
        checkpoint["state_dict"]["head_weight"].double(), torch.tensor(list(chosen.values())).double()
    )


def test_fixed_head_weights_select_nothing() -> None:
    model = make_model(head_weight_id=2.0)
    assert not model.selects_on_validation and model.head_weights == pytest.approx(
        {"id": 0.5, "text": 0.25, "image": 0.25}
    )


@pytest.mark.slow
def test_compiled_loss_matches_eager() -> None:
    """compile_loss: torch.compile of the chunk arithmetic gives the eager numbers (compiles once: slow)."""
    eager = _loss_grads("mutual", 0.7)
    torch.manual_seed(3)
    hidden = [torch.randn(40, 6, requires_grad=True) for _ in range(3)]
    tables = [torch.randn(11, 6, requires_grad=True) for _ in range(3)]
    target_col = torch.randint(0, 11, (40,))
    options = LossOptions(0.5, 0.7, "mutual", compiled=True)
    loss, parts = head_losses(hidden, tables, target_col, options)
    torch.testing.assert_close(loss, eager[0])
    torch.testing.assert_close(parts, eager[1])
    for a, b in zip(torch.autograd.grad(loss, hidden + tables), eager[2], strict=True):
        torch.testing.assert_close(a, b)


# --- content_max_seq_len (speed lever) -----------------------------------------------------------------------


def test_content_heads_read_only_the_most_recent_items() -> None:
    """With content_max_seq_len = 3 the content heads' last hidden state ignores older items; the ID head does not."""
    model = make_model(distill_mode="one_way", content_max_seq_len=3).eval()
    ids = batch_ids()
    changed = ids.clone()
    changed[2, 0] = 13  # an item older than the last 3 of row 2
    before, after = model.head_user_vectors(ids), model.head_user_vectors(changed)
    for h in ("text", "image"):
        torch.testing.assert_close(before[h][2], after[h][2])
    assert not torch.allclose(before["id"][2], after["id"][2])
    full = make_model(distill_mode="one_way", content_max_seq_len=MAX_LEN).eval()
    plain = make_model(distill_mode="one_way").eval()
    torch.testing.assert_close(full.user_vectors(ids), plain.user_vectors(ids))  # N >= L: the same model


def _recent_reference(model: ODMT, batch: dict[str, torch.Tensor], recent: int) -> tuple[torch.Tensor, ...]:
    """The loss content_max_seq_len = ``recent`` must compute, built the plain autograd way from the model's own
    hidden states: ID CE over every position + (every head's CE and the KD terms of ``model``'s distill_mode over
    explicit logits on the last ``recent`` columns) - the ID CE on those. Returns (loss, ID CE, recent parts)."""
    ids, targets = batch["input_ids"], batch["target_ids"]  # (B, L) each
    table = model.item_table()  # {head: (N+1, D)}
    hidden = model.encode(ids, table, ids)  # {head: (B, L_h, D)}: content heads (B, recent, D)
    columns = [table[h][1:] for h in model.heads]  # H x (N, D)
    has, kept = targets > 0, targets[:, -recent:] > 0  # (B, L), (B, recent)
    ce_id = F.cross_entropy(hidden["id"][has] @ columns[0].T, targets[has] - 1)  # every position
    queries = [hidden["id"][:, -recent:][kept]] + [hidden[h][kept] for h in model.modalities]  # H x (R, D)
    target_recent = targets[:, -recent:][kept] - 1  # (R,)
    options = LossOptions(model.config.distill_temperature, model.config.distill_weight, model.config.distill_mode)
    loss_recent, parts = explicit_head_losses(queries, columns, target_recent, options)
    ce_id_recent = F.cross_entropy(queries[0] @ columns[0].T, target_recent)  # counted once: in ce_id
    return ce_id + loss_recent - ce_id_recent, ce_id, parts


@pytest.mark.parametrize("mode", ["mutual", "detached", "one_way"])
def test_content_max_seq_len_loss_is_id_ce_everywhere_plus_content_and_kd_terms_on_recent_positions(
    mode: str,
) -> None:
    """Every distill_mode: the loss, its logged parts and every parameter's gradient equal the reference's (the
    ID head gets the KD terms of its mode on the recent positions, its CE once over all positions)."""
    model = make_model(distill_mode=mode, content_max_seq_len=4, distill_weight=0.8).eval()
    batch = next_item_batch(batch_ids())
    assert int((batch["target_ids"][:, :-4] > 0).sum()) > 0  # older positions exist: the split is exercised
    out = model(batch)
    expected, ce_id, parts = _recent_reference(model, batch, 4)
    torch.testing.assert_close(out["loss"], expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out["ce_id"], ce_id.detach())
    for i, h in enumerate(("text", "image")):
        torch.testing.assert_close(out[f"ce_{h}"], parts[1 + i])
        torch.testing.assert_close(out[f"kd_{h}"], parts[3 + i])
    torch.testing.assert_close(out["kd_id"], parts[5])
    assert (out["kd_id"] > 0) == (mode != "one_way")
    params = [p for p in model.parameters() if p.requires_grad]
    got = torch.autograd.grad(out["loss"], params, allow_unused=True)
    want = torch.autograd.grad(expected, params, allow_unused=True)
    for p, a, b in zip(params, got, want, strict=True):
        torch.testing.assert_close(
            torch.zeros_like(p) if a is None else a, torch.zeros_like(p) if b is None else b, rtol=1e-4, atol=1e-6
        )
    # N >= L: exactly the model without the lever
    same = make_model(distill_mode=mode, content_max_seq_len=MAX_LEN, distill_weight=0.8).eval()(batch)
    torch.testing.assert_close(same["loss"], make_model(distill_mode=mode, distill_weight=0.8).eval()(batch)["loss"])


def _id_head_grads(mode: str, weight: float) -> list[torch.Tensor]:
    """Gradients of the ID head's own parameters (its user encoder and item MLP) under content_max_seq_len = 4."""
    model = make_model(distill_mode=mode, content_max_seq_len=4, distill_weight=weight).eval()
    own = [*model.user_encoders["id"].parameters(), *model.item_encoder.mlp["id"].parameters()]
    return list(torch.autograd.grad(model(next_item_batch(batch_ids()))["loss"], own))


@pytest.mark.parametrize("mode", ["mutual", "detached", "one_way"])
def test_content_max_seq_len_gives_the_id_head_its_kd_gradient_except_in_one_way(mode: str) -> None:
    without, with_kd = _id_head_grads(mode, 0.0), _id_head_grads(mode, 0.8)
    same = all(torch.allclose(a, b, rtol=1e-5, atol=1e-7) for a, b in zip(without, with_kd, strict=True))
    assert same == (mode == "one_way")


def test_content_max_seq_len_needs_the_full_softmax() -> None:
    message = (
        "model.content_max_seq_len = 4 needs model.softmax: full; "
        "set model.content_max_seq_len: 0 with model.softmax: in_batch"
    )
    with pytest.raises(ValueError, match=re.escape(message)):
        make_model(softmax="in_batch", content_max_seq_len=4)
    for mode in ("mutual", "detached"):  # every distill_mode is fine now
        assert make_model(distill_mode=mode, content_max_seq_len=4).config.content_max_seq_len == 4


def test_content_max_seq_len_defaults_to_50_in_the_config_and_params_yaml() -> None:
    assert ODMTConfig().content_max_seq_len == 50
    assert yaml.safe_load((REPO / "params.yaml").read_text())["model"]["content_max_seq_len"] == 50


@pytest.mark.parametrize("functional", [False, True])
def test_fused_losses_weigh_each_heads_cross_entropy(functional: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """LossOptions.ce_weights scales each head's CE in the loss and its gradient; parts keep the plain means."""
    monkeypatch.setitem(losses._COMPILED, "chunk", chunk_logit_grads)
    torch.manual_seed(7)
    hidden = [torch.randn(30, 5, dtype=torch.float64, requires_grad=True) for _ in range(3)]
    tables = [torch.randn(9, 5, dtype=torch.float64, requires_grad=True) for _ in range(3)]
    target_col = torch.randint(0, 9, (30,))
    options = LossOptions(0.4, 0.7, "mutual", max_logits=9 * 7, compiled=functional, ce_weights=(0.3, 1.0, 0.0))
    fused, fused_parts = head_losses(hidden, tables, target_col, options)
    explicit, explicit_parts = explicit_head_losses(hidden, tables, target_col, options)
    torch.testing.assert_close(fused, explicit)
    torch.testing.assert_close(fused_parts, explicit_parts)
    grads = torch.autograd.grad(fused, hidden + tables), torch.autograd.grad(explicit, hidden + tables)
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b)
    _, plain_parts = head_losses(hidden, tables, target_col, replace(options, ce_weights=None))
    torch.testing.assert_close(fused_parts, plain_parts)
    with pytest.raises(ValueError, match="ce_weights has 2 weights for 3 heads"):
        head_losses(hidden, tables, target_col, replace(options, ce_weights=(1.0, 1.0)))


def test_init_from_baseline_makes_the_id_head_the_sasrec_at_step_zero() -> None:
    """Extension init_from_baseline + residual_id: the ID head's scores equal the trained SASRec's exactly."""
    from pipeline.models.sasrec import SASRec, SASRecConfig

    catalog = make_catalog()
    torch.manual_seed(5)
    sasrec = SASRec(SASRecConfig(hidden_dim=DIM, num_layers=2, num_heads=2, dropout=0.0), catalog).eval()
    model = make_model(catalog, residual_id=True, init_from_baseline=True).eval()
    model.init_id_head_from_sasrec(sasrec.state_dict(), "baseline.pt")
    ids = batch_ids()
    with model.single_head("id"):
        scores = model.user_vectors(ids) @ model.item_vectors().T  # (B, N+1)
    torch.testing.assert_close(scores, sasrec.user_vectors(ids) @ sasrec.item_vectors().T, rtol=1e-5, atol=1e-5)
    wide = SASRec(SASRecConfig(hidden_dim=2 * DIM, num_layers=2, num_heads=2, dropout=0.0), catalog)
    with pytest.raises(ValueError, match="baseline.pt: SASRec `item_emb.weight`.*hidden_dim"):
        model.init_id_head_from_sasrec(wide.state_dict(), "baseline.pt")
    with pytest.raises(ValueError, match="residual_id: true"):
        make_model(catalog, residual_id=False).init_id_head_from_sasrec(sasrec.state_dict(), "baseline.pt")
