"""The content-addressed embedding cache: reuse across runs, resumption after an interruption, bad shards ignored."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from pipeline.config import EmbedConfig, EncoderConfig
from pipeline.features.cache import EmbeddingCache, content_digest, item_key
from pipeline.features.embed import embed_items
from pipeline.features.text_encoders import HFTextEncoder
from tests.helpers.data import write_items
from tests.helpers.encoders import make_tiny_bert, titles

IDENTITY = {"encoder": "fake", "max_tokens": 2}


def cache_at(root: Path, shard_size: int = 4) -> EmbeddingCache:
    return EmbeddingCache(root, "text", "fake", IDENTITY, "ab" * 32, shard_size=shard_size)


def rows(n: int, start: int = 0) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    keys = [item_key("id", content_digest(f"text {i}")) for i in range(start, start + n)]
    pooled = np.arange(start, start + n, dtype=np.float32)[:, None].repeat(3, axis=1)  # (n, 3)
    tokens = np.ones((n, 2, 3), dtype=np.float16)  # (n, 2, 3)
    return keys, pooled, tokens, np.ones((n, 2), dtype=bool)


def test_cache_round_trip_and_shard_flushing(tmp_path: Path) -> None:
    cache = cache_at(tmp_path, shard_size=4)
    keys, pooled, tokens, mask = rows(6)
    cache.add(keys[:3], pooled[:3], tokens[:3], mask[:3])
    assert not list(cache.dir.glob("shard-*.npz"))  # buffered below shard_size
    cache.add(keys[3:], pooled[3:], tokens[3:], mask[3:])  # 6 >= 4: written
    assert len(list(cache.dir.glob("shard-*.npz"))) == 1
    cache.add_bad("f" * 64, "UnidentifiedImageError: not an image")
    cache.flush()

    reopened = cache_at(tmp_path)
    assert all(reopened.has(k, need_tokens=True) for k in keys)
    assert reopened.bad == {"f" * 64: "UnidentifiedImageError: not an image"}
    order = [keys[4], keys[0]]
    got = {
        int(p): (pooled_row, tok)
        for pos, pr, tk, _ in reopened.read(order, True)
        for p, pooled_row, tok in zip(pos, pr, tk, strict=True)
    }
    assert got[0][0].tolist() == [4.0] * 3 and got[1][0].tolist() == [0.0] * 3
    assert (reopened.dir / "identity.json").exists()


def test_pooled_only_shards_do_not_serve_token_requests(tmp_path: Path) -> None:
    cache = cache_at(tmp_path)
    keys, pooled, _, _ = rows(2)
    cache.add(keys, pooled)
    cache.flush()
    reopened = cache_at(tmp_path)
    assert reopened.has(keys[0], need_tokens=False) and not reopened.has(keys[0], need_tokens=True)


def test_half_written_and_corrupt_shards_are_ignored(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cache = cache_at(tmp_path)
    keys, pooled, tokens, mask = rows(2)
    cache.add(keys, pooled, tokens, mask)
    good = cache.flush()
    (cache.dir / ".tmp-shard-20250101T000000-deadbeef.npz").write_bytes(good.read_bytes()[:100])  # interrupted
    (cache.dir / "shard-20250101T000000-cafecafe.npz").write_bytes(b"PK\x03\x04 truncated garbage")
    with caplog.at_level(logging.WARNING):
        reopened = cache_at(tmp_path)
    assert len(reopened.index) == 2 and len(reopened.skipped_shards) == 1
    assert "ignoring unreadable shard" in caplog.text


# --- through embed_items -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_bert(tmp_path_factory.mktemp("bert") / "model")


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Counts the texts actually encoded and the model loads."""
    counts = {"encoded": 0, "loads": 0}
    encode, load = HFTextEncoder.encode, HFTextEncoder._load

    def counting_encode(self: HFTextEncoder, texts: list[str], want_tokens: bool):  # noqa: ANN202
        counts["encoded"] += len(texts)
        return encode(self, texts, want_tokens)

    def counting_load(self: HFTextEncoder) -> None:
        counts["loads"] += 1
        load(self)

    monkeypatch.setattr(HFTextEncoder, "encode", counting_encode)
    monkeypatch.setattr(HFTextEncoder, "_load", counting_load)
    return counts


def config(checkpoint: Path, store_tokens: bool = False, max_tokens: int = 8) -> EmbedConfig:
    return EmbedConfig(
        device="cpu",
        text=EncoderConfig("hf", str(checkpoint), None, batch_size=4, max_tokens=max_tokens),
        image=EncoderConfig("none", None, None, batch_size=4, max_tokens=4),
        store_tokens=store_tokens,
    )


