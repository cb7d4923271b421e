"""MP4SR's "CLIP words" image feature (Zhang et al., arXiv 2303.11879): describe each image by the words of a
vocabulary that CLIP matches best to it, and encode those words with the *text* encoder, so that images are
represented in the text feature space.

Switched on by ``embed.image_words.vocabulary`` (a UTF-8 text file, one word or phrase per line). It needs a
``clip`` image encoder, whose text tower (same arch and checkpoint as ``embed.image``) scores every word put into
``embed.image_words.prompt``, and a text encoder (``embed.text``), which encodes the bare words. The embed stage
computes and caches the CLIP image embeddings exactly as without words; :meth:`ImageWords.write` then reads them
back from ``image.npy`` and replaces the image outputs:

- ``image.npy`` float32 (N+1, d_text): the mean text feature of each item's ``top_k`` words (the authors
  attention-pool the k words inside the model; the mean is the parameter-free stand-in); zero rows where
  ``image_mask.npy`` (unchanged) is False;
- with ``embed.store_tokens``: ``image_tokens.npy`` float16 (N+1, k, d_text), the k words' text features best first,
  and ``image_tokens_mask.npy`` (N+1, k), all True for items with an image;
- ``image_words.parquet``: item_idx, item_id, words (list of str, best first; empty for items without an image).

The word vectors go through the content cache under ``<cache>/image_words-<encoder>-<identity>/`` (keyed by the
encoder identity and the exact string encoded), apart from the item caches, so a rerun encodes no word again.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
import torch.nn.functional as F
from tqdm import tqdm

from pipeline.config import EmbedConfig
from pipeline.features.cache import EmbeddingCache, content_digest, item_key
from pipeline.features.clip_encoders import ClipTextEncoder
from pipeline.features.encoders import Encoder, TextEncoder, sha256_json
from pipeline.io import atomic_path

logger = logging.getLogger(__name__)

KEY = "embed.image_words"
WORDS_FILE = "image_words.parquet"
CACHE_MODALITY = "image_words"
CHUNK_ROWS = 4096  # items scored at once: bounds the (rows, V) score matrix and the (rows, k, d) gathers


def clip_word_features(
    image_clip: torch.Tensor,
    word_clip: torch.Tensor,
    word_text: torch.Tensor,
    k: int,
    present: torch.Tensor | None = None,
    chunk_rows: int = CHUNK_ROWS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The authors' "CLIP words" image feature: describe each image by its top-k vocabulary words.

    ``image_clip`` (N+1, d) CLIP image embeddings, ``word_clip`` (V, d) CLIP text embeddings of the vocabulary
    words (zero-shot prompts), ``word_text`` (V, d_t) the same words encoded by the *text* encoder used for item
    text, so both modalities live in one feature space. ``present`` (N+1,) bool marks items with an image.
    Returns ``(features, top_words)``: (N+1, d_t) the mean text feature of each item's top-k words by cosine
    similarity, zero for padding and for items without an image; and (N+1, k) int64 word indices, best first.
    Items are scored ``chunk_rows`` at a time, so memory stays bounded for large catalogs.
    """
    if not 1 <= k <= len(word_clip):
        raise ValueError(f"k = {k} must be between 1 and the vocabulary size {len(word_clip)}")
    n_rows, device = len(image_clip), image_clip.device
    words = F.normalize(word_clip.float(), dim=-1)  # (V, d)
    table = word_text.float()  # (V, d_t)
    features = torch.zeros(n_rows, table.shape[1], device=device)  # (N+1, d_t)
    top_words = torch.zeros(n_rows, k, dtype=torch.int64, device=device)  # (N+1, k)
    for start in range(0, n_rows, chunk_rows):
        rows = slice(start, start + chunk_rows)
        scores = F.normalize(image_clip[rows].float(), dim=-1) @ words.T  # (C, V)
        top_words[rows] = scores.topk(k, dim=-1).indices  # (C, k)
        features[rows] = table[top_words[rows]].mean(dim=1)  # (C, k, d_t) -> (C, d_t)
    keep = torch.ones(n_rows, dtype=torch.bool, device=device) if present is None else present.clone()
    keep[0] = False
    return features * keep[:, None], top_words


# --- config -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Vocabulary:
    path: Path
    words: list[str]
    sha256: str  # of the file's bytes


