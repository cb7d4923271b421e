"""Download one data set end to end: raw files (+ checksums, zip extraction), then optionally item images.

Layout under ``out`` (default ``data/raw/<dataset>[/<category>]``)::

    <out>/<files as named on the server>      e.g. All_Beauty.jsonl.gz, meta_All_Beauty.jsonl.gz, ml-25m.zip
    <out>/<archive folder>/                   extracted zips (MovieLens): this is data.path
    <out>/manifest.json                       every raw file: ok/failed, reason, bytes, sha256, attempts
    <out>/images/<item id>.<jpg|png|webp>     with --images: this is data.images_dir
    <out>/images/manifest.json                every image: ok/failed and why

Re-running resumes: finished files are verified and skipped, partial ones continue where they stopped.

:func:`download_table_images` is the same image step for your own item table (``data.source: table``).
"""

from __future__ import annotations

import logging
import re
import shutil
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from pipeline.config import DataConfig
from pipeline.download import catalog
from pipeline.download.http import (
    DownloadError,
    FetchOptions,
    FetchResult,
    RemoteFile,
    check_reachable,
    fetch_all,
    fetch_file,
    write_manifest,
)
from pipeline.download.images import ImageSummary, download_images
from pipeline.io import check_disjoint
from pipeline.schema import Bool, Float, Int, Section, Str

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DownloadConfig(Section):
    """The ``download:`` section of params.yaml (or the CLI options of ``python -m stages.download``)."""

    SECTION: ClassVar[str] = "download"
    dataset: Str  # a key of pipeline.download.catalog.CATALOG
    category: Str | None  # Amazon category, e.g. All_Beauty; null = the data set's default
    out: Str | None  # null = data/raw/<dataset>[/<category>]
    images: Bool  # also fetch item images (Amazon)
    workers: Int  # concurrent requests
    retries: Int  # retries per file after the first attempt
    timeout: Float  # seconds per connect/read
    base_url: Str | None  # mirror or test server replacing the catalogue's base URL
    url_list: Str | None = None  # ml1m_posters only: the poster URL list (URL or local file); null = the default


@dataclass
class DownloadSummary:
    dataset: str
    out: Path
    data_path: Path
    files: list[FetchResult]
    images_dir: Path | None = None
    images: ImageSummary | None = None
    messages: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.files)


def resolve(cfg: DownloadConfig) -> tuple[catalog.Dataset, str | None, Path]:
    """The catalogue entry, the category and the output folder; unknown names raise ``DownloadError``."""
    if cfg.dataset not in catalog.CATALOG:
        raise DownloadError(f"unknown data set {cfg.dataset!r}; must be one of: {', '.join(catalog.CATALOG)}")
    spec = catalog.CATALOG[cfg.dataset]
    category = cfg.category
    if spec.categories:
        category = category or spec.default_category
        if category not in spec.categories:
            raise DownloadError(
                f"{cfg.dataset}: unknown category {category!r}; must be one of: {', '.join(spec.categories)}"
            )
    elif category is not None:
        raise DownloadError(f"{cfg.dataset} has no categories; drop --category {category}")
    out = Path(cfg.out) if cfg.out else Path("data/raw") / cfg.dataset / (category or "")
    return spec, category, out


def _published_md5(url: str, opts: FetchOptions) -> str | None:
    """The MD5 published at ``url`` (``<hash>  <name>`` or ``MD5 (<name>) = <hash>``), or None if unavailable."""
    with tempfile.TemporaryDirectory() as tmp:
        result = fetch_file(RemoteFile(url=url, dest=Path(tmp) / "checksum"), FetchOptions(opts.timeout, 1, 0.5))
        if not result.ok:
            log.info("no checksum at %s (%s): size is still checked against Content-Length", url, result.reason)
            return None
        match = re.search(r"\b([0-9a-fA-F]{32})\b", (Path(tmp) / "checksum").read_text(errors="replace"))
    return match.group(1).lower() if match else None


