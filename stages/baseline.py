"""DVC stage `baseline`: fit the SASRec baseline from its own `baseline:` section -> models/baseline/model.pt.

python -m stages.baseline --params params.yaml --prepared data/prepared --features data/features --out models/baseline

Its own section means no change under `model:` or `train:` retrains it: `dvc exp run -S model.distill_weight=0.5`
reruns only `train` and `evaluate`, and every model is compared with the same cached baseline.
"""

from __future__ import annotations

import logging
from pathlib import Path

import typer

from pipeline import cli
from pipeline.config import BASELINE_MODEL, DEFAULT_PARAMS, BaselineConfig, DataConfig, load_section
from pipeline.training import distributed
from pipeline.training.job import train_to_dir

log = logging.getLogger("stages.baseline")
app = typer.Typer(add_completion=False, help=__doc__)


@cli.command(app)
def main(
    params: cli.params("baseline, data.max_seq_len") = DEFAULT_PARAMS,
    prepared: cli.Prepared = Path("data/prepared"),
    features: cli.Features = Path("data/features"),
    out: cli.out("model.pt, train_summary.json, dvclive/") = Path("models/baseline"),
) -> None:
    """Train SASRec with `baseline.train` and `baseline.model`; keep the epoch with the best valid NDCG@10."""
    cfg: BaselineConfig = load_section(BaselineConfig, "baseline", params)
    max_seq_len = load_section(DataConfig, "data", params).max_seq_len
    args = distributed.cli_args(params=params, prepared=prepared, features=features, out=out)
    if distributed.relaunch(cfg.train, "stages.baseline", args, section="baseline.train"):  # ran under torchrun
        return
    with distributed.session(cfg.train.device):  # joins the process group when torchrun started this process
        result = train_to_dir(BASELINE_MODEL, cfg.build(params), cfg.train, max_seq_len, prepared, features, out)
    best = (result.best_epoch, result.epochs_run, result.best_valid)
    log.info("baseline: best epoch %d of %d, valid %s -> %s", *best, out)


if __name__ == "__main__":
    app()