def read_vocabulary(value: str) -> Vocabulary:
    """Read ``embed.image_words.vocabulary``: one word or phrase per line, no blank or repeated line."""
    path = Path(value).expanduser()
    if not path.is_file():
        raise ValueError(
            f"{KEY}.vocabulary = {value!r}: no such file (cwd: {Path.cwd()}); give a text file with one word or "
            f"phrase per line, or set {KEY}.vocabulary: null"
        )
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise ValueError(f"{path} ({KEY}.vocabulary) is not UTF-8 text ({error}); save it as UTF-8") from error
    lines = [line.rstrip("\r") for line in text.split("\n")]
    if lines and lines[-1] == "":
        lines.pop()  # the newline that ends the last line
    if not any(line.strip() for line in lines):
        raise ValueError(f"{path} ({KEY}.vocabulary) is empty; put one word or phrase per line")
    words: list[str] = []
    first_line: dict[str, int] = {}
    for number, line in enumerate(lines, start=1):
        word = line.strip()
        if not word:
            raise ValueError(
                f"{path} line {number} is blank ({KEY}.vocabulary: one word or phrase per line); delete it"
            )
        if word in first_line:
            raise ValueError(
                f"{path} line {number}: {word!r} repeats line {first_line[word]} ({KEY}.vocabulary must list each word "
                "once); delete one of them"
            )
        first_line[word] = number
        words.append(word)
    return Vocabulary(path, words, hashlib.sha256(data).hexdigest())


def check_config(config: EmbedConfig) -> Vocabulary:
    """Every ``embed.image_words`` mistake, before any work is done; returns the vocabulary."""
    words = config.image_words
    vocabulary = f"{KEY}.vocabulary = {words.vocabulary!r}"
    if config.image.name != "clip":
        raise ValueError(
            f"{vocabulary} needs embed.image.name: clip (CLIP picks each image's words), but embed.image.name is "
            f"{config.image.name!r}. Set embed.image.name: clip with embed.image.arch and embed.image.checkpoint, or "
            f"{KEY}.vocabulary: null"
        )
    if config.text.name == "none":
        raise ValueError(
            f"{vocabulary} needs a text encoder (the words are encoded as text), but embed.text.name is 'none'. "
            f"Set embed.text.name (e.g. minilm), or {KEY}.vocabulary: null"
        )
    if "{}" not in words.prompt:
        raise ValueError(f"{KEY}.prompt = {words.prompt!r} must contain {{}} where each word goes (a photo of {{}}.)")
    if words.top_k < 1:
        raise ValueError(f"{KEY}.top_k = {words.top_k} must be >= 1 (paper: 15)")
    assert words.vocabulary is not None  # the caller builds ImageWords only when it is set
    vocab = read_vocabulary(words.vocabulary)
    if words.top_k > len(vocab.words):
        raise ValueError(
            f"{KEY}.top_k = {words.top_k} is larger than the vocabulary ({len(vocab.words)} words in {vocab.path}); "
            "lower it or add words"
        )
    return vocab


# --- encoding ---------------------------------------------------------------------------------------------------


def encode_words(encoder: TextEncoder, texts: list[str], cache_dir: Path) -> tuple[np.ndarray, dict[str, Any]]:
    """(V, d) float32 pooled vectors of distinct ``texts``, through the content cache; plus cache counts."""
    identity = encoder.identity()
    identity_hash = sha256_json(identity)
    cache = EmbeddingCache(cache_dir, CACHE_MODALITY, encoder.name, identity, identity_hash)
    keys = [item_key(identity_hash, content_digest(t)) for t in texts]
    out: np.ndarray | None = None

    def put(positions: list[int], pooled: np.ndarray) -> None:
        nonlocal out
        if out is None:
            out = np.zeros((len(texts), pooled.shape[1]), dtype=np.float32)  # (V, d)
        out[positions] = pooled

    hits = [p for p, key in enumerate(keys) if cache.has(key, need_tokens=False)]
    for positions, pooled, _, _ in cache.read([keys[p] for p in hits], need_tokens=False):
        put([hits[p] for p in positions], pooled)
    misses = [p for p, key in enumerate(keys) if not cache.has(key, need_tokens=False)]
    if misses:
        encoder.load()
        bar = tqdm(total=len(misses), desc=f"embed image words ({encoder.param('name')}: {encoder.name})", unit="word")
        try:
            for start in range(0, len(misses), encoder.config.batch_size):
                batch = misses[start : start + encoder.config.batch_size]
                pooled = encoder.encode([texts[p] for p in batch], want_tokens=False).pooled.numpy()  # (B, d)
                cache.add([keys[p] for p in batch], pooled)
                put(batch, pooled)
                bar.update(len(batch))
        finally:
            bar.close()
            cache.flush()
    assert out is not None  # texts is a non-empty vocabulary
    return out, {"identity_hash": identity_hash, "cache_hits": len(hits), "encoded": len(misses)}


