"""Encoding what the embedding cache misses: shards of unique inputs, cut into batches, each shard flushed at once.

:func:`shard_batches` cuts the inputs into shards (``embed.shard_size``) and each shard into encoder batches, so a
shard is complete as soon as its last batch is encoded; :func:`encode_missing` encodes this process's shards into the
cache (texts straight from the strings; images decoded in a thread pool while the batch before is encoded). A killed
run keeps every shard it finished.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from tqdm import tqdm

from pipeline.data.images import checked_image
from pipeline.features.cache import EmbeddingCache
from pipeline.features.encoders import Encoded, Encoder, ImageEncoder, TextEncoder
from pipeline.features.inputs import IO_WORKERS
from pipeline.features.ranks import Ranks

_IMAGE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)


def _decode_image(path: str, encoder: ImageEncoder, root: Path | None) -> tuple[torch.Tensor | None, str | None]:
    """Read, decode and preprocess one image; (None, reason) when it is corrupt or now resolves outside ``root``."""
    checked, status = checked_image(path, root)  # checked again: the file may have been replaced since hashing
    if checked is None:
        return None, status
    try:
        with Image.open(checked) as image:
            image.draft("RGB", (448, 448))  # JPEG: decode at a reduced scale that still covers the model input
            image.load()
            return encoder.preprocess(image), None
    except _IMAGE_ERRORS as error:
        return None, f"{type(error).__name__}: {error}"


def _batches(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def shard_batches(num_items: int, shard_size: int, batch_size: int) -> tuple[list[list[int]], list[int]]:
    """Positions ``0..num_items-1`` in shards of ``shard_size``, each cut into batches of at most ``batch_size``.

    Returns ``(batches, shard_of)``: the batches in order and the shard number of each; a batch never spans two
    shards, so a shard is complete as soon as its last batch is encoded.
    """
    batches: list[list[int]] = []
    shard_of: list[int] = []
    for shard, start in enumerate(range(0, num_items, shard_size)):
        positions = list(range(start, min(num_items, start + shard_size)))
        for batch in _batches(positions, batch_size):
            batches.append(batch)
            shard_of.append(shard)
    return batches, shard_of


def _encode_texts(
    encoder: TextEncoder, texts: list[str], batches: list[list[int]], want_tokens: bool
) -> Iterator[tuple[int, list[int], Encoded | None]]:
    """Yield (batch number, positions in ``texts`` encoded, outputs) per batch."""
    for b, batch in enumerate(batches):
        yield b, batch, encoder.encode([texts[i] for i in batch], want_tokens)


def _encode_images(
    encoder: ImageEncoder,
    paths: list[str],
    batches: list[list[int]],
    want_tokens: bool,
    corrupt: dict[int, str],
    root: Path | None = None,
) -> Iterator[tuple[int, list[int], Encoded | None]]:
    """Decode the next batch in a thread pool while the current one is encoded; yield (batch number, positions
    encoded, outputs or None when the whole batch was corrupt). Corrupt positions go to ``corrupt`` before the
    batch is yielded."""
    with ThreadPoolExecutor(IO_WORKERS) as pool:

        def submit(batch: list[int]) -> list[Future]:
            return [pool.submit(_decode_image, paths[i], encoder, root) for i in batch]

        pending = submit(batches[0]) if batches else []
        for b, batch in enumerate(batches):
            futures, pending = pending, (submit(batches[b + 1]) if b + 1 < len(batches) else [])
            good, pixels = [], []
            for pos, future in zip(batch, futures, strict=True):
                tensor, reason = future.result()
                if tensor is None:
                    corrupt[pos] = reason or "unreadable"
                else:
                    good.append(pos)
                    pixels.append(tensor)
            yield b, good, (encoder.encode(torch.stack(pixels), want_tokens) if good else None)  # (B, 3, H, W) in


def dummy_output(encoder: Encoder, want_tokens: bool) -> Encoded:
    """Dims when no item has the modality: encode one blank input."""
    if isinstance(encoder, TextEncoder):
        return encoder.encode(["-"], want_tokens)
    encoder.load()
    return encoder.encode(encoder.preprocess(Image.new("RGB", (224, 224))).unsqueeze(0), want_tokens)


def encode_missing(
    modality: str,
    encoder: Encoder,
    keys: list[str],
    sources: list[str],
    cache: EmbeddingCache,
    store_tokens: bool,
    shard_size: int,
    ranks: Ranks,
    root: Path | None = None,
) -> None:
    """Encode this process's shards of ``sources`` (cache keys ``keys``) into ``cache``, one flushed shard at a time.

    Corrupt images are recorded in the shard too, so a rerun counts them without decoding them again.
    """
    batches, shard_of = shard_batches(len(keys), shard_size, encoder.config.batch_size)
    mine = [b for b, shard in enumerate(shard_of) if ranks.owns(shard)]
    batches, shard_of = [batches[b] for b in mine], [shard_of[b] for b in mine]
    if not batches:
        return
    encoder.load()
    corrupt: dict[int, str] = {}
    if isinstance(encoder, TextEncoder):
        stream = _encode_texts(encoder, sources, batches, store_tokens)
    else:
        stream = _encode_images(encoder, sources, batches, store_tokens, corrupt, root)
    total = sum(len(batch) for batch in batches)
    bar = tqdm(total=total, desc=f"embed {modality} ({encoder.name})", unit="item", disable=not ranks.is_main)
    try:
        for b, positions, enc in stream:
            for p in batches[b]:
                if p in corrupt and corrupt[p] != "rejected_outside_root":  # a property of the path, not the bytes
                    cache.add_bad(keys[p], corrupt[p])
            if enc is not None:
                pooled = enc.pooled.numpy()  # (B, d)
                tokens = enc.tokens.to(torch.float16).numpy() if store_tokens else None  # (B, T, dt)
                tmask = enc.token_mask.numpy() if store_tokens else None  # (B, T)
                cache.add([keys[p] for p in positions], pooled, tokens, tmask)
            if b + 1 == len(batches) or shard_of[b + 1] != shard_of[b]:
                cache.flush()  # the shard is finished: written (temp file + rename) before the next starts
            bar.update(len(batches[b]))
    finally:
        bar.close()
        cache.flush()  # an interrupted shard keeps what it finished (a SIGKILL loses at most this shard)
