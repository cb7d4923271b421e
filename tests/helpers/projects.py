"""A tiny evaluated project on disk for the stage tests: prepared data, two untrained SASRec checkpoints, params."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import polars as pl
import torch

from pipeline.catalog import ItemCatalog
from pipeline.features.inputs import content_fingerprint
from pipeline.models.sasrec import SASRec, SASRecConfig
from pipeline.training.checkpoint import data_fingerprint, save_checkpoint
from pipeline.training.fit import seed_everything
from tests.helpers.training import train_cfg


def write_dvclive(root: Path) -> Path:
    """A DVCLive folder with three training curves (two train series, one valid)."""
    dvclive = root / "dvclive"
    for name, values in {
        "train/loss": [2.0, 1.5, 1.2],
        "train/ce": [1.9, 1.4, 1.1],
        "valid/NDCG@10": [0.1, 0.2],
    }.items():
        tsv = dvclive / "plots" / "metrics" / f"{name}.tsv"
        tsv.parent.mkdir(parents=True, exist_ok=True)
        metric = name.split("/")[-1]
        tsv.write_text("step\t" + metric + "\n" + "".join(f"{i}\t{v}\n" for i, v in enumerate(values)))
    return dvclive


def write_project(tmp_path: Path) -> tuple[Path, Path, Path]:
    """prepared/ (sequences, items, stats), models/ (an untrained SASRec checkpoint + summary + dvclive)."""
    rng = np.random.default_rng(0)
    num_items, num_users = 12, 9
    prepared = tmp_path / "prepared"
    prepared.mkdir()
    seqs = [rng.choice(np.arange(1, num_items + 1), size=rng.integers(3, 9), replace=False) for _ in range(num_users)]
    pl.DataFrame(
        {
            "user_idx": np.arange(num_users),
            "user_id": [f"user{u}" for u in range(num_users)],
            "items": pl.Series([s.tolist() for s in seqs], dtype=pl.List(pl.Int32)),
            "timestamps": pl.Series([list(range(len(s))) for s in seqs], dtype=pl.List(pl.Int64)),
        }
    ).write_parquet(prepared / "sequences.parquet")
    pl.DataFrame(  # the items.parquet contract (DESIGN.md): item_idx, item_id, text, image_path
        {
            "item_idx": np.arange(1, num_items + 1, dtype=np.int32),
            "item_id": [f"m{i}" for i in range(1, num_items + 1)],
            "text": [f"Movie {i} (1995) Drama" for i in range(1, num_items + 1)],
            "image_path": pl.Series([None] * num_items, dtype=pl.String),
        }
    ).write_parquet(prepared / "items.parquet")
    (prepared / "stats.json").write_text(json.dumps({"users": num_users, "items": num_items, "notes": []}))

    models = tmp_path / "models"
    seed_everything(0)
    catalog = ItemCatalog(num_items=num_items, max_seq_len=6, popularity=torch.zeros(num_items + 1))
    net = SASRec(SASRecConfig(hidden_dim=8, num_layers=1, num_heads=1, dropout=0.0), catalog)
    cfg = train_cfg(epochs=1, batch_size=4, patience=1, grad_clip=None, num_threads=0)
    save_checkpoint(models / "model.pt", net, 6, cfg, 1, {"NDCG@10": 0.1}, fingerprint=data_fingerprint(prepared))
    seed_everything(1)
    baseline = SASRec(SASRecConfig(hidden_dim=8, num_layers=1, num_heads=1, dropout=0.0), catalog)
    save_checkpoint(
        models / "baseline" / "model.pt", baseline, 6, cfg, 1, {"NDCG@10": 0.1}, fingerprint=data_fingerprint(prepared)
    )
    (models / "train_summary.json").write_text(json.dumps({"best_epoch": 1}))
    write_dvclive(models)
    params = tmp_path / "params.yaml"
    params.write_text(
        "evaluate:\n  ks: [2, 5]\n  batch_size: 4\n  popularity_baseline: true\n"
        "  bootstrap_resamples: 300\n  bootstrap_seed: 0\n  knn_history: 10\n  index: flat\n"
        "  ivf: {nlist: 4, nprobe: 2, seed: 0}\n  hnsw: {m: 8, ef_construction: 40, ef_search: 16}\n"
    )
    return params, prepared, models


# The `recommend:` section the recommend and index tests add to write_project's params.
RECOMMEND = {
    "k": 4,
    "index": "flat",
    "batch_size": 3,
    "gallery_users": 5,
    "gallery_seed": 0,
    "ivf": {"nlist": 4, "nprobe": 2, "seed": 0},
    "hnsw": {"m": 8, "ef_construction": 40, "ef_search": 16},
}


def recommend_args(p: dict[str, Path]) -> list[str]:
    """The recommend stage's `export` and its options for a project laid out as ``{params, prepared, features,
    models, out}``."""
    return [
        "export",
        *("--params", str(p["params"]), "--prepared", str(p["prepared"]), "--features", str(p["features"])),
        *("--model", str(p["models"] / "model.pt"), "--baseline", str(p["models"] / "baseline" / "model.pt")),
        *("--out", str(p["out"]), "--gallery", str(p["out"].parent / "reports" / "gallery.html"), "--device", "cpu"),
    ]


def query_args(p: dict[str, Path]) -> list[str]:
    """`recommend query` and its options (without --history/--user) for the same project, reading ``out/index``."""
    return [
        *("query", "--params", str(p["params"]), "--prepared", str(p["prepared"]), "--features", str(p["features"])),
        *("--model", str(p["models"] / "model.pt"), "--index", str(p["out"] / "index"), "--device", "cpu"),
    ]


def write_text_features(features: Path, prepared: Path, dim: int = 6) -> None:
    """A features/ folder with pooled text features only (image switched off), as `embed` would write it.

    The manifest carries the item-id hash and the text content fingerprint that every reader checks
    (``pipeline.features.store``), computed by the library functions the embed stage uses.
    """
    items = pl.read_parquet(prepared / "items.parquet")
    item_ids = items["item_id"].to_list()
    rng = np.random.default_rng(3)
    pooled = rng.normal(size=(len(item_ids) + 1, dim)).astype(np.float32)
    pooled[0] = 0.0
    mask = np.ones(len(item_ids) + 1, dtype=bool)
    mask[0] = False
    features.mkdir()
    np.save(features / "text.npy", pooled)
    np.save(features / "text_mask.npy", mask)
    manifest = {
        "num_items": len(item_ids),
        "items_hash": hashlib.sha256("\n".join(item_ids).encode()).hexdigest(),
        "modalities": {
            "text": {"enabled": True, "dim": dim, "inputs_hash": content_fingerprint("text", items, prepared)},
            "image": {"enabled": False, "encoder": "none"},
        },
    }
    (features / "manifest.json").write_text(json.dumps(manifest))


def write_topk(path: Path, items: list[list[int]], targets: list[int]) -> Path:
    frames = [
        pl.DataFrame(
            {
                "user_idx": list(range(len(targets))),
                "stage": [stage] * len(targets),
                "items": pl.Series(items, dtype=pl.List(pl.Int32)),
                "target": targets,
            }
        )
        for stage in ("valid", "test")
    ]
    pl.concat(frames).write_parquet(path)
    return path
