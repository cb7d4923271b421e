"""Stage `download`: fetch a data set's raw files (and item images) from their public URLs into data/raw/.

    python -m stages.download amazon2023 --category All_Beauty --images
    python -m stages.download movielens25m
    python -m stages.download                       # everything from the `download:` section of params.yaml
    python -m stages.download table                 # the image URLs of data.table's items -> data.images_dir
    python -m stages.download ml1m_posters          # MovieLens-1M posters -> data.posters_dir (docs/datasets.md)

Never run by `dvc repro` unless the user adds it: every other stage works offline on files already on disk.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from pipeline import cli
from pipeline.config import DEFAULT_PARAMS
from pipeline.download.catalog import BASE_URL_ENV, CATALOG
from pipeline.download.command import download_command

app = typer.Typer(add_completion=False)
log = logging.getLogger("stages.download")
Opt = typer.Option


@cli.command(app)
def main(
    dataset: Annotated[
        str | None, typer.Argument(help=f"one of: {', '.join(CATALOG)}, table; omitted: params.yaml")
    ] = None,
    category: Annotated[str | None, Opt(help="Amazon category, e.g. All_Beauty")] = None,
    out: Annotated[
        Path | None, Opt(help="output folder (default data/raw/<dataset>, /<category> added for Amazon)")
    ] = None,
    images: Annotated[bool, Opt("--images/--no-images", help="also fetch item images (Amazon)")] = False,
    workers: Annotated[int, Opt(min=1, help="concurrent requests")] = 8,
    retries: Annotated[int, Opt(min=0, help="retries per file after the first attempt")] = 4,
    timeout: Annotated[float, Opt(min=0.1, help="seconds per connect/read before a retry")] = 30.0,
    max_file_gb: Annotated[float, Opt(min=0.001, help="largest raw file kept (GB)")] = 200.0,
    max_image_mb: Annotated[float, Opt(min=0.001, help="largest image kept (MB)")] = 50.0,
    base_url: Annotated[str | None, Opt(help=f"mirror for the catalogue's base URL (or {BASE_URL_ENV})")] = None,
    url_list: Annotated[
        str | None, Opt(help="ml1m_posters: the poster URL list (URL or local CSV); default: upstream's")
    ] = None,
    params: cli.params("`download` when DATASET is omitted, `data` for `table`") = DEFAULT_PARAMS,
) -> None:
    """Download one data set; finished files are kept, so an interrupted run resumes where it stopped."""
    options = dict(category=category, out=out, images=images, workers=workers, retries=retries, timeout=timeout)
    limits = dict(max_file_gb=max_file_gb, max_image_mb=max_image_mb, base_url=base_url, url_list=url_list)
    if code := download_command(dataset, params, log, **options, **limits):
        raise typer.Exit(code=code)


if __name__ == "__main__":
    app()
