"""DVC stage `train`: fit the model named by `model.name` on the leave-one-out split -> models/model.pt.

python -m stages.train --params params.yaml --prepared data/prepared --features data/features --out models
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from pipeline import cli
from pipeline.config import DEFAULT_PARAMS, DataConfig, ModelConfig, TrainConfig, load_section
from pipeline.training import distributed
from pipeline.training.job import train_to_dir

log = logging.getLogger("stages.train")
PRETRAINED = Path("models/pretrain/pretrain.pt")  # a marker there means: train from scratch
BASELINE = Path("models/baseline/model.pt")  # read only with model.init_from_baseline
app = typer.Typer(add_completion=False, help=__doc__)


@cli.command(app)
def main(
    params: cli.params("train, model, data.max_seq_len") = DEFAULT_PARAMS,
    prepared: cli.Prepared = Path("data/prepared"),
    features: cli.Features = Path("data/features"),
    out: cli.out("model.pt, train_summary.json, dvclive/") = Path("models"),
    pretrained: Annotated[Path, typer.Option(help="pretrain stage output (MP4SR)")] = PRETRAINED,
    baseline: Annotated[Path, typer.Option(help="baseline stage output (model.init_from_baseline)")] = BASELINE,
) -> None:
    """Train the configured model; keep the epoch with the best valid NDCG@10."""
    train_cfg: TrainConfig = load_section(TrainConfig, "train", params)
    model_cfg: ModelConfig = load_section(ModelConfig, "model", params)
    max_seq_len = load_section(DataConfig, "data", params).max_seq_len
    config = model_cfg.build(params)
    args = distributed.cli_args(
        params=params, prepared=prepared, features=features, out=out, pretrained=pretrained, baseline=baseline
    )
    if distributed.relaunch(train_cfg, "stages.train", args):  # train.launcher torchrun: it ran under torchrun
        return
    with distributed.session(train_cfg.device):  # joins the process group when torchrun started this process
        result = train_to_dir(
            model_cfg.name, config, train_cfg, max_seq_len, prepared, features, out, pretrained, baseline
        )
    log.info("best epoch %d of %d: valid %s -> %s", result.best_epoch, result.epochs_run, result.best_valid, out)


if __name__ == "__main__":
    app()
