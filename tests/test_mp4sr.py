"""MP4SR: adaptor, mixup, item drop, losses against hand-computed values, scoring contract, pre-train -> fine-tune."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

from pipeline.config import ConfigError
from pipeline.data.splits import UserSplit
from pipeline.models import registry
from pipeline.models.configs import PRETRAIN_KEYS
from pipeline.models.mp4sr import (
    MP4SR,
    ComplementaryMixup,
    MoEAdaptor,
    MP4SRConfig,
    info_nce,
    nt_xent,
    random_item_drop,
)
from pipeline.training.pretrain import PretrainConfig, init_from_pretrained, pretrain, write_marker
from tests.helpers.mp4sr import CONFIG, N_ITEMS, TAU, batch, make_catalog, make_model
from tests.helpers.training import train_cfg

# ---------------------------------------------------------------------------------------------------------------
# Parts


pytestmark = pytest.mark.usefixtures("one_thread")


def test_moe_gate_is_a_distribution_and_mixes_the_experts() -> None:
    torch.manual_seed(0)
    moe = MoEAdaptor(in_dim=6, out_dim=5, num_experts=3, dropout=0.0)
    x = torch.randn(7, 6)
    assert torch.allclose(moe.gates(x), torch.full((7, 3), 1 / 3))  # the gate starts uniform
    torch.nn.init.normal_(moe.gate.weight)
    gates = moe.gates(x)  # (7, 3)
    assert torch.allclose(gates.sum(-1), torch.ones(7)) and (gates > 0).all()
    assert not torch.allclose(gates, torch.full((7, 3), 1 / 3))
    # The output is the gate-weighted sum of per-expert Linear + LayerNorm.
    weight = moe.experts.weight.view(3, 5, 6)
    bias = moe.experts.bias.view(3, 5)
    expected = sum(gates[:, e : e + 1] * F.layer_norm(x @ weight[e].T + bias[e], (5,)) for e in range(3))
    assert torch.allclose(moe(x), expected, atol=1e-5)


def test_mixup_never_touches_padding_and_swaps_at_the_expected_rate() -> None:
    torch.manual_seed(0)
    mixup = ComplementaryMixup(max_prob=0.5).train()
    ids = torch.randint(1, 50, (64, 100))  # (B, L)
    ids[:, :30] = 0  # left padding
    text, image = torch.randn(64, 100, 4), torch.randn(64, 100, 4)
    mixed_text, mixed_image, swap = mixup(text, image, ids, prob=0.3)
    assert not swap[ids == 0].any()
    assert torch.equal(mixed_text[ids == 0], text[ids == 0]) and torch.equal(mixed_image[ids == 0], image[ids == 0])
    rate = swap[ids != 0].float().mean().item()
    assert abs(rate - 0.3) < 0.02  # 4480 real positions: sd of the rate ~0.007
    assert torch.equal(mixed_text[swap], image[swap]) and torch.equal(mixed_image[swap], text[swap])
    assert torch.equal(mixed_text[~swap], text[~swap]) and torch.equal(mixed_image[~swap], image[~swap])
    # The drawn probability is U(0, max_prob): over many batches the mean swap rate is max_prob / 2.
    rates = [mixup(text, image, ids)[2][ids != 0].float().mean().item() for _ in range(200)]
    assert max(rates) <= 0.5 + 0.03 and abs(np.mean(rates) - 0.25) < 0.03
    mixup.eval()
    out_text, out_image, swap = mixup(text, image, ids)
    assert out_text is text and out_image is image and not swap.any()


def test_random_item_drop_keeps_order_alignment_and_the_last_pair() -> None:
    torch.manual_seed(0)
    seq = torch.arange(1, 41).repeat(50, 1)  # (50, 40) items 1..40 in order
    seq[:10, :25] = 0  # some short users
    inputs, targets = seq[:, :-1], seq[:, 1:] * (seq[:, :-1] != 0)
    new_inputs, new_targets = random_item_drop(inputs, targets, max_prob=1.0)
    assert new_inputs.shape == inputs.shape
    dropped_any = False
    for row in range(50):
        kept = new_inputs[row][new_inputs[row] != 0].tolist() + [int(new_targets[row, -1])]
        original = seq[row][seq[row] != 0].tolist()
        assert kept == sorted(kept) and set(kept) <= set(original)  # a sub-sequence, in order
        assert kept[-2:] == original[-2:]  # the last (input, target) pair survives
        dropped_any |= len(kept) < len(original)
        # Targets are the next kept item, and there is none where the input is padding.
        real = new_inputs[row] != 0
        assert torch.equal(new_targets[row][real][:-1], new_inputs[row][real][1:])
        assert not new_targets[row][~real].any()
    assert dropped_any
    assert random_item_drop(inputs, targets, 0.0)[0] is inputs


# ---------------------------------------------------------------------------------------------------------------
# Losses


def test_info_nce_removes_same_target_false_negatives() -> None:
    """In-batch targets [7, 7, 9]: for row 0, column 1 holds the same item, so it is not a negative."""
    torch.manual_seed(0)
    tau = 0.5  # keeps the hand-computed float64 values and torch's float32 ones comparable
    query = F.normalize(torch.randn(3, 4), dim=-1)
    keys = F.normalize(torch.randn(3, 4), dim=-1)
    items = torch.tensor([7, 7, 9])
    positive = torch.arange(3)
    loss = info_nce(query, keys, positive, tau, items, items)
    s = (query @ keys.T / tau).tolist()
    rows = [
        -math.log(math.exp(s[0][0]) / (math.exp(s[0][0]) + math.exp(s[0][2]))),
        -math.log(math.exp(s[1][1]) / (math.exp(s[1][1]) + math.exp(s[1][2]))),
        -math.log(math.exp(s[2][2]) / sum(math.exp(v) for v in s[2])),
    ]
    assert loss.item() == pytest.approx(sum(rows) / 3, rel=1e-5)
    # Row 0 does not depend on the key of the other sequence with the same next item.
    moved = keys.clone()
    moved[1] = -keys[1]
    row0 = info_nce(query[:1], moved, positive[:1], tau, items[:1], items)
    assert row0.item() == pytest.approx(rows[0], rel=1e-5)
    # Without duplicates it is the plain in-batch softmax cross-entropy.
    distinct = torch.tensor([1, 2, 3])
    plain = F.cross_entropy(query @ keys.T / tau, positive)
    assert info_nce(query, keys, positive, tau, distinct, distinct).item() == pytest.approx(plain.item(), rel=1e-6)
    assert info_nce(query, keys, positive, tau).item() == pytest.approx(plain.item(), rel=1e-6)


def test_nt_xent_is_symmetric_and_minimal_for_identical_views() -> None:
    torch.manual_seed(0)
    a = F.normalize(torch.randn(5, 8), dim=-1)
    b = F.normalize(torch.randn(5, 8), dim=-1)
    assert nt_xent(a, b, None, TAU).item() == pytest.approx(nt_xent(b, a, None, TAU).item(), rel=1e-6)
    # Identical orthonormal views: positive cosine 1, 2B - 2 negatives at cosine 0.
    eye = torch.eye(5, 8)
    expected = math.log(1 + (2 * 5 - 2) * math.exp(-1 / 0.5))  # tau 0.5: a value float32 resolves well
    assert nt_xent(eye, eye, None, 0.5).item() == pytest.approx(expected, rel=1e-5)
    # Any other second view of the same anchors is worse.
    for noise in (0.1, 0.5):
        other = F.normalize(eye + noise * torch.randn(5, 8), dim=-1)
        assert nt_xent(eye, other, None, TAU) > nt_xent(eye, eye, None, TAU)
    assert nt_xent(eye, eye[[1, 2, 3, 4, 0]], None, TAU) > nt_xent(eye, eye, None, TAU)


def test_nt_xent_removes_users_with_the_same_next_item() -> None:
    torch.manual_seed(0)
    a = F.normalize(torch.randn(3, 4), dim=-1)
    b = F.normalize(torch.randn(3, 4), dim=-1)
    items = torch.tensor([5, 5, 6])  # users 0 and 1 share the next item: not negatives of each other
    z = torch.cat([a, b])
    s = (z @ z.T / TAU).tolist()
    allowed = {0: [3, 2, 5], 1: [4, 2, 5], 2: [5, 0, 1, 3, 4], 3: [0, 2, 5], 4: [1, 2, 5], 5: [2, 0, 1, 3, 4]}
    expected = np.mean([-s[i][c[0]] + math.log(sum(math.exp(s[i][j]) for j in c)) for i, c in allowed.items()])
    assert nt_xent(a, b, items, TAU).item() == pytest.approx(expected, rel=1e-5)


# ---------------------------------------------------------------------------------------------------------------
# The model


def test_config_is_strict_and_validated() -> None:
    options = {f.name: getattr(CONFIG, f.name) for f in dataclasses.fields(CONFIG)}
    shared = registry.shared_keys()
    scoped = {k: v for k, v in options.items() if k not in shared} | {
        "mp4sr": {k: v for k, v in options.items() if k in shared}
    }
    assert registry.model_config("mp4sr", scoped) == CONFIG
    with pytest.raises(ConfigError, match="missing key `model.cm_weight`"):
        registry.model_config("mp4sr", {k: v for k, v in scoped.items() if k != "cm_weight"})
    with pytest.raises(ValueError, match="model.temperature"):
        MP4SR(dataclasses.replace(CONFIG, temperature=0.0), make_catalog())
    with pytest.raises(ValueError, match="embed.image.name"):
        MP4SR(CONFIG, dataclasses.replace(make_catalog(), features={"text": make_catalog().features["text"]}))
    assert set(PRETRAIN_KEYS) < set(options)


@pytest.mark.parametrize("phase", ["pretrain", "train"])
def test_each_phase_returns_named_finite_losses_that_train(phase: str) -> None:
    model = make_model()
    model.set_phase(phase)
    out = model(batch())
    expected = {"loss", "ni_text", "ni_image", "cm"} if phase == "pretrain" else {"loss", "ce"}
    assert set(out) == expected and all(torch.isfinite(v) for v in out.values())
    if phase == "pretrain":
        total = out["ni_text"] + out["ni_image"] + CONFIG.cm_weight * out["cm"]
        assert out["loss"].item() == pytest.approx(total.item(), rel=1e-6)
    out["loss"].backward()
    assert model.backbone.pos_emb.weight.grad is not None
    assert model.adaptors["text"].experts.weight.grad.abs().sum() > 0
    assert (model.id_emb.weight.grad is not None) == (phase == "train")  # ID embeddings: fine-tuning only
    with pytest.raises(ValueError, match="phase"):
        model.set_phase("finetune")


@pytest.mark.parametrize("phase", ["pretrain", "train"])
def test_user_times_item_vectors_is_the_fine_tuning_logit(phase: str) -> None:
    """The FAISS inner product equals (cos(text) + cos(image)) / tau, the logits fine-tuning trains."""
    model = make_model().eval()
    model.set_phase(phase)
    ids = batch()["input_ids"]
    scores = model.user_vectors(ids) @ model.item_vectors().T  # (B, N+1)
    text, image = model.content_tables()
    if phase == "train":
        text, image = text + model.id_emb.weight, image + model.id_emb.weight
    h_text, h_image = model.backbone((text[ids], image[ids]), ids)
    expected = (
        F.cosine_similarity(h_text[:, -1, None], text[None], dim=-1)
        + F.cosine_similarity(h_image[:, -1, None], image[None], dim=-1)
    ) / TAU
    assert torch.allclose(scores[:, 1:], expected[:, 1:], atol=1e-4)
    # Fine-tuning: with only the last position as a target, the loss is the cross-entropy of those scores.
    if phase == "train":
        targets = torch.zeros_like(ids)
        targets[:, -1] = torch.tensor([3, 4, 5, 6])
        loss = model({"input_ids": ids, "target_ids": targets})["loss"]
        assert loss.item() == pytest.approx(F.cross_entropy(scores[:, 1:], targets[:, -1] - 1).item(), rel=1e-5)


def test_outputs_ignore_extra_left_padding_and_the_future() -> None:
    model = make_model().eval()
    ids = batch()["input_ids"]
    padded = torch.cat([torch.zeros(4, 3, dtype=ids.dtype), ids], dim=1)
    assert torch.allclose(model.user_vectors(ids), model.user_vectors(padded), atol=1e-5)
    text, image = model.content_tables()
    changed = ids.clone()
    changed[:, -1] = 1
    before = model.backbone((text[ids], image[ids]), ids)[0][:, :-1]
    after = model.backbone((text[changed], image[changed]), changed)[0][:, :-1]
    assert torch.allclose(before, after, atol=1e-6)


def test_cold_items_have_no_id_embedding_and_are_never_negatives() -> None:
    cold = (29, 30)
    model = make_model(unseen=cold).eval()
    data = batch()
    data["target_ids"][data["target_ids"] >= 29] = 28  # training never targets a cold item
    data["input_ids"][data["input_ids"] >= 29] = 27
    loss = model(data)["loss"]
    text_only = model.content_tables()[0]
    with torch.no_grad():
        model.id_emb.weight[list(cold)] += 5.0
    assert model(data)["loss"].item() == pytest.approx(loss.item(), rel=1e-6)
    items = model.item_vectors()  # cold rows are content-only
    assert torch.allclose(items[29, :16], F.normalize(text_only[29], dim=-1), atol=1e-6)
    assert not torch.allclose(items[5, :16], F.normalize(text_only[5], dim=-1), atol=1e-3)


def test_cold_items_borrow_the_ids_of_their_content_neighbours_at_ranking_time_only() -> None:
    cold = (29, 30)
    config = dataclasses.replace(CONFIG, cold_id_neighbours=3)
    model = make_model(config=config, unseen=cold)
    data = batch()
    data["target_ids"][data["target_ids"] >= 29] = 28
    data["input_ids"][data["input_ids"] >= 29] = 27
    zero_model = make_model(unseen=cold)  # same seed and weights, cold_id_neighbours = 0
    losses = []
    for m in (model, zero_model):
        torch.manual_seed(7)  # same dropout masks
        losses.append(m(data)["loss"].item())
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)  # training is untouched

    model.eval()
    with torch.no_grad():
        text, image = model.content_tables()
        ids = model.neighbour_ids_for_cold_items(model.id_table(), text, image)
        content = F.normalize(torch.cat([F.normalize(text, dim=-1), F.normalize(image, dim=-1)], dim=-1), dim=-1)
        warm = model.seen_items
        for item in cold:
            top = (content[item] @ content[warm].T).topk(3)
            weights = torch.softmax(top.values / 0.1, dim=0)
            expected = (weights[:, None] * model.id_emb.weight[warm[top.indices]]).sum(dim=0)
            torch.testing.assert_close(ids[item], expected)
        torch.testing.assert_close(ids[warm], model.id_table()[warm])  # warm rows untouched
        assert not ids[0].any()  # padding stays zero
        items = model.item_vectors()
        zero_items = zero_model.eval().item_vectors()
    torch.testing.assert_close(items[warm], zero_items[warm])
    assert not torch.allclose(items[29], zero_items[29])  # the cold row now carries borrowed ID information
    with pytest.raises(ValueError, match="cold_id_neighbours"):
        make_model(config=dataclasses.replace(CONFIG, cold_id_neighbours=-1))


def test_missing_modality_uses_a_learned_vector() -> None:
    model = make_model(no_image=(4, 5))
    with torch.no_grad():
        model.missing["image"].fill_(0.5)
    _, image = model.content_tables()
    assert torch.equal(image[4], torch.full((16,), 0.5)) and torch.equal(image[5], image[4])
    assert not torch.equal(image[6], image[4]) and not image[0].any()


# ---------------------------------------------------------------------------------------------------------------
# Pre-train -> fine-tune hand-off


def tiny_split(users: int = 24, seed: int = 0) -> UserSplit:
    rng = np.random.default_rng(seed)
    seqs = [rng.choice(np.arange(1, N_ITEMS + 1), size=int(rng.integers(5, 11)), replace=False) for _ in range(users)]
    return UserSplit(
        user_idx=np.arange(users),
        train=[s[:-2] for s in seqs],
        valid_target=np.array([s[-2] for s in seqs]),
        test_target=np.array([s[-1] for s in seqs]),
    )


TRAIN = train_cfg(seed=3, epochs=1, batch_size=8, lr=1e-3, patience=1)
PRETRAIN = PretrainConfig(enabled=True, epochs=2, batch_size=8, lr=1e-2, weight_decay=0.0, patience=2, grad_clip=1.0)


def test_pretrain_checkpoint_hands_over_everything_but_id_embeddings(tmp_path: Path) -> None:
    path = tmp_path / "pretrain.pt"
    model = make_model(seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = pretrain(model, tiny_split(), PRETRAIN, TRAIN, 12, path)
    assert model.phase == "train" and result.epochs_run >= 1
    assert {"train/ni_text", "train/ni_image", "train/cm", "valid/NDCG@10"} <= set(result.history[0])
    assert not torch.equal(model.backbone.pos_emb.weight, before["backbone.pos_emb.weight"])  # it learned
    assert torch.equal(model.id_emb.weight, before["id_emb.weight"])  # ID embeddings are untouched in pre-training

    fresh = make_model(seed=1)
    assert init_from_pretrained(fresh, path)
    for key, value in fresh.state_dict().items():
        if key.startswith("id_emb."):
            assert not torch.equal(value, model.state_dict()[key])  # fine-tuning initialises its own
        else:
            assert torch.equal(value, model.state_dict()[key]), key

    other = make_model(seed=1, config=dataclasses.replace(CONFIG, num_experts=2))
    with pytest.raises(ValueError, match="model.num_experts"):
        init_from_pretrained(other, path)
    # A fine-tuning-only key may differ.
    assert init_from_pretrained(make_model(config=dataclasses.replace(CONFIG, finetune_id_embeddings=False)), path)


def test_marker_means_train_from_scratch(tmp_path: Path) -> None:
    write_marker(tmp_path / "pretrain.pt", "pretrain.enabled is false")
    first = (tmp_path / "pretrain.pt").read_bytes()
    write_marker(tmp_path / "pretrain.pt", "pretrain.enabled is false")
    assert (tmp_path / "pretrain.pt").read_bytes() == first  # unchanged params leave downstream stages cached
    model = make_model()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    assert not init_from_pretrained(model, tmp_path / "pretrain.pt")
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    with pytest.raises(FileNotFoundError, match="dvc repro pretrain"):
        init_from_pretrained(model, tmp_path / "missing.pt")


def test_pretraining_is_deterministic(tmp_path: Path) -> None:
    losses = []
    for run in range(2):
        model = make_model(seed=0)
        result = pretrain(model, tiny_split(), PRETRAIN, TRAIN, 12, tmp_path / f"{run}.pt")
        losses.append([row["train/loss"] for row in result.history])
    assert losses[0] == losses[1]


def test_repository_params_and_registry_know_mp4sr() -> None:
    """params.yaml holds every MP4SR key and a `pretrain` section; the registry imports the model by itself."""
    raw = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text(encoding="utf-8"))
    listed = set(raw["model"]) | set(raw["model"]["mp4sr"])  # keys several models read: under model.mp4sr
    missing = sorted({f.name for f in dataclasses.fields(MP4SRConfig)} - listed)
    assert not missing, f"params.yaml `model:` lacks {missing}"
    assert set(raw.get("pretrain", {})) == {f.name for f in dataclasses.fields(PretrainConfig)}
    assert "pipeline.models.mp4sr" in registry.MODEL_MODULES
