"""Tiny local encoder checkpoints: a 1-layer BERT with a 20-word vocabulary and a 32-px open_clip model."""

from __future__ import annotations

import json
from pathlib import Path

import torch

TINY_WORDS = "toy story heat casino jumanji the a of and comedy drama action space war love".split()
TINY_CLIP = "TinyCLIP-test"


def titles(n: int, start: int = 0) -> list[str]:
    """``n`` distinct item titles in the tiny encoders' vocabulary (TINY_WORDS), numbered from ``start``."""
    return [
        f"{TINY_WORDS[i % len(TINY_WORDS)]} {TINY_WORDS[(i // 3) % len(TINY_WORDS)]} {i}"
        for i in range(start, start + n)
    ]


def make_tiny_bert(directory: Path) -> Path:
    """A 1-layer, 16-d BERT + WordPiece tokenizer saved with save_pretrained (a local `hf` checkpoint)."""
    from transformers import BertConfig, BertModel, BertTokenizer

    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *TINY_WORDS])}
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
    )
    BertModel(config).save_pretrained(directory)
    BertTokenizer(vocab=vocab).save_pretrained(directory)
    return directory


def register_tiny_clip(directory: Path) -> None:
    """A tiny ViT/text-transformer open_clip architecture (32 px images, 4x4 patches, 16-token context)."""
    import open_clip

    if TINY_CLIP in open_clip.list_models():
        return
    cfg = {
        "embed_dim": 16,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    }
    path = directory / f"{TINY_CLIP}.json"
    path.write_text(json.dumps(cfg))
    open_clip.add_model_config(path)


def make_tiny_clip(directory: Path) -> Path:
    import open_clip

    register_tiny_clip(directory)
    torch.manual_seed(0)
    model = open_clip.create_model(TINY_CLIP)
    path = directory / "tiny_clip.pt"
    torch.save(model.state_dict(), path)
    return path
