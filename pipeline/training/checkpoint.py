"""Checkpoints (``model.pt``): write, read and rebuild a model, with integrity checks; shared by train, evaluate and
recommend (none of which needs the training loop to read one).

A checkpoint is plain data (``torch.save`` of a dict, read back with ``weights_only=True``, so no code is
unpickled): the registered model name, ``asdict(config)``, the ``state_dict`` and training metadata, plus

- ``checksum``: sha256 over a canonical serialisation of every other entry (each tensor's name, dtype, shape and
  bytes; the metadata as sorted JSON), so a damaged or edited file is refused instead of evaluated;
- ``data_fingerprint``: ``{"items_sha256", "num_items"}`` of the ``items.parquet`` the model was trained on, so a
  model from another data set (even one with the same item count) is refused.

Every failure to read or rebuild a checkpoint is a ``ValueError`` / ``FileNotFoundError`` whose one-line message
names the file and the fix (``run `dvc repro train``` or ``baseline``).
"""

from __future__ import annotations

import hashlib
import json
import pickle
import zipfile
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pipeline.catalog import ItemCatalog
from pipeline.io import atomic_path, read_parquet
from pipeline.models import registry

FORMAT_VERSION = 2  # 2: checksum + data fingerprint
CHECKSUM_KEY = "checksum"
ITEMS_FILE = "items.parquet"
REQUIRED_KEYS: tuple[str, ...] = ("model_name", "model_config", "state_dict", "num_items", "max_seq_len")
# What torch.load raises on a damaged file (bad zip, bad pickle, short read, a storage that does not fit, ...).
_READ_ERRORS = (
    RuntimeError,
    EOFError,
    pickle.UnpicklingError,
    zipfile.BadZipFile,
    ValueError,
    KeyError,
    IndexError,
    TypeError,
    AttributeError,
    UnicodeDecodeError,
    OverflowError,
    MemoryError,
    OSError,  # torch's zip reader: "[Errno 22] Invalid argument" on a damaged central directory
)


def registered_name(model: nn.Module) -> str:
    name = registry.name_of(model)
    if name is None:
        raise ValueError(f"{type(model).__name__} is not registered; add it to pipeline.models.registry.REGISTERED")
    return name


def model_spec(path: Path, checkpoint: Mapping[str, Any]) -> registry.ModelSpec:
    """The registry entry of the checkpoint's model (an unregistered name names the file, not params.yaml)."""
    name = checkpoint["model_name"]
    if name not in registry.REGISTERED:
        raise ValueError(
            f"{path} holds model {name!r}, which is not registered (known: {', '.join(sorted(registry.REGISTERED))}); "
            f"run `dvc repro {rerun_stage(Path(path))}`"
        )
    return registry.spec(name)


def rerun_stage(path: Path) -> str:
    """The DVC stage that writes ``path``: ``baseline`` for ``models/baseline/model.pt``, else ``train``."""
    return "baseline" if Path(path).parent.name == "baseline" else "train"


def data_fingerprint(prepared_dir: Path) -> dict[str, Any]:
    """``{"items_sha256", "num_items"}`` of ``prepared_dir/items.parquet``: which data a model was trained on."""
    path = Path(prepared_dir) / ITEMS_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} not found. Run `dvc repro prepare`.")
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    num_items = read_parquet(path, "Run `dvc repro prepare`.", columns=["item_idx"]).height
    return {"items_sha256": digest.hexdigest(), "num_items": num_items}


