"""Training speed and memory of SASRec on an ML-1M-sized split: ``python -m bench.train_speed``.

Reads ``data/prepared/sequences.parquet`` when present (the real ML-1M), else builds a synthetic split of the same
size (6,040 users, 3,706 items, lengths drawn like ML-1M's: >= 20, median ~96, long tail capped at the real max).
Trains ``--epochs`` epochs through :func:`pipeline.train.fit` (validation included, timed separately) and prints
seconds per training epoch, sequences/s, peak RSS, and the per-epoch valid NDCG@10 plus the final test metrics.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Annotated

import numpy as np
import torch
import typer

from pipeline import metrics, retrieval
from pipeline.catalog import ItemCatalog
from pipeline.config import TrainConfig
from pipeline.data.dataset import eval_inputs
from pipeline.data.splits import UserSplit, load_split
from pipeline.inference import item_table, resolve_device, user_queries
from pipeline.models.sasrec import SASRec, SASRecConfig
from pipeline.train import fit, peak_rss_mb, seed_everything

log = logging.getLogger("bench.train_speed")
app = typer.Typer(add_completion=False)


def synthetic_ml1m(seed: int = 0, num_users: int = 6040, num_items: int = 3706) -> UserSplit:
    """Random sequences with ML-1M's user count, item count, length distribution and a Zipf-like popularity."""
    rng = np.random.default_rng(seed)
    lengths = np.clip(rng.lognormal(np.log(96), 0.95, num_users), 20, 2314).astype(np.int64)  # (U,)
    popularity = 1.0 / np.arange(1, num_items + 1) ** 0.8  # (N,)
    popularity /= popularity.sum()
    seqs = [rng.choice(num_items, size=n, replace=False, p=popularity) + 1 for n in lengths]
    return UserSplit(
        user_idx=np.arange(num_users, dtype=np.int64),
        train=[s[:-2] for s in seqs],
        valid_target=np.array([s[-2] for s in seqs], dtype=np.int64),
        test_target=np.array([s[-1] for s in seqs], dtype=np.int64),
    )


@app.command()
def main(
    prepared: Annotated[Path, typer.Option(help="real split if sequences.parquet is here")] = Path("data/prepared"),
    synthetic: Annotated[bool, typer.Option(help="use the synthetic split even if real data exists")] = False,
    epochs: int = 1,
    max_seq_len: int = 200,
    batch_size: int = 128,
    hidden_dim: int = 64,
    num_layers: int = 2,
    num_heads: int = 2,
    dropout: float = 0.2,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    num_threads: int = 0,
    device: str = "auto",
    seed: int = 42,
) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    real = (prepared / "sequences.parquet").exists() and not synthetic
    split = load_split(prepared) if real else synthetic_ml1m(seed)
    num_items = int(max(max((s.max() for s in split.train if len(s)), default=0), split.test_target.max()))
    log.info("%s split: %d users, %d items", "real" if real else "synthetic", len(split), num_items)
    catalog = ItemCatalog(num_items=num_items, max_seq_len=max_seq_len, popularity=torch.zeros(num_items + 1))
    cfg = TrainConfig(seed, device, epochs, batch_size, lr, weight_decay, epochs, 1.0, num_threads)
    seed_everything(seed)
    model = SASRec(SASRecConfig(hidden_dim, num_layers, num_heads, dropout), catalog)
    start = time.perf_counter()
    result = fit(model, split, cfg, max_seq_len, None)
    total = time.perf_counter() - start
    queries = user_queries(model, eval_inputs(split, "test", max_seq_len), batch_size, resolve_device(device))  # (U, D)
    topk, _ = retrieval.top_k(queries, item_table(model), split.history("test"), 20)  # (U, 20)
    report = {
        "data": "ml-1m" if real else "synthetic ml-1m-sized",
        "device": str(resolve_device(device)),
        "torch_threads": torch.get_num_threads(),
        "seconds_per_epoch": round(result.seconds_per_epoch, 2),
        "cpu_seconds_per_epoch": round(float(np.mean([row["epoch_cpu_seconds"] for row in result.history])), 2),
        "sequences_per_second": round(result.sequences_per_second, 1),
        "validation_seconds_per_epoch": round((total - result.seconds_per_epoch * result.epochs_run) / epochs, 2),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "valid_ndcg10_per_epoch": [round(row["valid/NDCG@10"], 4) for row in result.history],
        "train_loss_per_epoch": [round(row["train/loss"], 4) for row in result.history],
        "best_epoch": result.best_epoch,
        "test_at_best_epoch": {k: round(v, 4) for k, v in metrics.compute(topk, split.test_target, [10, 20]).items()},
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    app()
