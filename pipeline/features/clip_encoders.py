"""``clip`` text and image encoders through open_clip.

``embed.<modality>.arch`` names an open_clip architecture (``ViT-B-32``; weights from OpenAI need the matching
``-quickgelu`` arch when given as a file) and ``checkpoint`` is either a local checkpoint file (a ``state_dict``
saved with torch.save, or open_clip's .bin/.safetensors), a local directory holding ``open_clip_config.json`` plus
weights, or a pretrained tag such as ``openai`` / ``laion2b_s34b_b79k`` (downloaded by open_clip; needs internet
unless it is already in the Hugging Face cache).

Pooled vectors are ``encode_image`` / ``encode_text``, L2-normalised. Tokens come from open_clip's
``forward_intermediates`` (last block, with the final LayerNorm applied, i.e. what ``output_tokens=True`` returns,
before the projection, so their width is the tower's width, not ``embed_dim``):
- image: the ViT patch tokens as a grid, adaptively average-pooled to at most ``max_tokens`` cells;
- text: the first ``max_tokens`` positions of the (causal) text transformer, masked where the tokenizer padded.
Towers without ``forward_intermediates`` (e.g. some timm / HF towers) give pooled vectors only; asking them for
tokens is an error that says so.
"""

from __future__ import annotations

import logging
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from pipeline.features.encoders import (
    Encoded,
    Encoder,
    EncoderError,
    ImageEncoder,
    TextEncoder,
    hf_endpoint,
    hub_unavailable_reason,
    looks_like_path,
    pool_spatial_tokens,
    to_rgb,
    weights_fingerprint,
)

logger = logging.getLogger(__name__)


@lru_cache(maxsize=1)
def _create_model(model_name: str, pretrained: str | None, device: str, force_json: str) -> Any:
    """One open_clip model shared by the text and image encoders of a run (same arch + checkpoint + device)."""
    import json

    import open_clip

    force = json.loads(force_json)
    model = open_clip.create_model(model_name, pretrained=pretrained, device=device, **force)
    return model.eval().requires_grad_(False)


class _ClipMixin(Encoder):
    name = "clip"
    preprocess_version = "open_clip-v1"

    def _init_clip(self) -> None:
        import open_clip

        arch = self.config.arch
        checkpoint = self.config.checkpoint
        if not arch:
            raise EncoderError(
                f"{self.param('arch')} is null; the clip encoder needs an open_clip architecture such as ViT-B-32 "
                "(see open_clip.list_models())"
            )
        if checkpoint is None:
            raise EncoderError(
                f"{self.param('checkpoint')} is null; the clip encoder needs a local checkpoint file, or a pretrained "
                f"tag such as openai or laion2b_s34b_b79k (downloads, needs internet; tags for {arch}: "
                f"{', '.join(open_clip.list_pretrained_tags_by_model(arch)) or 'none'})"
            )
        path = Path(checkpoint).expanduser()
        self.force: dict[str, Any] = {}
        if path.is_dir():
            self.model_name, self.pretrained, self.source_kind = f"local-dir:{path.resolve()}", None, "local"
            self.resolved = str(path.resolve())
        elif path.is_file():
            if arch not in open_clip.list_models():
                raise EncoderError(f"{self.param('arch')} = {arch!r} is not an open_clip architecture")
            self.model_name, self.pretrained, self.source_kind = arch, str(path.resolve()), "local"
            self.resolved = str(path.resolve())
        elif looks_like_path(checkpoint):
            raise EncoderError(f"{self.param('checkpoint')} = {checkpoint!r}: no such file (cwd: {Path.cwd()})")
        else:
            tags = open_clip.list_pretrained_tags_by_model(arch)
            if not open_clip.get_pretrained_cfg(arch, checkpoint):
                raise EncoderError(
                    f"{self.param('checkpoint')} = {checkpoint!r} is neither an existing local file nor a pretrained "
                    f"tag of {self.param('arch')} = {arch!r} (its tags: {', '.join(tags) or 'none'})"
                )
            self.model_name, self.pretrained, self.source_kind = arch, checkpoint, "hub"
            self.resolved = f"{arch}/{checkpoint}"

    def identity(self) -> dict[str, Any]:
        weights = weights_fingerprint(Path(self.resolved)) if self.source_kind == "local" else None
        return {
            "encoder": self.name,
            "modality": self.modality,
            "arch": self.config.arch,
            "checkpoint": self.resolved,
            "weights": weights,
            "max_tokens": self.config.max_tokens,
            "preprocess": self.preprocess_version,
        }

    def describe(self) -> dict[str, Any]:
        return {
            "encoder": self.name,
            "arch": self.config.arch,
            "checkpoint": self.resolved,
            "checkpoint_source": self.source_kind,
        }

    def _hub_source(self) -> tuple[str, str | None, dict[str, Any]]:
        """For a tag: check the hub first; offline, fall back to a copy in the HF cache, else fail fast."""
        import open_clip

        cfg = open_clip.get_pretrained_cfg(self.config.arch, self.pretrained)
        hub_id = cfg.get("hf_hub", "")
        url = hf_endpoint() if hub_id else cfg.get("url", "")
        reason = hub_unavailable_reason(url) if url else None
        if reason is None:
            return self.model_name, self.pretrained, {}  # open_clip's own download path
        cached = _cached_hub_file(hub_id) if hub_id else None
        if cached is None:
            key, value = self.param("checkpoint"), self.config.checkpoint
            raise EncoderError(
                f"{key} = {value!r} is a pretrained tag that open_clip downloads from {url}, but that cannot be "
                f"reached now ({reason}) and the weights are not in the local Hugging Face cache. Download the "
                f"checkpoint on a machine with internet (e.g. `hf download {hub_id.rstrip('/') or '<repo>'}`), "
                f"copy the .bin/.safetensors file here and set {key} to its path (or to the directory)."
            )
        logger.info("%s: hub unavailable (%s); using cached %s", self.param("checkpoint"), reason, cached)
        force = {"force_quick_gelu": bool(cfg.get("quick_gelu", False))}
        preprocess = {k: cfg[k] for k in ("mean", "std", "interpolation", "resize_mode") if k in cfg}
        if preprocess:
            force["force_preprocess_cfg"] = preprocess
        return self.config.arch, cached, force

    def _load_model(self) -> Any:
        import json

        model_name, pretrained, force = self.model_name, self.pretrained, {}
        if self.source_kind == "hub":
            model_name, pretrained, force = self._hub_source()
        try:
            return _create_model(model_name, pretrained, str(self.device), json.dumps(force, sort_keys=True))
        except (OSError, RuntimeError, ValueError, KeyError) as error:
            raise EncoderError(
                f"{self.param('checkpoint')} = {self.config.checkpoint!r} with {self.param('arch')} = "
                f"{self.config.arch!r}: open_clip could not load it ({error})"
            ) from error


