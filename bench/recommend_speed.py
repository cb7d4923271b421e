"""Speed of the on-demand recommender: one query after load, and a batch of 10,000 histories.

    python -m bench.recommend_speed                     # models/model.pt + recommendations/index (dvc repro)
    python -m bench.recommend_speed --model /tmp/m/model.pt --index /tmp/rec/index --threads 1

Loads the model and index once (timed separately), then times ``Recommender.recommend`` (encode the history with
the model's user encoder, search the index, exclude the history) on real ML-1M histories: the median and p95 of
``--queries`` single-history calls, and ``--batch`` histories (users drawn with replacement) in one call. Histories
are the users' full sequences, as ``--user`` uses them. Prints the figures; never a timed assertion.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import faiss
import numpy as np
import torch
import typer

from pipeline.serving.inference import resolve_device
from pipeline.serving.recommend import Recommender, user_sequences

app = typer.Typer(add_completion=False)


@app.command()
def main(
    model: Annotated[Path, typer.Option(help="train stage checkpoint")] = Path("models/model.pt"),
    index: Annotated[Path, typer.Option(help="recommend stage index")] = Path("recommendations/index"),
    prepared: Annotated[Path, typer.Option(help="prepare stage output")] = Path("data/prepared"),
    features: Annotated[Path, typer.Option(help="embed stage output")] = Path("data/features"),
    k: Annotated[int, typer.Option(help="items per query")] = 10,
    queries: Annotated[int, typer.Option(help="single-history queries timed")] = 200,
    batch: Annotated[int, typer.Option(help="histories in the batch")] = 10_000,
    threads: Annotated[int, typer.Option(help="torch/faiss threads; 0 = default")] = 0,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda")] = "cpu",
    seed: int = 0,
) -> None:
    if threads > 0:
        torch.set_num_threads(threads)
        faiss.omp_set_num_threads(threads)
    start = time.perf_counter()
    recommender = Recommender.load(model, features, prepared, index, resolve_device(device, "--device"))
    load_s = time.perf_counter() - start
    sequences = user_sequences(prepared)
    histories = [np.asarray(s, dtype=np.int64) for s in sequences["items"].to_list()]
    lengths = np.array([len(h) for h in histories])
    rng = np.random.default_rng(seed)
    dim, name = recommender.index.vectors.shape[1], recommender.checkpoint["model_name"]
    typer.echo(f"{name}: {recommender.num_items} items, dim {dim}, max_seq_len {recommender.max_seq_len}, K={k}")
    typer.echo(f"{len(histories)} users, history median {np.median(lengths):.0f}, max {lengths.max()}")
    typer.echo(f"torch threads {torch.get_num_threads()}, faiss threads {faiss.omp_get_max_threads()}, {device}")
    typer.echo(f"load (model + index):  {load_s:.2f} s")

    for u in rng.integers(len(histories), size=5):  # warm-up (allocations, ODMT's cached item table)
        recommender.recommend([histories[u]], k)
    seconds = []
    for u in rng.integers(len(histories), size=queries):
        t0 = time.perf_counter()
        recommender.recommend([histories[u]], k)
        seconds.append(time.perf_counter() - t0)
    ms = np.array(seconds) * 1e3
    typer.echo(
        f"one query:             median {np.median(ms):.2f} ms, p95 {np.percentile(ms, 95):.2f} ms ({queries} queries)"
    )

    picked = [histories[u] for u in rng.integers(len(histories), size=batch)]
    t0 = time.perf_counter()
    recommender.recommend(picked, k)
    batch_s = time.perf_counter() - t0
    typer.echo(f"batch of {batch:,}:       {batch_s:.2f} s ({batch / batch_s:,.0f} histories/s)")


if __name__ == "__main__":
    app()
