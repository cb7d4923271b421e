"""Stage `recommend`: `export` (the DVC stage) -> recommendations/ (index/, topk.parquet) and reports/gallery.html;
`query --history "Toy Story (1995),Fargo (1996)" [--k 10] [--json]` or `query --user 42`: one history's top-K.
Without a subcommand (the form from before the split): `query` with --history/--user, else `export`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pipeline import cli
from pipeline.config import DEFAULT_PARAMS, RecommendConfig, load_section
from pipeline.serving.job import export_to_dir, query, render

route = cli.implied_command(lambda options: "query" if options & {"--history", "--user"} else "export")
app = typer.Typer(add_completion=False, help=__doc__, cls=route)
K = Annotated[int | None, typer.Option(help="items to return; default recommend.k")]


@cli.command(app, "export")
def export_command(
    params: cli.params("only `recommend`") = DEFAULT_PARAMS,
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
    cfg = load_section(RecommendConfig, "recommend", params)
    export_to_dir(cfg, prepared, features, model, baseline, out, gallery, device, k)


@cli.command(app, "query", quiet=True)
def query_command(
    params: cli.params("only `recommend`") = DEFAULT_PARAMS,
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
    k = k if k is not None else load_section(RecommendConfig, "recommend", params).k
    typer.echo(render(query(prepared, features, model, index, k, history, user, sep, skip_unknown, device), as_json))


if __name__ == "__main__":
    app()
