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
from pipeline.cli import cli_errors, setup_logging
from pipeline.config import DEFAULT_PARAMS, DataConfig, load_section
from pipeline.download import DownloadConfig, DownloadError, FetchOptions, download_dataset
from pipeline.download.catalog import BASE_URL_ENV, CATALOG
from pipeline.download.run import download_table_images

app = typer.Typer(add_completion=False)
log = logging.getLogger("stages.download")


@app.command()
@cli_errors
def main(
    dataset: Annotated[
        str | None, typer.Argument(help=f"one of: {', '.join(CATALOG)}, table; omitted: params.yaml")
    ] = None,
    category: Annotated[str | None, typer.Option(help="Amazon category, e.g. All_Beauty")] = None,
    out: Annotated[
        Path | None, typer.Option(help="output folder (default data/raw/<dataset>, /<category> added for Amazon)")
    ] = None,
    images: Annotated[bool, typer.Option("--images/--no-images", help="also fetch item images (Amazon)")] = False,
    workers: Annotated[int, typer.Option(min=1, help="concurrent requests")] = 8,
    retries: Annotated[int, typer.Option(min=0, help="retries per file after the first attempt")] = 4,
    timeout: Annotated[float, typer.Option(min=0.1, help="seconds per connect/read before a retry")] = 30.0,
    max_file_gb: Annotated[float, typer.Option(min=0.001, help="largest raw file kept (GB)")] = 200.0,
    max_image_mb: Annotated[float, typer.Option(min=0.001, help="largest image kept (MB)")] = 50.0,
    base_url: Annotated[
        str | None, typer.Option(help=f"mirror for the catalogue's base URL (or {BASE_URL_ENV})")
    ] = None,
    url_list: Annotated[
        str | None, typer.Option(help="ml1m_posters: the poster URL list (URL or local CSV); default: upstream's")
    ] = None,
    params: cli.params("`download` when DATASET is omitted, `data` for `table`") = DEFAULT_PARAMS,
) -> None:
    """Download one data set; finished files are kept, so an interrupted run resumes where it stopped."""
    setup_logging()
    limits = {"max_bytes": int(max_file_gb * 2**30), "max_image_bytes": int(max_image_mb * 2**20)}
    if dataset == "table":  # the image URLs of your own item table (params.yaml `data:`)
        _table_images(load_section(DataConfig, "data", params), FetchOptions(timeout, retries, **limits), workers)
        return
    if dataset is None:
        cfg: DownloadConfig = load_section(DownloadConfig, "download", params)
    else:
        out_str = str(out) if out is not None else None
        cfg = DownloadConfig(dataset, category, out_str, images, workers, retries, timeout, base_url, url_list)
    try:
        summary = download_dataset(cfg, limits=limits)
    except DownloadError as e:
        log.error("%s", e)
        raise typer.Exit(code=2) from e
    for message in summary.messages:
        log.warning("%s", message)
    if not summary.ok:
        raise typer.Exit(code=1)
    spec = CATALOG[cfg.dataset]
    hint = f"data.source: {spec.source}, data.path: {summary.data_path}"
    if cfg.dataset == "ml1m_posters" and summary.images is not None:
        hint = f"data.source: ml1m_recbole, data.posters_dir: {summary.out}"
        n = len(summary.images.results)
        log.info("posters: %d of %d listed fetched or present, %d failed (see %s)", n - summary.images.failed,
                 summary.images.items, summary.images.failed, summary.out / "images" / "manifest.json")  # fmt: skip
        log.info("done. To use them, set in params.yaml -> %s", hint)
        return
    if summary.images is not None:
        hint += f", data.images_dir: {summary.images_dir} ({summary.images.failed} image(s) failed; see manifest)"
    log.info("done. To use it, set in params.yaml -> %s", hint)


def _table_images(data: DataConfig, opts: FetchOptions, workers: int) -> None:
    try:
        summary = download_table_images(data, opts, workers)
    except DownloadError as e:
        log.error("%s", e)
        raise typer.Exit(code=2) from e
    log.info("done: %d image(s) fetched or present, %d failed, %d item(s) without a URL (see %s/manifest.json); "
             "dvc repro now uses them", len(summary.results) - summary.failed, summary.failed, summary.without_url,
             data.images_dir)  # fmt: skip


if __name__ == "__main__":
    app()
