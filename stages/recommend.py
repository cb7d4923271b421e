"""Stage `recommend`: the exported item index and every user's top-K -> recommendations/ (index/, topk.parquet),
and reports/gallery.html (model and baseline side by side); with --history or --user, the on-demand CLI.

python -m stages.recommend --params params.yaml                       # the DVC stage
python -m stages.recommend --history "Toy Story (1995),Fargo (1996)" --k 10 [--json] [--skip-unknown]
python -m stages.recommend --user 42
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from pipeline import cli
from pipeline.cli import cli_errors, setup_logging
from pipeline.config import DEFAULT_PARAMS, RecommendConfig, load_section
from pipeline.gallery import export_gallery
from pipeline.inference import load_trained, resolve_device
from pipeline.io import check_disjoint
from pipeline.recommend import Recommender, export, format_table, parse_history, user_history, user_sequences

app = typer.Typer(add_completion=False, help=__doc__)


@app.command()
@cli_errors
def main(
    params: cli.params("only `recommend`") = DEFAULT_PARAMS,
    prepared: cli.Prepared = Path("data/prepared"),
    features: cli.Features = Path("data/features"),
    model: cli.Model = Path("models/model.pt"),
    baseline: cli.Baseline = Path("models/baseline/model.pt"),
    out: cli.out("index/ and topk.parquet") = Path("recommendations"),
    gallery: Annotated[Path, typer.Option(help="the gallery page")] = Path("reports/gallery.html"),
    device: cli.Device = "auto",
    history: Annotated[str | None, typer.Option(help="raw item ids, oldest first, separated by --sep")] = None,
    user: Annotated[str | None, typer.Option(help="a user_id of sequences.parquet: all their items")] = None,
    k: Annotated[int | None, typer.Option(help="items to return; default recommend.k")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print a JSON list of {item_id, title, score}")] = False,
    skip_unknown: Annotated[bool, typer.Option(help="drop unknown item ids with a warning")] = False,
    sep: Annotated[str, typer.Option(help="separator of --history (ids containing it still match)")] = ",",
) -> None:
    """Without --history/--user: write recommendations/. With one of them: print that history's top-K."""
    query = history is not None or user is not None
    setup_logging(quiet=query)
    if history is not None and user is not None:
        raise ValueError("give --history or --user, not both")
    k = k if k is not None else load_section(RecommendConfig, "recommend", params).k
    if k < 1:
        raise ValueError(f"--k = {k} must be >= 1")
    if not query:
        inputs, files = {"--prepared": prepared, "--features": features}, {"--model": model, "--baseline": baseline}
        check_disjoint({"--out": out, "--gallery": gallery}, inputs, files)
        cfg: RecommendConfig = load_section(RecommendConfig, "recommend", params)
        torch_device = resolve_device(device)
        base, base_checkpoint, _ = load_trained(baseline, features, prepared, torch_device)  # fail before writing
        rec, _ = export(model, features, prepared, out, k, cfg.index_config, cfg.batch_size, torch_device)
        runs = [
            (rec.checkpoint["model_name"], rec.model, rec.max_seq_len),
            ("baseline", base, base_checkpoint["max_seq_len"]),
        ]
        export_gallery(gallery, runs, prepared, cfg.gallery_users, cfg.gallery_seed, torch_device)
        return
    recommender = Recommender.load(model, features, prepared, out / "index", resolve_device(device))
    if user is not None:
        items = user_history(user_sequences(prepared), user)
    else:
        items = recommender.map_ids(parse_history(history or "", recommender.idx_of, sep), skip_unknown)
    top_items, top_scores = recommender.recommend([items], k)
    rows = recommender.rows(top_items[0], top_scores[0])
    if as_json:
        typer.echo(json.dumps(rows, ensure_ascii=False))
    else:
        typer.echo(format_table(rows))


if __name__ == "__main__":
    app()