def extract(archive: Path, out: Path) -> None:
    """Extract a zip into ``out`` once (a marker records it); members escaping ``out`` are refused."""
    marker = out / f".{archive.name}.extracted"
    stamp = f"{archive.stat().st_size}"
    if marker.exists() and marker.read_text() == stamp:
        return
    with zipfile.ZipFile(archive) as z:
        for member in z.namelist():
            if member.startswith("/") or ".." in Path(member).parts:
                raise DownloadError(f"{archive}: refusing to extract {member!r} (path outside the folder)")
        tmp = Path(tempfile.mkdtemp(prefix=".extract.", dir=out))
        try:
            z.extractall(tmp)
            for entry in tmp.iterdir():
                target = out / entry.name
                if target.is_dir():
                    shutil.rmtree(target)
                elif target.exists():
                    target.unlink()
                entry.rename(target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    marker.write_text(stamp)
    log.info("extracted %s", archive)


def _item_images(spec: catalog.Dataset, data_path: Path, images_dir: Path, opts: FetchOptions, workers: int,
                 progress: bool) -> ImageSummary:  # fmt: skip
    """Read the items with the data set's reader (image_ref = URL) and fetch their images."""
    from pipeline.data.readers.amazon2018 import read_amazon2018
    from pipeline.data.readers.amazon2023 import read_amazon2023

    readers = {"amazon2018": read_amazon2018, "amazon2023": read_amazon2023}
    cfg = DataConfig(
        source=spec.source, path=str(data_path), images_dir=None, min_rating=None, user_core=1, item_core=1,
        dedupe="user_item", max_seq_len=1, cold_start_fraction=0.0, seed=0,
    )  # fmt: skip
    items = readers[spec.source](cfg).items
    return download_images(items, images_dir, opts, workers, progress=progress)


def download_dataset(
    cfg: DownloadConfig, *, progress: bool = True, limits: dict[str, int] | None = None
) -> DownloadSummary:
    """Fetch ``cfg.dataset`` into its output folder; see the module docstring. Raises ``DownloadError`` when the
    data set is unknown, must be obtained by hand, or no network is reachable. ``limits``: ``max_bytes`` /
    ``max_image_bytes`` of :class:`FetchOptions` (their defaults otherwise)."""
    spec, category, out = resolve(cfg)
    if cfg.url_list is not None and spec.name != "ml1m_posters":
        raise DownloadError(f"--url-list is read only by ml1m_posters, not {spec.name}; drop it")
    if spec.name == "ml1m_posters":
        return _posters(cfg, out, progress, limits)
    if spec.base_url is None:
        raise DownloadError(f"{spec.name} cannot be downloaded by this tool.\n{spec.manual.format(out=out)}")
    opts = FetchOptions(timeout=cfg.timeout, retries=cfg.retries, **(limits or {}))
    urls = [spec.url(f, cfg.base_url) for f in spec.files(category)]
    check_reachable(urls[0], cfg.timeout)
    remotes = []
    for url in urls:
        md5 = _published_md5(url + spec.checksum_suffix, opts) if spec.checksum_suffix else None
        remotes.append(RemoteFile(url=url, dest=out / url.rsplit("/", 1)[-1], md5=md5))
    results = fetch_all(remotes, opts, cfg.workers, desc=spec.name, unit="B", progress=progress)
    payload = {"dataset": spec.name, "category": category, "description": spec.description}
    write_manifest(out / "manifest.json", payload, results)
    summary = DownloadSummary(dataset=spec.name, out=out, data_path=spec.data_path(out), files=results)
    if not summary.ok:
        summary.messages.append(f"{sum(not r.ok for r in results)} file(s) failed; see {out / 'manifest.json'}")
        return summary
    for result in results:
        if result.path.endswith(".zip"):
            extract(Path(result.path), out)
    if cfg.images and spec.images:
        summary.images_dir = out / "images"
        summary.images = _item_images(spec, summary.data_path, summary.images_dir, opts, cfg.workers, progress)
    elif cfg.images:
        summary.messages.append(f"{spec.name} has no image URLs; --images ignored")
    return summary


def _posters(cfg: DownloadConfig, out: Path, progress: bool, limits: dict[str, int] | None) -> DownloadSummary:
    from pipeline.download.posters import download_ml1m_posters

    opts = FetchOptions(timeout=cfg.timeout, retries=cfg.retries, **(limits or {}))
    got = download_ml1m_posters(out, opts, cfg.workers, cfg.base_url, cfg.url_list, progress=progress)
    summary = DownloadSummary(dataset="ml1m_posters", out=out, data_path=out, files=got.files)
    if not summary.ok:
        summary.messages.append(f"{sum(not r.ok for r in got.files)} file(s) failed; see {out / 'manifest.json'}")
        return summary
    summary.images_dir, summary.images = out / "images", got.images
    if got.from_repository:
        summary.messages.append(f"{got.from_repository} poster(s) came from the repository's copy (listed URL failed)")
    return summary


def download_table_images(data: DataConfig, opts: FetchOptions, workers: int, *, progress: bool = True) -> ImageSummary:
    """Fetch the http(s) image URLs of a ``data.source: table`` item table into ``data.images_dir``.

    Stored as ``<images_dir>/<item id>.<ext>``, the layout prepare looks up first, so the next ``dvc repro`` finds
    them with no other change. Local paths in the image column are left alone (they are already on disk).
    """
    from pipeline.data.readers.table import read_table_items, table_files

    if data.source != "table" or data.table.item_columns.image is None or data.images_dir is None:
        raise DownloadError(
            "python -m stages.download table fetches the image URLs of your item table: set data.source: table, "
            "data.table.item_columns.image (the URL column) and data.images_dir (where to store them) in params.yaml"
        )
    base = Path(data.path) if data.path is not None else None
    files, _ = table_files(data.table.items, base, "items", data.table.format)
    check_disjoint({"data.images_dir": data.images_dir}, {}, {f"data.table.items ({f.name})": f for f in files})
    items, _ = read_table_items(data)
    return download_images(items, Path(data.images_dir), opts, workers, progress=progress)
