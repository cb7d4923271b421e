"""DVC stage `pretrain`: MP4SR's contrastive pre-training -> models/pretrain/pretrain.pt (a marker when not needed).

python -m stages.pretrain --params params.yaml --prepared data/prepared --features data/features --out models/pretrain
"""

from __future__ import annotations

from pathlib import Path

import typer

from pipeline import cli
from pipeline.config import DEFAULT_PARAMS, DataConfig, ModelConfig, TrainConfig, load_section
from pipeline.training import distributed
from pipeline.training.job import pretrain_to_dir
from pipeline.training.pretrain import PretrainConfig, skip_reason

app = typer.Typer(add_completion=False, help=__doc__)


@cli.command(app)
def main(
    params: cli.params("pretrain, model, train, data") = DEFAULT_PARAMS,
    prepared: cli.Prepared = Path("data/prepared"),
    features: cli.Features = Path("data/features"),
    out: cli.out("pretrain.pt, pretrain_summary.json, dvclive/") = Path("models/pretrain"),
) -> None:
    """Pre-train MP4SR's M2SE (NI + CM losses); keep the epoch with the best valid NDCG@10."""
    pretrain_cfg: PretrainConfig = load_section(PretrainConfig, "pretrain", params)
    model_cfg: ModelConfig = load_section(ModelConfig, "model", params)
    train_cfg: TrainConfig = load_section(TrainConfig, "train", params)
    max_seq_len = load_section(DataConfig, "data", params).max_seq_len
    args = distributed.cli_args(params=params, prepared=prepared, features=features, out=out)
    # train.launcher torchrun: pre-training runs under torchrun (a marker never does)
    if skip_reason(model_cfg.name, pretrain_cfg) is None and distributed.relaunch(train_cfg, "stages.pretrain", args):
        return
    pretrain_to_dir(model_cfg, params, pretrain_cfg, train_cfg, max_seq_len, prepared, features, out)


if __name__ == "__main__":
    app()
