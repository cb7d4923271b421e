"""DVC stage `pretrain`: MP4SR's contrastive pre-training -> models/pretrain/pretrain.pt (a marker when not needed).

python -m stages.pretrain --params params.yaml --prepared data/prepared --features data/features --out models/pretrain
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import typer
from dvclive import Live

from pipeline import cli, distributed
from pipeline.cli import cli_errors, setup_logging
from pipeline.config import DEFAULT_PARAMS, DataConfig, ModelConfig, TrainConfig, load_section
from pipeline.data.splits import load_split
from pipeline.features.store import load_catalog
from pipeline.io import check_disjoint
from pipeline.models import registry
from pipeline.pretrain import PRETRAIN_NAME, SUMMARY_NAME, PretrainConfig, pretrain, skip_reason, write_marker
from pipeline.train import peak_rss_mb, seed_everything, write_summary

log = logging.getLogger("stages.pretrain")
app = typer.Typer(add_completion=False, help=__doc__)


@app.command()
@cli_errors
def main(
    params: cli.params("pretrain, model, train, data") = DEFAULT_PARAMS,
    prepared: cli.Prepared = Path("data/prepared"),
    features: cli.Features = Path("data/features"),
    out: cli.out("pretrain.pt, pretrain_summary.json, dvclive/") = Path("models/pretrain"),
) -> None:
    """Pre-train MP4SR's M2SE (NI + CM losses); keep the epoch with the best valid NDCG@10."""
    setup_logging()
    pretrain_cfg: PretrainConfig = load_section(PretrainConfig, "pretrain", params)
    model_cfg: ModelConfig = load_section(ModelConfig, "model", params)
    train_cfg: TrainConfig = load_section(TrainConfig, "train", params)
    max_seq_len = load_section(DataConfig, "data", params).max_seq_len
    check_disjoint({"--out": out}, {"--prepared": prepared, "--features": features})
    reason = skip_reason(model_cfg.name, pretrain_cfg)
    if reason is None:  # train.launcher torchrun: pre-training runs under torchrun (a marker never does)
        args = distributed.cli_args(params=params, prepared=prepared, features=features, out=out)
        if distributed.relaunch(train_cfg, "stages.pretrain", args):
            return
        spec = registry.spec(model_cfg.name, params)
        catalog = load_catalog(features, prepared, spec.needs_features, max_seq_len, spec.all_modalities_required)
        split = load_split(prepared)
    names = (PRETRAIN_NAME, SUMMARY_NAME, "dvclive")  # a marker too (write_marker writes the summary; dvclive/ empty)
    with (
        distributed.session(train_cfg.device),
        distributed.published(out, names) as stage,  # rank 0: swapped in together at the end, or not at all
        distributed.main_only(lambda: Live(dir=str(stage / "dvclive"), dvcyaml=False, save_dvc_exp=False)) as live,
    ):
        if reason is not None:
            if distributed.is_main():
                write_marker(stage / PRETRAIN_NAME, reason)
            return
        seed_everything(train_cfg.seed)  # before building: weight init is part of "same seed, same metrics"
        model = registry.build_model(model_cfg.name, model_cfg.build(params), catalog, max_seq_len)
        start = time.perf_counter()
        result = pretrain(model, split, pretrain_cfg, train_cfg, max_seq_len, stage / PRETRAIN_NAME, live=live)
        if distributed.is_main():
            device, seconds = str(distributed.device_for(train_cfg.device)), time.perf_counter() - start
            write_summary(stage / SUMMARY_NAME, result, enabled=True, model_name=model_cfg.name, device=device,
                          total_seconds=seconds, peak_rss_mb=peak_rss_mb())  # fmt: skip


if __name__ == "__main__":
    app()