def content_checksum(checkpoint: Mapping[str, Any]) -> str:
    """sha256 over every entry but ``checksum``: metadata as sorted JSON, then each tensor (name, dtype, shape,
    bytes) in name order. Independent of torch's file layout, so it verifies what is loaded, not how it was stored."""
    digest = hashlib.sha256()
    meta = {k: v for k, v in checkpoint.items() if k not in (CHECKSUM_KEY, "state_dict")}
    _update(digest, json.dumps(meta, sort_keys=True, default=repr).encode())
    state = checkpoint.get("state_dict", {})
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        _update(digest, f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        _update(digest, tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _update(digest: Any, data: bytes) -> None:
    digest.update(len(data).to_bytes(8, "little"))  # length-prefixed: no two entry sequences hash alike
    digest.update(data)


def save_checkpoint(
    path: Path,
    model: nn.Module,
    max_seq_len: int,
    train_cfg: Any,
    epoch: int,
    valid_metrics: dict[str, float],
    fingerprint: dict[str, Any] | None = None,
) -> None:
    """Write plain data + ``state_dict`` + checksum atomically; loadable by :func:`load_checkpoint` with no training
    code. ``fingerprint`` (:func:`data_fingerprint` of the training data) is what evaluate/recommend check."""
    checkpoint = {
        "format_version": FORMAT_VERSION,
        "model_name": registered_name(model),
        "model_config": asdict(model.config),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "num_items": int(model.item_vectors().shape[0] - 1),
        "max_seq_len": int(max_seq_len),
        "epoch": int(epoch),
        "valid_metrics": {k: float(v) for k, v in valid_metrics.items()},
        "train_config": asdict(train_cfg),
        "data_fingerprint": dict(fingerprint) if fingerprint is not None else None,
    }
    write_checkpoint(path, checkpoint)


def write_checkpoint(path: Path, checkpoint: dict[str, Any]) -> None:
    """``checkpoint`` with its :func:`content_checksum` added, written atomically."""
    signed = {k: v for k, v in checkpoint.items() if k != CHECKSUM_KEY}
    signed[CHECKSUM_KEY] = content_checksum(signed)
    # A file object, not a path: torch names the zip entries after a path's stem, and the temp name is random.
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(signed, f)


def read_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The plain dict in ``model.pt``, its structure and checksum verified; no code is unpickled."""
    path = Path(path)
    fix = f"run `dvc repro {rerun_stage(path)}`"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no checkpoint; {fix} (or python -m stages.{rerun_stage(path)}) first")
    if path.is_dir():
        raise ValueError(f"{path} is a directory, not a checkpoint file; pass the model.pt inside it")
    if path.stat().st_size == 0:
        raise ValueError(f"{path} is empty (0 bytes): the checkpoint was never written completely; {fix}")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except PermissionError:
        raise
    except _READ_ERRORS as e:
        reason = " ".join(str(e).split())[:160] or type(e).__name__
        raise ValueError(f"{path} is not a readable checkpoint (corrupt or truncated: {reason}); {fix}") from None
    if not isinstance(checkpoint, dict) or any(key not in checkpoint for key in REQUIRED_KEYS):
        missing = [k for k in REQUIRED_KEYS if not isinstance(checkpoint, dict) or k not in checkpoint]
        raise ValueError(f"{path} is not a model checkpoint of this pipeline (no `{missing[0]}`); {fix}")
    if not isinstance(checkpoint["state_dict"], dict) or not all(
        isinstance(v, torch.Tensor) for v in checkpoint["state_dict"].values()
    ):
        raise ValueError(f"{path}: `state_dict` is not a mapping of tensors; {fix}")
    if CHECKSUM_KEY not in checkpoint:
        raise ValueError(f"{path} has no content checksum (written by an older version of the pipeline); {fix}")
    if content_checksum(checkpoint) != checkpoint[CHECKSUM_KEY]:
        raise ValueError(
            f"{path}: content checksum mismatch, the file was damaged or edited after it was written; {fix}"
        )
    return checkpoint


def verify_data(path: Path, checkpoint: Mapping[str, Any], prepared_dir: Path) -> None:
    """Refuse a checkpoint trained on another ``items.parquet`` than ``prepared_dir``'s (hash or item count)."""
    fix = f"run `dvc repro {rerun_stage(Path(path))}`"
    trained = checkpoint.get("data_fingerprint")
    if not isinstance(trained, dict) or not {"items_sha256", "num_items"} <= set(trained):
        raise ValueError(f"{path} records no data fingerprint, so its training data cannot be checked; {fix}")
    current = data_fingerprint(prepared_dir)
    if trained["items_sha256"] != current["items_sha256"] or trained["num_items"] != current["num_items"]:
        raise ValueError(
            f"{path} was trained on another {ITEMS_FILE} ({trained['num_items']} items, sha256 "
            f"{str(trained['items_sha256'])[:12]}) than {Path(prepared_dir) / ITEMS_FILE} ({current['num_items']} "
            f"items, sha256 {current['items_sha256'][:12]}); {fix}"
        )


def load_checkpoint(
    path: Path,
    catalog: ItemCatalog,
    map_location: str | torch.device = "cpu",
    checkpoint: dict[str, Any] | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model from ``model.pt`` through the registry; returns ``(model in eval mode, checkpoint)``.

    ``checkpoint``: the file's dict when the caller has already read it (:func:`read_checkpoint`).
    """
    if checkpoint is None:
        checkpoint = read_checkpoint(path, map_location)
    fix = f"run `dvc repro {rerun_stage(Path(path))}`"
    if checkpoint["num_items"] != catalog.num_items:
        raise ValueError(
            f"{path} was trained on {checkpoint['num_items']} items but the catalog has {catalog.num_items}; "
            f"the prepared data changed since training: {fix}"
        )
    spec = model_spec(path, checkpoint)
    try:
        config = spec.config_cls(**checkpoint["model_config"])
        model = registry.build_model(checkpoint["model_name"], config, catalog, int(checkpoint["max_seq_len"]))
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: cannot rebuild {checkpoint['model_name']!r} from its config ({e}); {fix}") from None
    _check_state_fits(path, model, checkpoint["state_dict"], fix)
    model.load_state_dict(checkpoint["state_dict"])
    model.to(map_location)
    model.eval()
    return model, checkpoint


def _check_state_fits(path: Path, model: nn.Module, state: Mapping[str, torch.Tensor], fix: str) -> None:
    """Every weight present with the model's shape (one line, instead of torch's multi-line RuntimeError)."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [k for k in expected if k in state and tuple(state[k].shape) != expected[k]]  # model order
    if wrong:
        k = wrong[0]
        raise ValueError(
            f"{path} does not fit the model its config describes: `{k}` has shape {tuple(state[k].shape)}, the "
            f"model expects {expected[k]} ({len(wrong)} weight(s) differ); {fix}"
        )
    if missing or unexpected:
        raise ValueError(
            f"{path} does not fit the model its config describes: missing weights {missing[:3]}, unexpected "
            f"{unexpected[:3]}; {fix}"
        )
