"""Stage `embed`: frozen text/image features for every item (DESIGN.md), resumable through the content cache.

    python -m stages.embed --params params.yaml --items data/prepared/items.parquet \
        --out data/features --cache data/cache/embeddings
    torchrun --nproc-per-node=4 -m stages.embed ...     # one process per GPU, each encoding its share of the shards
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pipeline import cli
from pipeline.config import EmbedConfig, load_section
from pipeline.features.embed import embed_items
from pipeline.features.ranks import embed_session

app = typer.Typer(add_completion=False, help=__doc__)


@cli.command(app)
def main(
    params: cli.params("only `embed`") = Path("params.yaml"),
    items: Annotated[Path, typer.Option(help="items written by `prepare`")] = Path("data/prepared/items.parquet"),
    out: cli.out("<modality>.npy, manifest.json (a DVC output)") = Path("data/features"),
    cache: Annotated[Path, typer.Option(help="embedding cache, kept across runs")] = Path("data/cache/embeddings"),
) -> None:
    """Encode every item's text and image with the frozen encoders named in `embed`."""
    config = load_section(EmbedConfig, "embed", params)
    with embed_session() as ranks:  # several processes under torchrun (one per GPU), else one
        manifest = embed_items(items, out, cache, config, ranks=ranks)
    if manifest is None:  # not rank 0: rank 0 reports
        return
    for modality, entry in manifest["modalities"].items():
        if entry["enabled"]:
            words = entry.get("image_words")
            how = f"CLIP words (top {words['top_k']} of {words['vocabulary_size']})" if words else entry["encoder"]
            typer.echo(
                f"{modality}: {how} dim {entry['dim']}, {entry['present']}/{entry['items']} present, "
                f"{entry['corrupt']} corrupt, {entry['cache_hits']} from cache, {entry['encoded']} encoded"
            )
        else:
            typer.echo(f"{modality}: disabled")
    typer.echo(f"wrote {out}/ in {manifest['seconds']:.1f} s on {manifest['device']}")


if __name__ == "__main__":
    app()
