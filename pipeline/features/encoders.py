"""Frozen item encoders: the common interface, the registry, device choice and offline/hub handling.

Each encoder turns one modality of an item into a pooled vector and, optionally, a short sequence of token vectors
(for ODMT). Encoders are frozen (``eval()``, ``torch.inference_mode``) and load their weights lazily, so a run
whose every item is already in the embedding cache never loads a model. The concrete encoders live in
``text_encoders`` (minilm, hf), ``image_encoders`` (efficientnet_lite0) and ``clip_encoders`` (clip); they are
imported only when selected, so importing this module stays cheap.

Offline by default (DESIGN.md): ``checkpoint: null`` means weights shipped in an installed package. A checkpoint
that is not an existing local path is a hub name or tag; before the real download code runs, the hub is probed
with a short timeout so that a machine without network fails in seconds with a message naming the param.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import threading
import urllib.error
import urllib.request
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image

from pipeline.config import EncoderConfig

logger = logging.getLogger(__name__)

MODALITIES: tuple[str, ...] = ("text", "image")
HUB_PROBE_TIMEOUT_S = 3.0
DEFAULT_HF_ENDPOINT = "https://huggingface.co"
_TRUE = {"1", "true", "yes", "on"}
_WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")


class EncoderError(ValueError):
    """An encoder cannot be built or loaded; the message names the param and the fix."""


@dataclass
class Encoded:
    """One batch of encoder outputs, on the CPU."""

    pooled: torch.Tensor  # (B, d) float32
    tokens: torch.Tensor | None = None  # (B, T, d_tok) float32
    token_mask: torch.Tensor | None = None  # (B, T) bool, True = a real token


class Encoder(ABC):
    """Common part of every encoder: config, param names for messages, identity for the cache."""

    name: str = ""
    preprocess_version: str = "1"  # bump when preprocessing changes; part of the cache key

    def __init__(self, config: EncoderConfig, modality: str, device: torch.device) -> None:
        if config.batch_size < 1:
            raise EncoderError(f"embed.{modality}.batch_size must be >= 1, got {config.batch_size}")
        if config.max_tokens < 1:
            raise EncoderError(f"embed.{modality}.max_tokens must be >= 1, got {config.max_tokens}")
        self.config = config
        self.modality = modality
        self.device = device
        self.loaded = False
        self._load_lock = threading.Lock()

    def param(self, key: str) -> str:
        """Dotted params.yaml key, for error messages: ``embed.image.checkpoint``."""
        return f"embed.{self.modality}.{key}"

    @abstractmethod
    def identity(self) -> dict[str, Any]:
        """Everything that determines the outputs for a given input (without loading the model)."""

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """Manifest fields: encoder, arch, checkpoint (resolved), checkpoint_source."""

    @abstractmethod
    def _load(self) -> None:
        """Build the frozen model on ``self.device``."""

    def load(self) -> None:
        with self._load_lock:
            if not self.loaded:
                self._load()
                self.loaded = True

    def identity_hash(self) -> str:
        return sha256_json(self.identity())


class TextEncoder(Encoder):
    @abstractmethod
    def encode(self, texts: list[str], want_tokens: bool) -> Encoded:
        """Encode a batch of non-empty strings."""


class ImageEncoder(Encoder):
    @abstractmethod
    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """An RGB PIL image -> (3, H, W) float32 model input. Thread-safe (runs in a thread pool)."""

    @abstractmethod
    def encode(self, pixels: torch.Tensor, want_tokens: bool) -> Encoded:
        """Encode a batch of preprocessed images ``(B, 3, H, W)``."""


# --- registry --------------------------------------------------------------------------------------------------


def _minilm(config: EncoderConfig, modality: str, device: torch.device) -> Encoder:
    from pipeline.features.text_encoders import MiniLMEncoder

    return MiniLMEncoder(config, modality, device)


def _hf(config: EncoderConfig, modality: str, device: torch.device) -> Encoder:
    from pipeline.features.text_encoders import HFTextEncoder

    return HFTextEncoder(config, modality, device)


def _efficientnet(config: EncoderConfig, modality: str, device: torch.device) -> Encoder:
    from pipeline.features.image_encoders import EfficientNetLite0Encoder

    return EfficientNetLite0Encoder(config, modality, device)


def _clip_text(config: EncoderConfig, modality: str, device: torch.device) -> Encoder:
    from pipeline.features.clip_encoders import ClipTextEncoder

    return ClipTextEncoder(config, modality, device)


def _clip_image(config: EncoderConfig, modality: str, device: torch.device) -> Encoder:
    from pipeline.features.clip_encoders import ClipImageEncoder

    return ClipImageEncoder(config, modality, device)


EncoderFactory = Callable[[EncoderConfig, str, torch.device], Encoder]

# modality -> embed.<modality>.name -> factory. "none" (not listed) disables the modality.
ENCODERS: dict[str, dict[str, EncoderFactory]] = {
    "text": {"minilm": _minilm, "hf": _hf, "clip": _clip_text},
    "image": {"efficientnet_lite0": _efficientnet, "clip": _clip_image},
}


def build_encoder(config: EncoderConfig, modality: str, device: torch.device) -> Encoder | None:
    """The encoder selected by ``embed.<modality>.name``; ``None`` for ``none``."""
    if modality not in ENCODERS:
        raise EncoderError(f"unknown modality {modality!r}; known: {', '.join(ENCODERS)}")
    if config.name == "none":
        return None
    factories = ENCODERS[modality]
    if config.name not in factories:
        allowed = ", ".join([*factories, "none"])
        raise EncoderError(f"embed.{modality}.name = {config.name!r} must be one of: {allowed}")
    return factories[config.name](config, modality, device)


# --- device ----------------------------------------------------------------------------------------------------


def resolve_device(spec: str, key: str = "embed.device") -> torch.device:
    """``auto`` -> cuda when available, else cpu; ``cuda``/``cuda:N`` must exist."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "cuda" or spec.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise EncoderError(f"{key} = {spec!r} but torch sees no CUDA device; set {key}: auto (or cpu)")
        device = torch.device(spec)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise EncoderError(f"{key} = {spec!r} but only {torch.cuda.device_count()} CUDA device(s) are visible")
        return device
    raise EncoderError(f"{key} = {spec!r} must be one of: auto, cpu, cuda, cuda:N")


