"""The body of ``python -m stages.download``: the download a command line names, run, and the lines it reports.

``DATASET`` omitted: the ``download:`` section of the params file; ``table``: the image URLs of your own item table
(``data:``); any other name: that data set with the command line's options. Exit codes: 0 done, 1 a file failed
(see its manifest), 2 refused before fetching (:class:`~pipeline.download.http.DownloadError`).
"""

from __future__ import annotations

import logging
from pathlib import Path

from pipeline.config import DataConfig, load_section
from pipeline.download.catalog import CATALOG
from pipeline.download.http import DownloadError, FetchOptions
from pipeline.download.run import DownloadConfig, DownloadSummary, download_dataset, download_table_images


def download_command(
    dataset: str | None,
    params: Path,
    log: logging.Logger,
    *,
    category: str | None = None,
    out: Path | None = None,
    images: bool = False,
    workers: int = 8,
    retries: int = 4,
    timeout: float = 30.0,
    max_file_gb: float = 200.0,
    max_image_mb: float = 50.0,
    base_url: str | None = None,
    url_list: str | None = None,
) -> int:
    """Run the download; report on ``log`` (the stage's logger); return the exit code."""
    limits = {"max_bytes": int(max_file_gb * 2**30), "max_image_bytes": int(max_image_mb * 2**20)}
    if dataset == "table":  # the image URLs of your own item table (params.yaml `data:`)
        data = load_section(DataConfig, "data", params)
        return _table_images(data, FetchOptions(timeout, retries, **limits), workers, log)
    if dataset is None:
        cfg: DownloadConfig = load_section(DownloadConfig, "download", params)
    else:
        out_str = str(out) if out is not None else None
        cfg = DownloadConfig(dataset, category, out_str, images, workers, retries, timeout, base_url, url_list)
    try:
        summary = download_dataset(cfg, limits=limits)
    except DownloadError as e:
        log.error("%s", e)
        return 2
    for message in summary.messages:
        log.warning("%s", message)
    if not summary.ok:
        return 1
    _report(cfg, summary, log)
    return 0


def _report(cfg: DownloadConfig, summary: DownloadSummary, log: logging.Logger) -> None:
    """Where the files are, as the params.yaml lines that use them."""
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


def _table_images(data: DataConfig, opts: FetchOptions, workers: int, log: logging.Logger) -> int:
    try:
        summary = download_table_images(data, opts, workers)
    except DownloadError as e:
        log.error("%s", e)
        return 2
    log.info("done: %d image(s) fetched or present, %d failed, %d item(s) without a URL (see %s/manifest.json); "
             "dvc repro now uses them", len(summary.results) - summary.failed, summary.failed, summary.without_url,
             data.images_dir)  # fmt: skip
    return 0