def test_rerun_encodes_only_new_items(tmp_path: Path, tiny_bert: Path, spy: dict[str, int]) -> None:
    items, out, cache = tmp_path / "items.parquet", tmp_path / "features", tmp_path / "cache"
    write_items(items, titles(20))
    first = embed_items(items, out, cache, config(tiny_bert))["modalities"]["text"]
    assert spy["encoded"] == 20 and first["encoded"] == 20 and first["cache_hits"] == 0
    vectors_before = np.load(out / "text.npy")

    write_items(items, titles(30))  # 10 new items appended
    spy["encoded"] = 0
    second = embed_items(items, out, cache, config(tiny_bert))["modalities"]["text"]
    assert spy["encoded"] == 10 and second["encoded"] == 10 and second["cache_hits"] == 20
    after = np.load(out / "text.npy")
    np.testing.assert_array_equal(after[:21], vectors_before)  # cached rows are bit-identical

    spy.update(encoded=0, loads=0)
    third = embed_items(items, out, cache, config(tiny_bert))["modalities"]["text"]
    assert spy == {"encoded": 0, "loads": 0}  # nothing new: no encoding, not even a model load
    assert third["cache_hits"] == 30 and third["encoded"] == 0
    np.testing.assert_array_equal(np.load(out / "text.npy"), after)

    fresh = tmp_path / "fresh"
    embed_items(items, fresh, tmp_path / "empty-cache", config(tiny_bert))
    np.testing.assert_allclose(np.load(fresh / "text.npy"), after, atol=1e-6)  # cache = recomputation


def test_duplicate_texts_are_encoded_once(tmp_path: Path, tiny_bert: Path, spy: dict[str, int]) -> None:
    items = write_items(tmp_path / "items.parquet", ["toy story", "heat", "toy story", "", "heat"])
    entry = embed_items(items, tmp_path / "out", tmp_path / "cache", config(tiny_bert))["modalities"]["text"]
    assert spy["encoded"] == 2 and entry["present"] == 4 and entry["missing"] == 1
    vectors = np.load(tmp_path / "out" / "text.npy")
    np.testing.assert_array_equal(vectors[1], vectors[3])


def test_encoder_identity_change_reencodes(tmp_path: Path, tiny_bert: Path, spy: dict[str, int]) -> None:
    items = write_items(tmp_path / "items.parquet", titles(6))
    embed_items(items, tmp_path / "out", tmp_path / "cache", config(tiny_bert, max_tokens=8))
    spy["encoded"] = 0
    embed_items(items, tmp_path / "out", tmp_path / "cache", config(tiny_bert, max_tokens=4))
    assert spy["encoded"] == 6  # max_tokens is part of the key
    assert len(list((tmp_path / "cache").iterdir())) == 2


def test_tokens_toggle_reuses_what_it_can(tmp_path: Path, tiny_bert: Path, spy: dict[str, int]) -> None:
    items = write_items(tmp_path / "items.parquet", titles(5))
    embed_items(items, tmp_path / "out", tmp_path / "cache", config(tiny_bert, store_tokens=False))
    spy["encoded"] = 0
    embed_items(items, tmp_path / "out", tmp_path / "cache", config(tiny_bert, store_tokens=True))
    assert spy["encoded"] == 5  # cached vectors had no tokens
    assert (tmp_path / "out" / "text_tokens.npy").exists()
    spy["encoded"] = 0
    embed_items(items, tmp_path / "out", tmp_path / "cache", config(tiny_bert, store_tokens=False))
    assert spy["encoded"] == 0
    assert not (tmp_path / "out" / "text_tokens.npy").exists()  # stale token files are removed


def test_interrupted_run_resumes_from_written_shards(
    tmp_path: Path, tiny_bert: Path, spy: dict[str, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    items = write_items(tmp_path / "items.parquet", titles(12))
    counting_encode = HFTextEncoder.encode
    calls = {"n": 0}

    def crash_on_third_batch(self: HFTextEncoder, texts: list[str], want_tokens: bool):  # noqa: ANN202
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return counting_encode(self, texts, want_tokens)

    monkeypatch.setattr(HFTextEncoder, "encode", crash_on_third_batch)
    with pytest.raises(KeyboardInterrupt):
        embed_items(items, tmp_path / "out", tmp_path / "cache", config(tiny_bert), shard_size=4)
    assert not (tmp_path / "out" / "manifest.json").exists()  # no manifest for an unfinished run
    assert spy["encoded"] == 8  # two batches of 4 finished and were cached

    monkeypatch.setattr(HFTextEncoder, "encode", counting_encode)
    spy["encoded"] = 0
    entry = embed_items(items, tmp_path / "out", tmp_path / "cache", config(tiny_bert))["modalities"]["text"]
    assert spy["encoded"] == 4 and entry["cache_hits"] == 8