# --- fingerprints ----------------------------------------------------------------------------------------------


def sha256_json(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def weights_fingerprint(path: Path) -> str:
    """Cheap identity of a weights file or directory: names, sizes and mtimes (a change re-encodes, never stale)."""
    path = Path(path)
    if path.is_file():
        files = [path]
        root = path.parent
    else:
        root = path
        files = sorted(
            p
            for p in path.rglob("*")
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)
        )
    entries = [(str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    return sha256_json(entries)


# --- hub / offline handling ------------------------------------------------------------------------------------


def looks_like_path(value: str) -> bool:
    """A checkpoint value that was meant as a local path (so a missing one is a typo, not a hub name)."""
    return value.startswith(("/", "./", "../", "~")) or value.endswith(_WEIGHT_SUFFIXES)


def offline_flag() -> str | None:
    """The environment variable that forces offline mode, if one is set."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in _TRUE:
            return f"{var}={os.environ[var]}"
    return None


def hf_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", DEFAULT_HF_ENDPOINT).rstrip("/")


def hub_reachable(url: str, timeout: float = HUB_PROBE_TIMEOUT_S) -> bool:
    """True if an HTTP server answers at ``url`` (any status) within ``timeout`` seconds, DNS included."""
    result: list[bool] = []

    def probe() -> None:
        request = urllib.request.Request(url, method="HEAD")
        try:
            with urllib.request.urlopen(request, timeout=timeout):
                result.append(True)
        except urllib.error.HTTPError:
            result.append(True)  # the server answered (404, 401, ...): the network works
        except (urllib.error.URLError, OSError, ValueError):
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)  # daemon: a hung DNS lookup cannot block exit
    thread.start()
    thread.join(timeout + 0.5)
    return bool(result and result[0])


def hub_unavailable_reason(url: str) -> str | None:
    """Why the hub at ``url`` cannot be used now, or None if it answers."""
    flag = offline_flag()
    if flag:
        return f"{flag} is set"
    if not hub_reachable(url):
        return f"{url} did not answer within {HUB_PROBE_TIMEOUT_S:.0f} s (no network?)"
    return None


# --- shared tensor helpers -------------------------------------------------------------------------------------


def token_grid(max_tokens: int, height: int, width: int) -> tuple[int, int]:
    """The (h, w) grid of spatial tokens kept per image: as square as possible, h*w <= max_tokens, no upsampling."""
    h = max(1, math.isqrt(max_tokens))
    w = max(1, max_tokens // h)
    return min(h, height), min(w, width)


def pool_spatial_tokens(feature_map: torch.Tensor, max_tokens: int) -> torch.Tensor:
    """(B, C, H, W) feature map -> (B, h*w, C) tokens, adaptively average-pooled to at most ``max_tokens``."""
    b, c, height, width = feature_map.shape
    h, w = token_grid(max_tokens, height, width)
    pooled = F.adaptive_avg_pool2d(feature_map, (h, w))  # (B, C, h, w)
    return pooled.flatten(2).transpose(1, 2)  # (B, h*w, C)


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode (L, LA, P, RGBA, CMYK, I;16, ...) -> RGB; transparency is composited onto white."""
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        image = image.convert("F")
        lo, hi = image.getextrema()
        scale = 255.0 / (hi - lo) if hi > lo else 0.0
        image = image.point(lambda v: (v - lo) * scale).convert("L")
    has_alpha = image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info)
    if has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")
