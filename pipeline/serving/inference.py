"""Running a trained model without the training loop: the device, query and item vectors, and a verified load.

Shared by training (validation), evaluation and recommendation; imports neither :mod:`pipeline.training.fit` nor the
optimiser.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pipeline.catalog import ItemCatalog
from pipeline.data.dataset import trim_left_padding
from pipeline.features.store import load_catalog
from pipeline.training.checkpoint import load_checkpoint, model_spec, read_checkpoint, verify_data


def resolve_device(name: str, key: str = "train.device") -> torch.device:
    """``auto`` -> cuda when available, else cpu; ``cpu``; ``cuda`` / ``cuda:N`` (must exist). ``key`` is what set
    ``name`` (``train.device``, or the ``--device`` option of evaluate and recommend), named in the error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"{key} = {name!r} but no CUDA device is visible; set {key} to auto or cpu")
    try:
        return torch.device(name)
    except RuntimeError as err:
        raise ValueError(f"{key} = {name!r} is not a device; use auto, cpu, cuda or cuda:N") from err


@torch.no_grad()
def user_queries(model: nn.Module, inputs: np.ndarray, batch_size: int, device: torch.device | str) -> np.ndarray:
    """(U, L) left-padded histories -> (U, D) float32 query vectors (eval mode, no grad)."""
    was_training = model.training
    model.eval()
    model.to(device)
    chunks = []
    for start in range(0, len(inputs), batch_size):
        ids = torch.from_numpy(np.ascontiguousarray(inputs[start : start + batch_size])).to(device)  # (b, L)
        ids = trim_left_padding({"input_ids": ids})["input_ids"]  # (b, L')
        chunks.append(model.user_vectors(ids).float().cpu())  # (b, D)
    model.train(was_training)
    return torch.cat(chunks).numpy()  # (U, D)


@torch.no_grad()
def item_table(model: nn.Module) -> np.ndarray:
    """(N+1, D) float32 item vectors (eval mode, no grad); row 0 is padding."""
    was_training = model.training
    model.eval()
    table = model.item_vectors().float().cpu().numpy()  # (N+1, D)
    model.train(was_training)
    return table


def load_trained(
    model_path: Path, features_dir: Path, prepared_dir: Path, device: torch.device | str = "cpu"
) -> tuple[nn.Module, dict[str, Any], ItemCatalog]:
    """Checkpoint -> (model in eval mode, checkpoint dict, catalog holding the features that model needs).

    The checkpoint's checksum and its data fingerprint (against ``prepared_dir/items.parquet``) are verified
    first. The catalog's ``max_seq_len`` is the checkpoint's, so positional embeddings match what was trained.
    """
    checkpoint = read_checkpoint(model_path, map_location=device)  # plain data, checksum verified
    verify_data(model_path, checkpoint, prepared_dir)
    spec = model_spec(model_path, checkpoint)
    catalog = load_catalog(
        features_dir, prepared_dir, spec.needs_features, int(checkpoint["max_seq_len"]), spec.all_modalities_required
    )
    model, checkpoint = load_checkpoint(model_path, catalog, map_location=device, checkpoint=checkpoint)
    return model, checkpoint, catalog
