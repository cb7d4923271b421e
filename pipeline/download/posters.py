"""MovieLens-1M posters (``python -m stages.download ml1m_posters``) into the layout ``data.posters_dir`` reads.

Sources (all public): the URL list ``ml1m_images.csv`` (``item_id`` = MovieLens MovieID, ``image`` = poster URL)
of the repository antonsteenvoorden/ml1m-images (its raw files are the default base URL; ``--url-list`` takes
another URL or a local copy of the list), and ``movies.dat`` from GroupLens' ``ml-1m.zip`` (MD5-checked), the
only link from a MovieID to the title that the embedded ML-1M uses as its item id. Each poster is fetched from
its URL in the list; one that fails there is fetched from the repository's own copy, ``<base>/images/<id>.jpg``.

Layout under ``out`` (default ``data/raw/ml1m_posters``), then set ``data.posters_dir: <out>``::

    <out>/ml1m_images.csv          the URL list
    <out>/ml-1m.zip, movies.dat    GroupLens archive and the movie list taken from it
    <out>/manifest.json            the raw files: ok/failed, reason, bytes, sha256, attempts
    <out>/images/<MovieID>.jpg     posters, each decoded before it is kept (pipeline.download.images)
    <out>/images/manifest.json     every poster: ok/failed and why (both attempts)
    <out>/SHA256SUMS               one ``<sha256>  <file>`` line per poster (``cd images && sha256sum -c``)

Re-running resumes: finished files are kept (the list and the archive are verified, posters are not asked for
again), partial ones continue where they stopped. Failed posters never stop anything: prepare masks those items.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import urllib.parse
import zipfile
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from pipeline.download import catalog
from pipeline.download.http import (
    DownloadError,
    FetchOptions,
    FetchResult,
    RemoteFile,
    check_reachable,
    fetch_file,
    write_manifest,
)
from pipeline.download.images import ImageSummary, download_images
from pipeline.io import write_text_atomic

log = logging.getLogger(__name__)

URL_LIST = "ml1m_images.csv"
MOVIES_MEMBER = "ml-1m/movies.dat"


@dataclass
class PosterDownload:
    files: list[FetchResult]  # the URL list (when fetched) and ml-1m.zip
    images: ImageSummary | None
    from_repository: int  # posters fetched from the repository's copy after their listed URL failed


def read_url_list(path: Path) -> pl.DataFrame:
    """``item_id`` (MovieID as str) and ``image_ref`` (URL) from ``ml1m_images.csv``; bad rows name the line."""
    fix = f"{URL_LIST} must be a CSV with a header `item_id,image` (MovieID, URL); pass another copy with --url-list"
    try:
        rows = list(csv.reader(io.StringIO(path.read_text(encoding="utf-8-sig"))))
    except (OSError, UnicodeDecodeError) as e:
        raise DownloadError(f"{path}: cannot read the poster URL list ({e}). Fix: {fix}") from e
    if not rows or [c.strip() for c in rows[0][:2]] != ["item_id", "image"]:
        raise DownloadError(f"{path}:1: header {rows[0] if rows else []!r} is not `item_id,image`. Fix: {fix}")
    ids, urls, seen = [], [], set()
    for line, row in enumerate(rows[1:], start=2):
        if not row or not "".join(row).strip():
            continue
        movie_id = row[0].strip()
        if not movie_id.isdigit() or len(row) < 2:
            raise DownloadError(f"{path}:{line}: {','.join(row)!r} is not `<MovieID>,<URL>`. Fix: {fix}")
        if movie_id in seen:
            raise DownloadError(f"{path}:{line}: MovieID {movie_id} is listed twice. Fix: {fix}")
        seen.add(movie_id)
        ids.append(movie_id)
        urls.append(row[1].strip())
    return pl.DataFrame({"item_id": ids, "image_ref": urls}, schema={"item_id": pl.String, "image_ref": pl.String})


def _url_list(out: Path, url_list: str | None, base_url: str | None, opts: FetchOptions) -> tuple[Path, list]:
    """The list on disk (fetched into ``out`` unless ``url_list`` is a local file) and its fetch result."""
    if url_list is not None and "://" not in url_list:
        path = Path(url_list)
        if not path.is_file():
            raise DownloadError(f"--url-list {url_list}: no such file. Fix: give a local copy of {URL_LIST} or a URL")
        return path, []
    url = url_list or catalog.CATALOG["ml1m_posters"].url(URL_LIST, base_url)
    check_reachable(url, opts.timeout)
    result = fetch_file(RemoteFile(url=url, dest=out / URL_LIST), opts)
    if not result.ok:
        raise DownloadError(f"could not fetch the poster URL list {url}: {result.reason}. Fix: check the URL, or "
                            f"pass a local copy with --url-list")  # fmt: skip
    return out / URL_LIST, [result]


def _movies_dat(out: Path, opts: FetchOptions) -> FetchResult:
    """GroupLens ``ml-1m.zip`` (MD5-checked when published) and ``movies.dat`` taken from it."""
    from pipeline.download.run import _published_md5

    url = catalog.CATALOG["movielens1m"].url("ml-1m.zip")
    check_reachable(url, opts.timeout)
    md5 = _published_md5(url + ".md5", opts)
    result = fetch_file(RemoteFile(url=url, dest=out / "ml-1m.zip", md5=md5), opts)
    if result.ok:
        with zipfile.ZipFile(out / "ml-1m.zip") as z:
            if MOVIES_MEMBER not in z.namelist():
                result.status, result.reason = "failed", f"{MOVIES_MEMBER} is not in the archive"
                return result
            target = out / "movies.dat"
            tmp = target.with_name(target.name + ".part")
            tmp.write_bytes(z.read(MOVIES_MEMBER))
            tmp.replace(target)
    return result


def _repository_copy(item_id: str, base_url: str | None) -> str:
    return catalog.CATALOG["ml1m_posters"].url(f"images/{urllib.parse.quote(item_id)}.jpg", base_url)


def write_sha256sums(images_dir: Path, out: Path) -> int:
    """``<out>/SHA256SUMS`` for every poster in ``images_dir``, sorted by file name; returns the line count."""
    lines = []
    for path in sorted(p for p in images_dir.iterdir() if p.suffix in (".jpg", ".png", ".webp") and p.is_file()):
        lines.append(f"{hashlib.sha256(path.read_bytes()).hexdigest()}  {path.name}")
    write_text_atomic(out / "SHA256SUMS", "".join(f"{line}\n" for line in lines))
    return len(lines)


def download_ml1m_posters(
    out: Path, opts: FetchOptions, workers: int, base_url: str | None, url_list: str | None, *, progress: bool = True
) -> PosterDownload:
    """Fetch the list, ``movies.dat`` and every poster into ``out`` (see the module docstring)."""
    out.mkdir(parents=True, exist_ok=True)
    list_path, files = _url_list(out, url_list, base_url, opts)
    files.append(_movies_dat(out, opts))
    write_manifest(out / "manifest.json", {"dataset": "ml1m_posters", "url_list": str(list_path)}, files)
    if not all(r.ok for r in files):
        return PosterDownload(files=files, images=None, from_repository=0)
    listed = read_url_list(list_path)
    images_dir = out / "images"
    first = download_images(listed, images_dir, opts, workers, progress=progress)
    done = {Path(r.path).stem for r in first.results if r.ok}
    why = {Path(r.path).stem: r.reason for r in first.results if not r.ok}
    retry = listed.filter(~pl.col("item_id").is_in(list(done)))  # failed, or listed without a URL
    copies = [_repository_copy(i, base_url) for i in retry["item_id"].to_list()]
    retry = retry.with_columns(pl.Series("image_ref", copies, dtype=pl.String))
    second = download_images(retry, images_dir, opts, workers, progress=progress) if retry.height else None
    results = [r for r in first.results if r.ok]
    for result in second.results if second else []:
        if not result.ok:
            listed_reason = why.get(Path(result.path).stem, "no URL in the list")
            result.reason = f"listed URL: {listed_reason}; repository copy: {result.reason}"
        results.append(result)
    summary = ImageSummary(items=listed.height, without_url=first.without_url, results=results)
    write_manifest(
        images_dir / "manifest.json",
        {"items": listed.height, "items_without_url": first.without_url, "layout": "<MovieID>.<ext>"},
        results,
    )
    write_sha256sums(images_dir, out)
    from_repo = sum(r.ok for r in second.results) if second else 0
    return PosterDownload(files=files, images=summary, from_repository=from_repo)
