"""Item images: fetch each item's ``image_ref`` URL to ``<images_dir>/<image_file_stem(item_id)>.<ext>``.

That is the layout prepare looks up (``pipeline.data.images``), so setting ``data.images_dir`` to the folder is
all a user does afterwards. Every downloaded file is decoded before it is kept (:func:`verify_image`): a corrupt
or truncated file, an HTML error page served as 200, or an image above ``MAX_PIXELS`` is recorded as failed and
removed. CMYK, grayscale, palette and 16-bit images are fine (prepare/embed convert to RGB). JPEG, PNG and WebP
keep their bytes (the extension follows the real format, not the URL); other formats (GIF, BMP, TIFF...) are
converted to PNG. A failed image never stops anything: the item is later counted as missing and masked.

Resume: an item whose image file already exists is not requested again.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import polars as pl
from PIL import Image

from pipeline.data.images import IMAGE_EXTENSIONS
from pipeline.data.paths import file_stems, inside_root
from pipeline.download.http import FetchOptions, FetchResult, RemoteFile, fetch_all, write_manifest

log = logging.getLogger(__name__)

MAX_PIXELS = 89_478_485  # PIL's decompression-bomb threshold; larger images are refused
_KEEP = {"JPEG": "jpg", "MPO": "jpg", "PNG": "png", "WEBP": "webp"}  # MPO: multi-picture JPEG (some phones)


def verify_image(path: Path) -> str | None:
    """None when ``path`` decodes as an image of sane size; otherwise why not (for the manifest)."""
    try:
        with Image.open(path) as image:
            width, height = image.size
            image.verify()  # structure and checksums, without decoding pixels
        if width < 1 or height < 1 or width * height > MAX_PIXELS:
            return f"unusable image size {width}x{height} (limit {MAX_PIXELS:,} pixels)"
        with Image.open(path) as image:
            image.draft("RGB", (512, 512))  # JPEG: decode at a reduced scale (truncation is still detected)
            image.load()
            image.convert("RGB")
    except Exception as e:  # noqa: BLE001 - PIL raises many types on bad files; a bad image is only recorded
        return f"not a readable image: {type(e).__name__}: {e}"
    return None


def _normalise_format(path: Path) -> Path:
    """Rename to the extension of the real format, converting formats prepare does not read to PNG."""
    with Image.open(path) as image:
        fmt = image.format or ""
        if fmt not in _KEEP:
            converted = path.with_suffix(".png")
            tmp = converted.with_name(converted.name + ".part")
            image.convert("RGBA" if "A" in image.getbands() else "RGB").save(tmp, format="PNG")
            os.replace(tmp, converted)
            if converted != path:
                path.unlink()
            return converted
    target = path.with_suffix("." + _KEEP[fmt])
    if target != path:
        os.replace(path, target)
    return target


def _url_extension(url: str) -> str:
    suffix = Path(urllib.parse.urlsplit(url).path).suffix.lower().lstrip(".")
    return suffix if suffix in IMAGE_EXTENSIONS else "jpg"


def _present(images_dir: Path) -> dict[str, str]:
    """``stem -> file name`` of the images already in ``images_dir``; a link resolving outside it does not count."""
    found: dict[str, str] = {}
    with os.scandir(images_dir) as entries:
        for entry in entries:
            stem, dot, ext = entry.name.rpartition(".")
            if dot and ext.lower() in IMAGE_EXTENSIONS and entry.is_file():
                if inside_root(images_dir / entry.name, images_dir):
                    found[stem] = entry.name
                else:
                    log.warning("%s resolves outside %s: ignored (fetched again)", entry.path, images_dir)
    return found


@dataclass
class ImageSummary:
    items: int  # items in the frame
    without_url: int  # no http(s) image_ref
    results: list[FetchResult]
    renamed: int = 0  # ids given a <stem>~<hash> name (pipeline.data.paths.file_stems)

    @property
    def failed(self) -> int:
        return sum(not r.ok for r in self.results)


def download_images(
    items: pl.DataFrame, images_dir: Path, opts: FetchOptions, workers: int, *, progress: bool = True
) -> ImageSummary:
    """Fetch the ``image_ref`` URL of every item in ``items`` (columns ``item_id``, ``image_ref``)."""
    images_dir.mkdir(parents=True, exist_ok=True)
    present = _present(images_dir)
    cached: list[FetchResult] = []
    todo: list[RemoteFile] = []
    without_url = 0
    stems, renamed = file_stems(items["item_id"].to_list())  # distinct ids never share a file (a/b vs a_b)
    for stem, url in zip(stems, items["image_ref"].to_list(), strict=True):
        if not url or not url.startswith(("http://", "https://")):
            without_url += 1
            continue
        if stem in present:
            path = images_dir / present[stem]
            cached.append(FetchResult(url=url, path=str(path), status="ok", reason="already present"))
            continue
        dest = images_dir / f"{stem}.{_url_extension(url)}"
        present[stem] = dest.name  # the same id twice: fetch once
        todo.append(RemoteFile(url=url, dest=dest))
    log.info("images: %d to fetch, %d already present, %d items without an image URL", len(todo), len(cached),
             without_url)  # fmt: skip
    opts = dataclasses.replace(opts, max_bytes=opts.max_image_bytes)
    fetched = fetch_all(todo, opts, workers, check=verify_image, desc="images", unit="img", progress=progress)
    for result in fetched:
        if result.ok:
            try:
                result.path = str(_normalise_format(Path(result.path)))
            except OSError as e:  # verified a moment ago; only a disk problem can get here
                result.status, result.reason = "failed", f"could not store the image: {e}"
    summary = ImageSummary(items=items.height, without_url=without_url, results=cached + fetched, renamed=renamed)
    write_manifest(
        images_dir / "manifest.json",
        {
            "items": summary.items,
            "items_without_url": without_url,
            "renamed_file_names": renamed,
            "layout": "<image_file_stem(item_id)>.<ext>; ids sharing a stem or too long: <stem>~<sha256[:12]>.<ext>",
        },
        summary.results,
    )
    if summary.failed:
        log.warning(
            "%d of %d images failed (see %s)", summary.failed, len(summary.results), images_dir / "manifest.json"
        )
    return summary
