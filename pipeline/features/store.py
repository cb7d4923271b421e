"""Load the frozen features a model needs (``data/features``) into an ``ItemCatalog``, checked against the items."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.catalog import ItemCatalog
from pipeline.data.splits import load_split
from pipeline.features.embed import MANIFEST
from pipeline.features.encoders import MODALITIES
from pipeline.features.inputs import content_fingerprint, files_hash, image_paths
from pipeline.features.outputs import feature_files
from pipeline.io import load_npy, read_json, read_parquet

logger = logging.getLogger(__name__)

RERUN = "Run `dvc repro embed`."
NEEDS: tuple[str, ...] = tuple(MODALITIES) + tuple(f"{m}_tokens" for m in MODALITIES)


def _name(features_dir: Path, file: str) -> str:
    return f"{features_dir.name}/{file}"


def _load_array(features_dir: Path, file: str, hint: str) -> np.ndarray:
    path = features_dir / file
    if not path.exists():
        raise FileNotFoundError(f"{_name(features_dir, file)} not found. {hint}")
    return load_npy(path, hint)


def _check_rows(features_dir: Path, file: str, array: np.ndarray, n: int, trailing: tuple[int, ...] | None) -> None:
    name = _name(features_dir, file)
    if array.shape[0] != n + 1:
        raise ValueError(f"{name} has {array.shape[0]} rows; expected {n + 1} (items + padding row). {RERUN}")
    if trailing is not None and tuple(array.shape[1:]) != trailing:
        raise ValueError(
            f"{name} has shape {array.shape}; expected ({n + 1}, {', '.join(map(str, trailing))}). {RERUN}"
        )
    if np.any(array[0]):
        raise ValueError(f"{name}: row 0 (padding) must be all zeros / False. {RERUN}")


def _read_manifest(features_dir: Path, n: int, item_ids: list[str]) -> dict[str, Any]:
    path = features_dir / MANIFEST
    if not path.exists():
        raise FileNotFoundError(f"{_name(features_dir, MANIFEST)} not found (the embed stage did not finish). {RERUN}")
    manifest = read_json(path, RERUN)
    if not isinstance(manifest, dict):
        raise ValueError(f"{path}: not a features manifest (a JSON object). {RERUN}")
    items_hash = hashlib.sha256("\n".join(item_ids).encode()).hexdigest()
    if manifest.get("num_items") != n or manifest.get("items_hash") != items_hash:
        raise ValueError(
            f"{_name(features_dir, MANIFEST)} describes {manifest.get('num_items')} items of another items.parquet; "
            f"the current one has {n}. {RERUN}"
        )
    return manifest


def check_content(features_dir: Path, prepared_dir: Path, modality: str, entry: dict[str, Any]) -> None:
    """The features were encoded from the content ``items.parquet`` holds now (text strings, image bytes).

    Images are re-hashed only when a file's path, size or mtime changed since embed (``files_hash``), so an
    unchanged folder costs a ``stat`` or two per item. Paths are resolved as embed resolved them (relative ones
    against ``prepared_dir``), so the working directory plays no part.
    """
    items_path = prepared_dir / "items.parquet"
    columns = ["item_id", "text"] + (["image_path"] if modality == "image" else [])
    items = read_parquet(items_path, "Run `dvc repro prepare`.", columns=columns)
    if modality == "image" and entry.get("files_hash") == files_hash(image_paths(items, prepared_dir)[0]):
        return
    if "inputs_hash" not in entry or entry["inputs_hash"] != content_fingerprint(modality, items, prepared_dir):
        what = "texts" if modality == "text" else "images"
        raise ValueError(
            f"{_name(features_dir, MANIFEST)}: the {modality} features were encoded from other {what} than "
            f"{items_path} holds now (stale features). {RERUN}"
        )


def _popularity(prepared_dir: Path, n: int) -> tuple[torch.Tensor, int]:
    """Training-interaction counts (every item of each user but the last two) and the longest history length."""
    split = load_split(prepared_dir)
    train = np.concatenate(split.train) if len(split) else np.zeros(0, dtype=np.int64)
    if len(train) and (train.min() < 1 or train.max() > n):
        bad = int(train.max() if train.max() > n else train.min())
        raise ValueError(
            f"{prepared_dir.name}/sequences.parquet refers to item {bad}, but items.parquet has items 1..{n}. "
            "Run `dvc repro prepare`."
        )
    counts = np.bincount(train, minlength=n + 1).astype(np.float32)  # (N+1,), row 0 = 0
    longest = max((len(t) for t in split.train), default=0) + 1  # test input = train + valid target
    return torch.from_numpy(counts), longest


def load_catalog(
    features_dir: Path,
    prepared_dir: Path,
    needs: tuple[str, ...] = (),
    max_seq_len: int | None = None,
    all_modalities_required: bool = True,
) -> ItemCatalog:
    """An ``ItemCatalog`` with the features listed in ``needs`` ("text", "image", "text_tokens", "image_tokens").

    ``max_seq_len`` is ``data.max_seq_len``; left as None it is the longest input in the data (train + valid).
    With ``needs=()`` only ``num_items`` and ``popularity`` are filled (no feature file is read). With
    ``all_modalities_required=False`` a needed modality that was not embedded (``embed.<m>.name: none``) is left out
    of the catalog (logged), as long as at least one needed modality was embedded.
    """
    unknown = [need for need in needs if need not in NEEDS]
    if unknown:
        raise ValueError(f"unknown feature {unknown[0]!r}; a model may need: {', '.join(NEEDS)}")
    items_path = prepared_dir / "items.parquet"
    if not items_path.exists():
        raise FileNotFoundError(f"{items_path} not found. Run `dvc repro prepare`.")
    item_ids = read_parquet(items_path, "Run `dvc repro prepare`.", columns=["item_id"])["item_id"].to_list()
    n = len(item_ids)
    popularity, longest = _popularity(prepared_dir, n)
    catalog = ItemCatalog(num_items=n, max_seq_len=max_seq_len or longest, popularity=popularity)
    if not needs:
        return catalog

    manifest = _read_manifest(features_dir, n, item_ids)
    entries = manifest.get("modalities", {})
    wanted = [m for m in MODALITIES if m in needs or f"{m}_tokens" in needs]
    enabled = {m for m in wanted if entries.get(m, {}).get("enabled", False)}
    for modality in wanted:
        wants_pooled, wants_tokens = modality in needs, f"{modality}_tokens" in needs
        entry = entries.get(modality, {})
        if modality not in enabled and enabled and not all_modalities_required:
            logger.info(
                "catalog: no %s features (embed.%s.name was 'none'); the model runs without them", modality, modality
            )
            continue
        if modality not in enabled:
            raise ValueError(
                f"the model needs {modality} features, but embed.{modality}.name was 'none' when "
                f"{_name(features_dir, MANIFEST)} was written. Set embed.{modality}.name (see params.yaml) and "
                "run `dvc repro embed`."
            )
        check_content(features_dir, prepared_dir, modality, entry)
        files = feature_files(modality)
        mask = _load_array(features_dir, files["mask"], RERUN)
        _check_rows(features_dir, files["mask"], mask, n, ())
        catalog.masks[modality] = torch.from_numpy(mask.astype(bool))  # (N+1,)
        if wants_pooled:
            pooled = _load_array(features_dir, files["pooled"], RERUN)
            _check_rows(features_dir, files["pooled"], pooled, n, (int(entry["dim"]),))
            catalog.features[modality] = torch.from_numpy(pooled.astype(np.float32, copy=False))  # (N+1, d)
        if wants_tokens:
            hint = "Token features are written only with embed.store_tokens: true; set it and run `dvc repro embed`."
            tokens = _load_array(features_dir, files["tokens"], hint)
            t, d = tokens.shape[1:] if tokens.ndim == 3 else (0, 0)
            _check_rows(features_dir, files["tokens"], tokens, n, tuple(entry.get("tokens_shape") or (t, d)))
            token_mask = _load_array(features_dir, files["tokens_mask"], hint)
            _check_rows(features_dir, files["tokens_mask"], token_mask, n, (tokens.shape[1],))
            catalog.tokens[modality] = torch.from_numpy(tokens.astype(np.float16, copy=False))  # (N+1, T, d)
            catalog.token_masks[modality] = torch.from_numpy(token_mask.astype(bool))  # (N+1, T)
        logger.info("catalog: %s features for %d items (%d present)", modality, n, int(mask.sum()))
    return catalog