# --- the embed-stage step ---------------------------------------------------------------------------------------


def _save(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, array)


def _save_tokens(path: Path, word_text: np.ndarray, top: np.ndarray, present: np.ndarray) -> None:
    """(N+1, k, d_t) float16 word tokens, filled chunk by chunk into a memmap (the full array may not fit in RAM)."""
    rows, k = top.shape
    with atomic_path(path) as tmp:
        tokens = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=(rows, k, word_text.shape[1]))
        for start in range(0, rows, CHUNK_ROWS):
            block = word_text[top[start : start + CHUNK_ROWS]]  # (C, k, d_t)
            block[~present[start : start + CHUNK_ROWS]] = 0.0
            tokens[start : start + CHUNK_ROWS] = block
        tokens.flush()
        del tokens


class ImageWords:
    """The CLIP-words step of the embed stage: checked when built (before any work), applied after the image pass."""

    def __init__(self, config: EmbedConfig, text_encoder: Encoder | None, device: torch.device) -> None:
        self.vocabulary = check_config(config)
        assert isinstance(text_encoder, TextEncoder)  # check_config rejected embed.text.name: none
        self.config = config.image_words
        self.text_encoder = text_encoder
        self.clip_text = ClipTextEncoder(config.image, "image", device)  # CLIP's text tower, embed.image's weights

    def write(
        self,
        entry: dict[str, Any],
        items: pl.DataFrame,
        out_dir: Path,
        cache_dir: Path,
        store_tokens: bool,
        files: dict[str, str],
    ) -> dict[str, Any]:
        """Replace the image embeddings in ``out_dir`` by the words feature; returns the updated manifest entry."""
        start = time.perf_counter()
        words, k = self.vocabulary.words, self.config.top_k
        image_clip = torch.from_numpy(np.load(out_dir / files["pooled"]))  # (N+1, d_clip)
        present = np.load(out_dir / files["mask"])  # (N+1,) bool
        prompts = [self.config.prompt.replace("{}", word) for word in words]
        word_clip, clip_stats = encode_words(self.clip_text, prompts, cache_dir)  # (V, d_clip)
        word_text, text_stats = encode_words(self.text_encoder, words, cache_dir)  # (V, d_t)
        features, top = clip_word_features(
            image_clip, torch.from_numpy(word_clip), torch.from_numpy(word_text), k, torch.from_numpy(present)
        )  # (N+1, d_t), (N+1, k)
        top_np = top.numpy()
        _save(out_dir / files["pooled"], features.numpy())
        d_text = int(features.shape[1])
        if store_tokens:
            _save_tokens(out_dir / files["tokens"], word_text, top_np, present)
            _save(out_dir / files["tokens_mask"], np.repeat(present[:, None], k, axis=1))  # (N+1, k)
        item_words = [[words[w] for w in top_np[row]] if present[row] else [] for row in range(1, len(present))]
        table = pl.DataFrame(
            {
                "item_idx": items["item_idx"],
                "item_id": items["item_id"],
                "words": pl.Series(item_words, dtype=pl.List(pl.String)),
            }
        )
        with atomic_path(out_dir / WORDS_FILE) as tmp:
            table.write_parquet(tmp)

        seconds = time.perf_counter() - start
        encoded = clip_stats["encoded"] + text_stats["encoded"]
        logger.info(
            "embed image: CLIP words, top %d of %d (%s); %d word encodings computed, %d from cache (%.1f s)",
            k,
            len(words),
            self.vocabulary.path,
            encoded,
            clip_stats["cache_hits"] + text_stats["cache_hits"],
            seconds,
        )
        return {
            **entry,
            "representation": "clip_words",
            "clip_dim": int(entry["dim"]),
            "dim": d_text,
            "tokens_file": files["tokens"] if store_tokens else None,
            "tokens_mask_file": files["tokens_mask"] if store_tokens else None,
            "tokens_shape": [k, d_text] if store_tokens else None,
            "tokens_dtype": "float16" if store_tokens else None,
            "image_words": {
                "vocabulary": self.config.vocabulary,
                "vocabulary_sha256": self.vocabulary.sha256,
                "vocabulary_size": len(words),
                "top_k": k,
                "prompt": self.config.prompt,
                "words_file": WORDS_FILE,
                "text_encoder": self.text_encoder.describe(),
                "text_identity_hash": text_stats["identity_hash"],
                "clip_text_identity_hash": clip_stats["identity_hash"],
                "cache_hits": clip_stats["cache_hits"] + text_stats["cache_hits"],
                "encoded": encoded,
                "seconds": round(seconds, 3),
            },
            "seconds": round(entry["seconds"] + seconds, 3),
        }
