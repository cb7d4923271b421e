"""MP4SR's "CLIP words" image feature: the pure function, and the embed stage with a tiny local open_clip checkpoint
(which picks the words) and the packaged minilm text encoder (which encodes them)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
import yaml
from PIL import Image
from typer.testing import CliRunner

from pipeline.config import EmbedConfig, EncoderConfig, ImageWordsConfig
from pipeline.features.clip_words import WORDS_FILE, clip_word_features, read_vocabulary
from pipeline.features.embed import embed_items
from pipeline.features.encoders import build_encoder
from stages.embed import app
from tests.helpers.data import write_dataset
from tests.helpers.encoders import TINY_CLIP, make_tiny_clip

REPO = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")
VOCAB = ["toy", "story", "heat", "casino", "comedy", "drama", "space", "war"]
K = 3
PROMPT = "a photo of {}."
PRESENT = [False, True, True, True, True, True, False, False, False]  # padding; 5 images; corrupt, missing, null


def words_config(
    checkpoint: Path,
    vocabulary: Path | None,
    top_k: int = K,
    store_tokens: bool = True,
    prompt: str = PROMPT,
    image: str = "clip",
    text: str = "minilm",
) -> EmbedConfig:
    return EmbedConfig(
        device="cpu",
        text=EncoderConfig(text, None, None, batch_size=4, max_tokens=16),
        image=EncoderConfig(image, str(checkpoint), TINY_CLIP, batch_size=4, max_tokens=4)
        if image == "clip"
        else EncoderConfig(image, None, None, batch_size=4, max_tokens=4),
        store_tokens=store_tokens,
        image_words=ImageWordsConfig(None if vocabulary is None else str(vocabulary), top_k, prompt),
    )


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("clip_words")
    prepared = write_dataset(root)
    checkpoint = make_tiny_clip(root)
    vocabulary = root / "vocab.txt"
    vocabulary.write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    features = root / "features"
    manifest = embed_items(prepared / "items.parquet", features, root / "cache", words_config(checkpoint, vocabulary))
    return {
        "root": root,
        "items": prepared / "items.parquet",
        "checkpoint": checkpoint,
        "vocabulary": vocabulary,
        "features": features,
        "manifest": manifest,
    }


def text_vectors() -> dict[str, np.ndarray]:
    """The vocabulary encoded on its own by the text encoder of ``words_config``."""
    encoder = build_encoder(EncoderConfig("minilm", None, None, batch_size=4, max_tokens=16), "text", CPU)
    pooled = encoder.encode(VOCAB, want_tokens=False).pooled.numpy()  # (V, 384)
    return dict(zip(VOCAB, pooled, strict=True))


# --- the function -----------------------------------------------------------------------------------------------


def test_clip_words_pick_the_best_matching_words_and_encode_them_as_text() -> None:
    image_clip = torch.tensor([[0.0, 0.0], [1.0, 0.1], [0.0, 1.0], [0.7, 0.7]])  # (N+1, 2): padding + 3 items
    word_clip = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.6, 0.8]])  # (V, 2)
    word_text = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0], [0, 0, 3.0]])  # (V, 3)
    feats, top = clip_word_features(image_clip, word_clip, word_text, k=2, present=torch.tensor([0, 1, 1, 0]).bool())
    assert top[1].tolist() == [0, 3] and top[2].tolist() == [1, 3]
    assert torch.allclose(feats[1], torch.tensor([0.5, 0.0, 1.5])) and torch.allclose(
        feats[2], torch.tensor([0, 0.5, 1.5])
    )
    assert not feats[0].any() and not feats[3].any()  # padding and an item without an image
    with pytest.raises(ValueError, match="vocabulary size"):
        clip_word_features(image_clip, word_clip, word_text, k=5)


def test_clip_words_in_chunks_equal_one_pass() -> None:
    gen = torch.Generator().manual_seed(0)
    image_clip, word_clip = torch.randn(11, 8, generator=gen), torch.randn(20, 8, generator=gen)
    word_text = torch.randn(20, 5, generator=gen)
    whole = clip_word_features(image_clip, word_clip, word_text, k=4)
    chunked = clip_word_features(image_clip, word_clip, word_text, k=4, chunk_rows=3)
    assert torch.equal(whole[1], chunked[1]) and torch.allclose(whole[0], chunked[0])
    assert not whole[0][0].any() and whole[0][1:].abs().sum(dim=1).gt(0).all()


def test_vocabulary_accepts_bom_crlf_and_padding_spaces(tmp_path: Path) -> None:
    path = tmp_path / "vocab.txt"
    path.write_bytes("\ufefftoy\r\n  science fiction \r\nwar".encode())
    vocabulary = read_vocabulary(str(path))
    assert vocabulary.words == ["toy", "science fiction", "war"]
    assert vocabulary.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


# --- the embed stage --------------------------------------------------------------------------------------------


def test_image_feature_is_the_mean_text_feature_of_each_items_words(setup: dict) -> None:
    features = setup["features"]
    image, mask = np.load(features / "image.npy"), np.load(features / "image_mask.npy")
    assert image.shape == (9, 384) and image.dtype == np.float32  # the text encoder's dim, not CLIP's 16
    assert mask.tolist() == PRESENT  # unchanged: unreadable images stay masked
    table = pl.read_parquet(features / WORDS_FILE)
    assert table.columns == ["item_idx", "item_id", "words"]
    assert table["item_idx"].to_list() == list(range(1, 9)) and table["item_id"].to_list()[0] == "m1"
    vectors = text_vectors()
    for row, words in zip(table["item_idx"], table["words"].to_list(), strict=True):
        if not PRESENT[row]:
            assert words == [] and not image[row].any()
            continue
        assert len(words) == K and len(set(words)) == K and set(words) <= set(VOCAB)
        expected = np.mean([vectors[w] for w in words], axis=0)
        np.testing.assert_allclose(image[row], expected, atol=1e-5)
    assert not image[0].any()


def test_words_are_clips_best_matches_for_each_image(setup: dict) -> None:
    checkpoint = setup["checkpoint"]
    image_cfg = EncoderConfig("clip", str(checkpoint), TINY_CLIP, batch_size=4, max_tokens=4)
    image_enc, text_enc = build_encoder(image_cfg, "image", CPU), build_encoder(image_cfg, "text", CPU)
    paths = pl.read_parquet(setup["items"])["image_path"].to_list()[:5]  # the five readable images
    image_enc.load()
    pixels = torch.stack([image_enc.preprocess(Image.open(p)) for p in paths])  # (5, 3, 32, 32)
    image_clip = image_enc.encode(pixels, want_tokens=False).pooled  # (5, 16)
    word_clip = text_enc.encode([PROMPT.replace("{}", w) for w in VOCAB], want_tokens=False).pooled  # (V, 16)
    scores = (image_clip @ word_clip.T).numpy()  # (5, V) cosine: both are L2-normalised
    listed = pl.read_parquet(setup["features"] / WORDS_FILE)["words"].to_list()[:5]
    for item_scores, words in zip(scores, listed, strict=True):
        chosen = [item_scores[VOCAB.index(w)] for w in words]
        others = [s for w, s in zip(VOCAB, item_scores, strict=True) if w not in words]
        assert all(a >= b - 1e-5 for a, b in zip(chosen, chosen[1:], strict=False))  # best first
        assert min(chosen) >= max(others) - 1e-5  # the top k of the vocabulary


def test_tokens_are_the_words_text_features(setup: dict) -> None:
    features = setup["features"]
    tokens, token_mask = np.load(features / "image_tokens.npy"), np.load(features / "image_tokens_mask.npy")
    assert tokens.shape == (9, K, 384) and tokens.dtype == np.float16
    assert token_mask.shape == (9, K) and token_mask.tolist() == [[p] * K for p in PRESENT]
    vectors = text_vectors()
    listed = pl.read_parquet(features / WORDS_FILE)["words"].to_list()
    for row in range(1, 9):
        if PRESENT[row]:
            expected = np.stack([vectors[w] for w in listed[row - 1]])  # (K, 384), best first
            np.testing.assert_allclose(tokens[row].astype(np.float32), expected, atol=2e-3)
        else:
            assert not tokens[row].any()
    assert not tokens[0].any()
    np.testing.assert_allclose(tokens.astype(np.float32).mean(axis=1), np.load(features / "image.npy"), atol=2e-3)


def test_manifest_records_the_words_feature(setup: dict) -> None:
    image = setup["manifest"]["modalities"]["image"]
    assert image["representation"] == "clip_words" and image["encoder"] == "clip"
    assert (image["dim"], image["clip_dim"], image["tokens_shape"]) == (384, 16, [K, 384])
    assert (image["present"], image["missing"], image["corrupt"]) == (5, 2, 1)
    words = image["image_words"]
    assert words["vocabulary"] == str(setup["vocabulary"])
    assert words["vocabulary_sha256"] == hashlib.sha256(setup["vocabulary"].read_bytes()).hexdigest()
    assert (words["vocabulary_size"], words["top_k"], words["prompt"]) == (8, K, PROMPT)
    assert words["words_file"] == WORDS_FILE and words["text_encoder"]["encoder"] == "minilm"
    assert (words["encoded"], words["cache_hits"]) == (16, 0)  # 8 prompts through CLIP + 8 words through minilm
    assert setup["manifest"]["params"]["image_words"]["top_k"] == K
    assert "representation" not in setup["manifest"]["modalities"]["text"]


def test_rerun_hits_the_cache_and_switching_off_restores_the_embedding(setup: dict, tmp_path: Path) -> None:
    out, cache = tmp_path / "features", setup["root"] / "cache"
    again = embed_items(setup["items"], out, cache, words_config(setup["checkpoint"], setup["vocabulary"]))
    image = again["modalities"]["image"]
    assert image["encoded"] == 0 and (image["image_words"]["encoded"], image["image_words"]["cache_hits"]) == (0, 16)
    for name in ("image.npy", "image_mask.npy", "image_tokens.npy", "image_tokens_mask.npy"):
        np.testing.assert_array_equal(np.load(out / name), np.load(setup["features"] / name))
    assert pl.read_parquet(out / WORDS_FILE).equals(pl.read_parquet(setup["features"] / WORDS_FILE))

    off = embed_items(setup["items"], out, cache, words_config(setup["checkpoint"], None, store_tokens=False))
    image = off["modalities"]["image"]
    assert image["representation"] == "embedding" and "image_words" not in image
    assert image["dim"] == 16 and image["encoded"] == 0  # the CLIP image embeddings, straight from the cache
    vectors = np.load(out / "image.npy")
    assert vectors.shape == (9, 16) and np.allclose(np.linalg.norm(vectors[PRESENT], axis=1), 1.0, atol=1e-5)
    assert not (out / WORDS_FILE).exists() and not (out / "image_tokens.npy").exists()


def test_stage_reads_image_words_from_params(setup: dict, tmp_path: Path) -> None:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["embed"].update(device="cpu", store_tokens=False)
    params["embed"]["text"].update(name="minilm", checkpoint=None, max_tokens=16)
    params["embed"]["image"].update(name="clip", checkpoint=str(setup["checkpoint"]), arch=TINY_CLIP, max_tokens=4)
    params["embed"]["image_words"].update(vocabulary=str(setup["vocabulary"]), top_k=2)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    args = ["--params", str(tmp_path / "params.yaml"), "--items", str(setup["items"])]
    args += ["--out", str(tmp_path / "features"), "--cache", str(setup["root"] / "cache")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "image: CLIP words (top 2 of 8) dim 384, 5/8 present" in result.output
    assert pl.read_parquet(tmp_path / "features" / WORDS_FILE)["words"].list.len().to_list()[:5] == [2] * 5


@pytest.mark.parametrize(
    ("change", "vocab_text", "message"),
    [
        (
            {"image": "efficientnet_lite0"},
            None,
            r"embed\.image_words\.vocabulary = '.*vocab\.txt' needs embed\.image\.name: clip .*'efficientnet_lite0'",
        ),
        ({"text": "none"}, None, r"embed\.image_words\.vocabulary = .* but embed\.text\.name is 'none'"),
        ({"vocabulary": "nope.txt"}, None, r"embed\.image_words\.vocabulary = '.*nope\.txt': no such file"),
        ({}, "", r"vocab\.txt \(embed\.image_words\.vocabulary\) is empty"),
        ({}, "\n  \n", r"vocab\.txt \(embed\.image_words\.vocabulary\) is empty"),
        ({}, "toy\n\nwar\n", r"vocab\.txt line 2 is blank"),
        ({}, "toy\nwar\n toy\n", r"vocab\.txt line 3: 'toy' repeats line 1"),
        ({}, b"toy\n\xff\xfe\n", r"vocab\.txt \(embed\.image_words\.vocabulary\) is not UTF-8"),
        ({"top_k": 0}, None, r"embed\.image_words\.top_k = 0 must be >= 1"),
        ({"top_k": 9}, None, r"embed\.image_words\.top_k = 9 is larger than the vocabulary \(8 words in .*vocab\.txt"),
        ({"prompt": "a photo"}, None, r"embed\.image_words\.prompt = 'a photo' must contain \{\}"),
    ],
)
def test_config_errors_name_the_key_file_and_line(
    setup: dict, tmp_path: Path, change: dict, vocab_text: str | bytes | None, message: str
) -> None:
    vocabulary, change = setup["vocabulary"], dict(change)
    if vocab_text is not None:
        vocabulary = tmp_path / "vocab.txt"
        vocabulary.write_bytes(vocab_text if isinstance(vocab_text, bytes) else vocab_text.encode())
    if "vocabulary" in change:
        vocabulary = tmp_path / change.pop("vocabulary")
    config = words_config(setup["checkpoint"], vocabulary, **change)
    out = tmp_path / "features"
    with pytest.raises(ValueError, match=message):
        embed_items(setup["items"], out, tmp_path / "cache", config)
    assert not out.exists()  # checked before any work
