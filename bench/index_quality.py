"""Metrics of a trained model under each FAISS index kind (issue 14): flat vs IVF vs HNSW on the same queries.

    python -m bench.index_quality                                  # models/model.pt + models/baseline/model.pt
    python -m bench.index_quality --model /work/main/models/model.pt --prepared /work/main/data/prepared \\
        --features /work/main/data/features --baseline /work/main/models/baseline/model.pt --threads 1

Each model's user vectors are computed once per stage (valid, test) and ranked with every kind, using the
``evaluate.ivf`` / ``evaluate.hnsw`` parameters of ``--params`` (``evaluate.index`` itself is ignored: all three
run). This is exactly what ``python -m stages.evaluate`` with ``evaluate.index: <kind>`` reports for the model and
the baseline (NDCG@K, and for IVF/HNSW recall@K against flat), without the rest of the report. Prints a table.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import faiss
import torch
import typer

from pipeline.config import EvaluateConfig, IndexConfig, load_section
from pipeline.data.splits import load_split
from pipeline.evaluation.ranking import evaluate_vectors, model_queries
from pipeline.serving.inference import item_table, load_trained, resolve_device

app = typer.Typer(add_completion=False)


@app.command()
def main(
    params: Annotated[Path, typer.Option(help="reads evaluate.ks, .ivf, .hnsw, .batch_size")] = Path("params.yaml"),
    model: Annotated[Path, typer.Option(help="train stage checkpoint")] = Path("models/model.pt"),
    baseline: Annotated[Path | None, typer.Option(help="baseline checkpoint (also ranked)")] = Path(
        "models/baseline/model.pt"
    ),
    prepared: Annotated[Path, typer.Option(help="prepare stage output")] = Path("data/prepared"),
    features: Annotated[Path, typer.Option(help="embed stage output")] = Path("data/features"),
    device: Annotated[str, typer.Option(help="auto | cpu | cuda")] = "cpu",
    threads: Annotated[int, typer.Option(help="torch/faiss threads; 0 = default")] = 0,
    k: Annotated[int, typer.Option(help="the K of the table (must be one of evaluate.ks)")] = 10,
) -> None:
    if threads > 0:
        torch.set_num_threads(threads)
        faiss.omp_set_num_threads(threads)
    cfg: EvaluateConfig = load_section(EvaluateConfig, "evaluate", params)
    if k not in cfg.ks:
        raise typer.BadParameter(f"--k {k} is not one of evaluate.ks {cfg.ks}")
    torch_device = resolve_device(device, "--device")
    split = load_split(prepared)
    kinds = [IndexConfig(kind, cfg.ivf, cfg.hnsw) for kind in ("flat", "ivf", "hnsw")]
    rows = []
    for path in [model, *([baseline] if baseline is not None else [])]:
        net, checkpoint, _ = load_trained(path, features, prepared, torch_device)
        name = checkpoint["model_name"] if path == model else "baseline"
        t0 = time.perf_counter()
        vectors = item_table(net)  # (N+1, D)
        queries = {
            stage: model_queries(net, split, stage, checkpoint["max_seq_len"], cfg.batch_size, torch_device)
            for stage in ("valid", "test")
        }
        typer.echo(
            f"{name}: {len(vectors) - 1} items x {vectors.shape[1]}, queries in {time.perf_counter() - t0:.1f} s"
        )
        for index in kinds:
            t0 = time.perf_counter()
            result = evaluate_vectors(
                name, split, vectors, queries.__getitem__, cfg.ks, index=index, device=torch_device
            )
            seconds = time.perf_counter() - t0
            recall = result.index.get("recall_vs_flat", {})
            fallback = result.index.get("exact_fallback_users", {})
            rows.append(
                (
                    name,
                    result.index["factory"],
                    ", ".join(f"{a} {b}" for a, b in result.index["params"].items()) or "-",
                    *(result.metrics()[s][f"NDCG@{k}"] for s in ("valid", "test")),
                    *(recall.get(s, {}).get(f"recall@{k}") for s in ("valid", "test")),
                    sum(fallback.values()),
                    seconds,
                )
            )
    typer.echo(
        f"\n| run | index | params | valid NDCG@{k} | test NDCG@{k} | valid recall@{k} vs flat | "
        f"test recall@{k} vs flat | fallback users | rank s |"
    )
    typer.echo("|---|---|---|---:|---:|---:|---:|---:|---:|")
    for name, factory, p, v, t, rv, rt, fb, s in rows:
        rv, rt = ("exact", "exact") if rv is None else (f"{rv:.4f}", f"{rt:.4f}")
        typer.echo(f"| {name} | {factory} | {p} | {v:.4f} | {t:.4f} | {rv} | {rt} | {fb} | {s:.1f} |")


if __name__ == "__main__":
    app()