def _cached_hub_file(hub_id: str) -> str | None:
    """The checkpoint open_clip would download for ``org/repo/[file]``, if it is already in the HF cache."""
    from huggingface_hub import try_to_load_from_cache

    model_id, filename = hub_id.rstrip("/"), None
    if not hub_id.endswith("/"):
        model_id, filename = hub_id.rsplit("/", 1)
    names = [filename] if filename else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
    for name in names:
        found = try_to_load_from_cache(repo_id=model_id, filename=name)
        if isinstance(found, str):
            return found
    return None


class ClipImageEncoder(_ClipMixin, ImageEncoder):
    def __init__(self, config: Any, modality: str, device: torch.device) -> None:
        super().__init__(config, modality, device)
        self._init_clip()
        self.model: Any = None
        self.transform: Any = None

    def _load(self) -> None:
        from open_clip.transform import PreprocessCfg, image_transform_v2

        self.model = self._load_model()
        self.transform = image_transform_v2(PreprocessCfg(**self.model.visual.preprocess_cfg), is_train=False)
        logger.info(
            "%s: loaded open_clip %s (%s) on %s", self.param("name"), self.config.arch, self.resolved, self.device
        )

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        self.load()
        return self.transform(to_rgb(image))  # (3, S, S)

    @torch.inference_mode()
    def encode(self, pixels: torch.Tensor, want_tokens: bool) -> Encoded:
        self.load()
        pixels = pixels.to(self.device)
        if not want_tokens:
            pooled = self.model.encode_image(pixels, normalize=True)  # (B, E)
            return Encoded(pooled=pooled.float().cpu())
        try:
            out = self.model.forward_intermediates(
                image=pixels, image_indices=1, normalize=True, normalize_intermediates=True, image_output_fmt="NCHW"
            )
        except (AttributeError, NotImplementedError, TypeError, AssertionError) as error:
            raise EncoderError(
                f"{self.param('arch')} = {self.config.arch!r}: this open_clip image tower exposes no patch tokens "
                f"({error}); use a ViT arch or set embed.store_tokens: false"
            ) from error
        pooled = out["image_features"]  # (B, E), normalised
        grid = out["image_intermediates"][-1]  # (B, W, gh, gw)
        tokens = pool_spatial_tokens(grid, self.config.max_tokens)  # (B, T, W)
        mask = torch.ones(tokens.shape[:2], dtype=torch.bool)  # (B, T)
        return Encoded(pooled=pooled.float().cpu(), tokens=tokens.float().cpu(), token_mask=mask)


class ClipTextEncoder(_ClipMixin, TextEncoder):
    def __init__(self, config: Any, modality: str, device: torch.device) -> None:
        super().__init__(config, modality, device)
        self._init_clip()
        self.model: Any = None
        self.tokenizer: Any = None

    def _load(self) -> None:
        import open_clip

        self.model = self._load_model()
        self.tokenizer = open_clip.get_tokenizer(self.model_name)
        inner = getattr(self.tokenizer, "tokenizer", None)
        self.pad_id = getattr(inner, "pad_token_id", None) or 0
        logger.info(
            "%s: loaded open_clip %s (%s) on %s", self.param("name"), self.config.arch, self.resolved, self.device
        )

    @torch.inference_mode()
    def encode(self, texts: list[str], want_tokens: bool) -> Encoded:
        self.load()
        ids = self.tokenizer(texts).to(self.device)  # (B, context_length)
        if not want_tokens:
            pooled = self.model.encode_text(ids, normalize=True)  # (B, E)
            return Encoded(pooled=pooled.float().cpu())
        try:
            out = self.model.forward_intermediates(
                text=ids, text_indices=1, normalize=True, normalize_intermediates=True
            )
        except (AttributeError, NotImplementedError, TypeError, AssertionError) as error:
            raise EncoderError(
                f"{self.param('arch')} = {self.config.arch!r}: this open_clip text tower exposes no token outputs "
                f"({error}); set embed.store_tokens: false or use another text encoder"
            ) from error
        pooled = out["text_features"]  # (B, E), normalised
        t = min(self.config.max_tokens, ids.shape[1])
        tokens = out["text_intermediates"][-1][:, :t]  # (B, T, W)
        mask = ids[:, :t] != self.pad_id  # (B, T)
        tokens = tokens.masked_fill(~mask.unsqueeze(-1), 0.0)
        return Encoded(pooled=pooled.float().cpu(), tokens=tokens.float().cpu(), token_mask=mask.cpu())
