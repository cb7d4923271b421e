"""DVC stage `prepare`: raw logs + item metadata -> items.parquet, sequences.parquet, images/, stats.json.

python -m stages.prepare --params params.yaml --out data/prepared
"""

from __future__ import annotations

import logging
from pathlib import Path

import typer

from pipeline import cli
from pipeline.config import DEFAULT_PARAMS, DataConfig, load_section
from pipeline.data.prepare import prepare

log = logging.getLogger("stages.prepare")
app = typer.Typer(add_completion=False, help=__doc__)


@cli.command(app)
def main(
    params: cli.params("only `data`") = DEFAULT_PARAMS,
    out: cli.out("items.parquet, sequences.parquet, images/, stats.json") = Path("data/prepared"),
) -> None:
    """Read `data.source`, clean it (dedupe, k-core, tie-breaking), map ids and write the prepared data set."""
    stats = prepare(load_section(DataConfig, "data", params), out)  # an error: one line (pipeline.cli)
    dropped = ", ".join(f"{k}={v:,}" for k, v in stats["dropped"].items())
    log.info(
        "%s: %s users, %s items, %s interactions (density %.4f), tie rate %.4f; dropped: %s; images: %s -> %s",
        stats["source"],
        f"{stats['users']:,}",
        f"{stats['items']:,}",
        f"{stats['interactions']:,}",
        stats["density"],
        stats["timestamp_tie_rate"],
        dropped,
        stats["images"],
        out,
    )


if __name__ == "__main__":
    app()
