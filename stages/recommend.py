"""Stage `recommend`: `export` (the DVC stage) -> recommendations/ (index/, topk.parquet) and reports/gallery.html;
`query --history "Toy Story (1995),Fargo (1996)" [--k 10] [--json]` or `query --user 42`: one history's top-K.
Without a subcommand (the form from before the split): `query` with --history/--user, else `export`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from pipeline import cli
from pipeline.cli import cli_errors, setup_logging
from pipeline.config import DEFAULT_PARAMS, RecommendConfig, load_section
from pipeline.serving.job import export_to_dir, query
from pipeline.serving.recommend import format_table

QUERY_OPTIONS = {"--history", "--user"}
route = cli.implied_command(lambda args: "query" if QUERY_OPTIONS & {a.split("=")[0] for a in args} else "export")
app = typer.Typer(add_completion=False, help=__doc__, cls=route)
Params = cli.params("only `recommend`")
K = Annotated[int | None, typer.Option(help="items to return; default recommend.k")]


@app.command("export")
@cli_errors
def export_command(
    params: Params = DEFAULT_PARAMS,
    prepared: cli.Prepared = Path("data/prepared"),
    features: cli.Features = Path("data/features"),
    model: cli.Model = Path("models/model.pt"),
    baseline: cli.Baseline = Path("models/baseline/model.pt"),
    out: cli.out("index/ and topk.parquet") = Path("recommendations"),
    gallery: Annotated[Path, typer.Option(help="the gallery page")] = Path("reports/gallery.html"),
    device: cli.Device = "auto",
    k: K = None,
) -> None:
    """Write the item index, every user's top-K and the gallery (the DVC stage)."""
    setup_logging()
    cfg = load_section(RecommendConfig, "recommend", params)
    export_to_dir(cfg, prepared, features, model, baseline, out, gallery, device, k)


@app.command("query")
@cli_errors
def query_command(
    params: Params = DEFAULT_PARAMS,
    prepared: cli.Prepared = Path("data/prepared"),
    features: cli.Features = Path("data/features"),
    model: cli.Model = Path("models/model.pt"),
    index: Annotated[Path, typer.Option(help="`export`'s index/")] = Path("recommendations/index"),
    device: cli.Device = "auto",
    history: Annotated[str | None, typer.Option(help="raw item ids, oldest first, separated by --sep")] = None,
    user: Annotated[str | None, typer.Option(help="a user_id of sequences.parquet: all their items")] = None,
    k: K = None,
    as_json: Annotated[bool, typer.Option("--json", help="print a JSON list of {item_id, title, score}")] = False,
    skip_unknown: Annotated[bool, typer.Option(help="drop unknown item ids with a warning")] = False,
    sep: Annotated[str, typer.Option(help="separator of --history (ids containing it still match)")] = ",",
) -> None:
    """Print the top-K after one history (--history) or one user's items (--user)."""
    setup_logging(quiet=True)
    k = k if k is not None else load_section(RecommendConfig, "recommend", params).k
    rows = query(prepared, features, model, index, k, history, user, sep, skip_unknown, device)
    typer.echo(json.dumps(rows, ensure_ascii=False) if as_json else format_table(rows))


if __name__ == "__main__":
    app()
