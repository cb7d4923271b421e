"""DVC stage `train`: fit the model named by `model.name` on the leave-one-out split -> models/model.pt.

python -m stages.train --params params.yaml --prepared data/prepared --features data/features --out models
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Annotated

import typer
from dvclive import Live

from pipeline.cli import cli_errors
from pipeline.config import DEFAULT_PARAMS, ConfigError, DataConfig, ModelConfig, TrainConfig, load_section
from pipeline.data.splits import load_split
from pipeline.features.store import load_catalog
from pipeline.models import registry
from pipeline.pretrain import init_from_pretrained
from pipeline.train import fit, peak_rss_mb, resolve_device, seed_everything, write_summary

log = logging.getLogger("stages.train")
PRETRAINED = Path("models/pretrain/pretrain.pt")  # a marker there means: train from scratch
app = typer.Typer(add_completion=False, help=__doc__)


@app.command()
@cli_errors
def main(
    params: Annotated[Path, typer.Option(help="params file (train, model, data.max_seq_len)")] = DEFAULT_PARAMS,
    prepared: Annotated[Path, typer.Option(help="prepare stage output")] = Path("data/prepared"),
    features: Annotated[Path, typer.Option(help="embed stage output")] = Path("data/features"),
    out: Annotated[Path, typer.Option(help="model.pt, train_summary.json, dvclive/")] = Path("models"),
    pretrained: Annotated[Path, typer.Option(help="pretrain stage output (MP4SR)")] = PRETRAINED,
) -> None:
    """Train the configured model; keep the epoch with the best valid NDCG@10."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        train_cfg: TrainConfig = load_section(TrainConfig, "train", params)
        model_cfg: ModelConfig = load_section(ModelConfig, "model", params)
        max_seq_len = load_section(DataConfig, "data", params).max_seq_len
        spec = registry.spec(model_cfg.name, params)
        device = resolve_device(train_cfg.device)
        catalog = load_catalog(features, prepared, spec.needs_features, max_seq_len, spec.all_modalities_required)
        split = load_split(prepared)
    except (ConfigError, ValueError, FileNotFoundError) as e:
        log.error("%s", e)
        raise typer.Exit(code=1) from e
    seed_everything(train_cfg.seed)  # before building: weight init is part of "same seed, same metrics"
    model = registry.build_model(model_cfg.name, model_cfg.build(params), catalog)
    try:
        init_from_pretrained(model, pretrained)  # MP4SR: the pre-trained weights; other models or a marker: no-op
    except (ValueError, FileNotFoundError) as e:
        log.error("%s", e)
        raise typer.Exit(code=1) from e
    start = time.perf_counter()
    with Live(dir=str(out / "dvclive"), dvcyaml=False, save_dvc_exp=False) as live:
        result = fit(model, split, train_cfg, max_seq_len, out, live=live)
    write_summary(
        out / "train_summary.json",
        result,
        model_name=model_cfg.name,
        device=str(device),
        num_parameters=sum(p.numel() for p in model.parameters()),
        total_seconds=time.perf_counter() - start,
        peak_rss_mb=peak_rss_mb(),
    )
    log.info("best epoch %d of %d: valid %s -> %s", result.best_epoch, result.epochs_run, result.best_valid, out)


if __name__ == "__main__":
    app()
