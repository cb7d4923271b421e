"""Item images for ``items.parquet``: synthetic title cards, or real images found in ``data.images_dir``.

- ``data.images_dir: null`` (MovieLens ships no images): every item gets a deterministic 224x224 PNG "title card"
  (background colour from the item's first genre, never its id, so the image channel carries content and no ID
  surrogate; the title wrapped; a year/genre line) drawn with PIL's built-in
  font, written to ``<out_dir>/images/<item_idx>.png``. Same item -> same bytes (for a given Pillow build).
  ``image_path`` is ``images/<item_idx>.png``, relative to the prepared folder (never to the working directory).
- ``data.images_dir`` set: the image of item ``x`` is ``<images_dir>/<image_file_stem(x)>.<ext>`` with ``ext`` one of
  ``jpg, jpeg, png, webp`` (tried in that order, extension case-insensitive); if there is none and the reader gave a
  local ``image_ref`` (a path, absolute or relative to ``images_dir``; URLs are ignored), that file is used. Each
  file must resolve (symlinks followed) inside ``images_dir``, else it is counted as ``rejected_outside_root``
  and never opened; it must pass ``PIL.Image.verify()``; an unreadable file is counted as ``corrupt`` and an
  absent one as ``missing``, all with a null ``image_path``. Never fatal: the embed stage masks items without an image.
  ``image_path`` is absolute (``data.images_dir`` resolved, as ``images/index.json`` records it).

Every reader of ``image_path`` finds the file with :func:`resolve_image_path` and opens it only after
:func:`checked_image` (the root check), whatever the working directory of prepare or of the reader.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import shutil
import tempfile
import unicodedata
from functools import lru_cache
from pathlib import Path

import polars as pl
from PIL import Image, ImageDraw, ImageFont
from tqdm import tqdm

from pipeline.config import ConfigError
from pipeline.data.paths import file_stems, inside_root, safe_file_stem
from pipeline.io import current_umask

log = logging.getLogger(__name__)

CARD_SIZE = 224
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")  # lookup order in images_dir
IMAGES = "images"  # the prepared folder's subfolder: title cards, or the index of the real images used
_MARGIN = 14
_TITLE_SIZE, _TITLE_LINES = 20, 6
_SUB_SIZE, _SUB_LINES = 13, 3


def image_file_stem(item_id: str) -> str:
    """The file name (without extension) for ``item_id`` in an images directory (see ``safe_file_stem``)."""
    return safe_file_stem(item_id)


# ----------------------------------------------------------------------------------------------------------------
# Synthetic title cards.


@lru_cache(maxsize=4)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """PIL's built-in font (Aileron via FreeType when available, else the bitmap font); basic layout for speed."""
    font = ImageFont.load_default(size=size)
    if isinstance(font, ImageFont.FreeTypeFont):
        return font.font_variant(layout_engine=ImageFont.Layout.BASIC)
    return font


def card_colour(colour_key: str) -> tuple[int, int, int]:
    """A dark background colour derived from a content key (the first genre; white text stays readable).

    Never the item id: a per-item colour would make the image feature an ID stand-in, not content.
    """
    digest = hashlib.sha256(colour_key.encode("utf-8")).digest()
    return (30 + digest[0] % 130, 30 + digest[1] % 130, 30 + digest[2] % 130)


def _wrap(text: str, font: ImageFont.FreeTypeFont | ImageFont.ImageFont, width: int, max_lines: int) -> list[str]:
    """Greedy word wrap to ``width`` pixels; overlong words are cut, and an ellipsis marks dropped text.

    Linear in ``len(text)``: no glyph is narrower than a pixel, so at most ``width`` characters fit on a line and
    text past ``(max_lines + 1) * width`` characters can never be drawn; wrapping stops after ``max_lines + 1``.
    """
    lines: list[str] = []
    current = ""
    for word in text[: (max_lines + 1) * width].split():
        if len(lines) > max_lines:
            break
        candidate = f"{current} {word}" if current else word
        if font.getlength(candidate) <= width:
            current = candidate
            continue
        if current:
            lines.append(current)
        while font.getlength(word) > width and len(lines) <= max_lines:  # a single word wider than the card
            cut = max(1, int(len(word) * width / font.getlength(word)) - 1)
            lines.append(word[:cut])
            word = word[cut:]
        current = word
    if current:
        lines.append(current)
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] = lines[-1].rstrip(".,;: ") + "..."
    return lines


_ASCII_MAP = str.maketrans(
    {"ß": "ss", "Æ": "AE", "æ": "ae", "Ø": "O", "ø": "o", "Œ": "OE", "œ": "oe", "Ł": "L", "ł": "l", "Đ": "D"}
    | {"đ": "d", "–": "-", "—": "-", "‘": "'", "’": "'", "“": '"', "”": '"'}
)


def card_text(text: str) -> str:
    """``text`` in ASCII for the built-in font, which has no accented glyphs: "Amélie" -> "Amelie"; others -> "?"."""
    decomposed = unicodedata.normalize("NFKD", text.translate(_ASCII_MAP))
    kept = "".join(c for c in decomposed if not unicodedata.combining(c))
    return kept.encode("ascii", "replace").decode("ascii")


def render_title_card(colour_key: str, title: str, subtitle: str) -> Image.Image:
    """A 224x224 RGB card: ``title`` wrapped on a colour from ``colour_key``, ``subtitle`` in a band at the bottom."""
    background = card_colour(colour_key)
    image = Image.new("RGB", (CARD_SIZE, CARD_SIZE), background)
    draw = ImageDraw.Draw(image)
    inner = CARD_SIZE - 2 * _MARGIN
    sub_font, title_font = _font(_SUB_SIZE), _font(_TITLE_SIZE)
    title, subtitle = card_text(title), card_text(subtitle)
    sub_lines = _wrap(subtitle, sub_font, inner, _SUB_LINES)
    band_top = CARD_SIZE - _MARGIN - len(sub_lines) * (_SUB_SIZE + 3) - (6 if sub_lines else 0)
    if sub_lines:
        darker = tuple(c // 2 for c in background)
        draw.rectangle((0, band_top, CARD_SIZE, CARD_SIZE), fill=darker)
        for k, line in enumerate(sub_lines):
            draw.text((_MARGIN, band_top + 6 + k * (_SUB_SIZE + 3)), line, font=sub_font, fill=(215, 215, 215))
    draw.rectangle((_MARGIN, _MARGIN, _MARGIN + 28, _MARGIN + 3), fill=(255, 255, 255))
    for k, line in enumerate(_wrap(title, title_font, inner, _TITLE_LINES)):
        y = _MARGIN + 12 + k * (_TITLE_SIZE + 5)
        if y + _TITLE_SIZE > band_top:
            break
        draw.text((_MARGIN, y), line, font=title_font, fill=(255, 255, 255))
    return image


def title_card_png(colour_key: str, title: str, subtitle: str) -> bytes:
    """PNG bytes of ``render_title_card`` (no metadata, so identical inputs give identical bytes)."""
    buffer = io.BytesIO()
    render_title_card(colour_key, title, subtitle).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def _card_texts(items: pl.DataFrame) -> tuple[list[str], list[str], list[str]]:
    """Title, subtitle and colour key (first genre, "" without one) per item: ``title`` > ``text`` > ``item_id``."""
    ids = items["item_id"].to_list()
    titles = items["title"].to_list() if "title" in items.columns else [None] * items.height
    texts = items["text"].to_list()
    title_out = [t or (x[:160] if x else "") or i for t, x, i in zip(titles, texts, ids, strict=True)]
    years = items["year"].to_list() if "year" in items.columns else [None] * items.height
    if "genres" in items.columns and items.schema["genres"] == pl.List(pl.String):
        genre_lists = [list(g or []) for g in items["genres"].to_list()]
        genres = [", ".join(g) for g in genre_lists]
        keys = [g[0] if g else "" for g in genre_lists]
    elif "genres" in items.columns and items.schema["genres"] == pl.String:
        genres = [g or "" for g in items["genres"].to_list()]
        keys = [re.split(r"[|,]", g)[0].strip() for g in genres]
    else:
        genres = [""] * items.height
        keys = [""] * items.height
    subtitles = [
        " | ".join(p for p in (str(y) if y is not None else "", g) if p) for y, g in zip(years, genres, strict=True)
    ]
    return title_out, subtitles, keys


def write_title_cards(items: pl.DataFrame, out_dir: Path) -> list[str]:
    """Write ``<out_dir>/images/<item_idx>.png`` for every row of ``items``; returns the paths relative to
    ``out_dir`` (``images/<item_idx>.png``), so they hold wherever ``out_dir``'s contents are moved or read from.

    The cards are drawn into a temporary sibling directory that then replaces ``images/`` as a whole, so an
    interrupted run never leaves a half-written image set.
    """
    final = out_dir / IMAGES
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".images.", dir=out_dir))
    tmp.chmod(0o777 & ~current_umask())
    try:
        titles, subtitles, colour_keys = _card_texts(items)
        idx = items["item_idx"].to_list()
        for i, colour_key, title, subtitle in tqdm(
            zip(idx, colour_keys, titles, subtitles, strict=True),
            total=items.height,
            desc="title cards",
            unit="card",
            mininterval=2.0,
        ):
            (tmp / f"{i}.png").write_bytes(title_card_png(colour_key, title, subtitle))
        _replace_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return [f"{IMAGES}/{i}.png" for i in idx]


def _replace_dir(new: Path, final: Path) -> None:
    """Move directory ``new`` to ``final``, replacing whatever was there (the old tree is removed afterwards)."""
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old.{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(new, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# ----------------------------------------------------------------------------------------------------------------
# Real images from a directory.


def _index_dir(images_dir: Path) -> dict[str, Path]:
    """``stem -> path`` for the image files directly in ``images_dir``; the first extension in lookup order wins."""
    found: dict[str, tuple[int, Path]] = {}
    with os.scandir(images_dir) as entries:
        for entry in entries:
            stem, dot, ext = entry.name.rpartition(".")
            if not dot or ext.lower() not in IMAGE_EXTENSIONS or not entry.is_file():
                continue
            rank = IMAGE_EXTENSIONS.index(ext.lower())
            if (
                stem not in found
                or rank < found[stem][0]
                or (rank == found[stem][0] and entry.name < found[stem][1].name)
            ):
                found[stem] = (rank, images_dir / entry.name)
    return {stem: path for stem, (_, path) in found.items()}


def image_is_readable(path: Path) -> bool:
    """``PIL.Image.verify()`` succeeds on ``path``."""
    try:
        with Image.open(path) as image:
            image.verify()
    except Exception as e:  # noqa: BLE001 - PIL raises many types on bad files; a bad image is never fatal
        log.debug("unreadable image %s: %s", path, e)
        return False
    return True


def _candidate(stem: str, ref: str | None, index: dict[str, Path], images_dir: Path) -> Path | None:
    """The file named after the item in ``images_dir``, else the reader's local ``image_ref`` (URLs are ignored)."""
    path = index.get(stem)
    if path is None and ref and "://" not in ref:
        candidate = Path(ref) if Path(ref).is_absolute() else images_dir / ref
        path = candidate if candidate.is_file() else None
    return path


def find_images(
    items: pl.DataFrame, images_dir: Path, stems: list[str | None] | None = None
) -> tuple[list[str | None], dict[str, int]]:
    """Look up and verify each item's image in ``images_dir``; returns paths (None if not usable) and counts.

    ``stems``: the file name (without extension) to look up per item instead of the item id; None for an item
    without one (counted ``missing``). MovieLens posters are named by MovieID, not by the title the item id is.

    A candidate that resolves (symlinks followed) outside ``images_dir`` is counted as ``rejected_outside_root``
    and never opened: data files must not decide which other local files are read. Paths are absolute: under
    ``images_dir`` resolved (a relative ``image_ref`` too), so they do not depend on the working directory.
    """
    if not images_dir.is_dir():
        raise ConfigError(
            f"data.images_dir = {str(images_dir)!r} is not a directory. Fix: point it at a folder of images named "
            "<item_id>.<jpg|jpeg|png|webp>, or set data.images_dir: null for synthetic title cards"
        )
    images_dir = root = images_dir.resolve()
    index = _index_dir(images_dir)
    refs = items["image_ref"].to_list() if "image_ref" in items.columns else [None] * items.height
    paths: list[str | None] = []
    counts = {"present": 0, "missing": 0, "corrupt": 0, "rejected_outside_root": 0}
    examples: dict[str, list[str]] = {k: [] for k in counts}
    ids = items["item_id"].to_list()
    renamed = 0
    if stems is None:  # named after the item id: ids sharing a safe name get distinct ones
        stems, renamed = file_stems(ids)
    if renamed:
        log.warning(
            "%d item id(s) share a file name with another id once made safe (e.g. a/b and a_b) or are too long: "
            "looked up as <name>~<hash>.<ext> (python -m stages.download table writes them so)", renamed
        )  # fmt: skip
    for item_id, stem, ref in tqdm(
        zip(ids, stems, refs, strict=True), total=items.height, desc="images", mininterval=2.0
    ):
        path = _candidate(stem, ref, index, images_dir) if stem is not None else None
        if path is None:
            outcome = "missing"
        elif not inside_root(path, root):
            outcome = "rejected_outside_root"
        elif not image_is_readable(path):
            outcome = "corrupt"
        else:
            outcome = "present"
        counts[outcome] += 1
        examples[outcome].append(item_id if path is None else str(path))
        paths.append(str(path) if outcome == "present" else None)
    if counts["missing"]:
        log.warning("%d items have no image in %s (e.g. %s)", counts["missing"], images_dir, examples["missing"][:3])
    if counts["corrupt"]:
        log.warning(
            "%d images could not be read (e.g. %s); masked as missing", counts["corrupt"], examples["corrupt"][:3]
        )
    if counts["rejected_outside_root"]:
        log.warning(
            "%d image paths resolve outside data.images_dir %s (e.g. %s); not read, masked as missing",
            counts["rejected_outside_root"], root, examples["rejected_outside_root"][:3],
        )  # fmt: skip
    return paths, counts | {"renamed_file_names": renamed}


def attach_images(
    items: pl.DataFrame,
    images_dir: str | None,
    out_dir: Path,
    stems: list[str | None] | None = None,
    source: str = "images_dir",
) -> tuple[pl.DataFrame, dict]:
    """Add ``image_path`` (String, nullable) to ``items`` (needs item_idx, item_id, text); returns it and the stats.

    ``images/`` is written to ``out_dir``; card paths are relative to it, real images' paths absolute.
    ``stems`` and ``source`` as in :func:`find_images` and the stats (``pipeline.data.posters`` sets both).

    Stats: ``{"source": "synthetic_title_cards" | source, "present", "missing", "corrupt",
    "rejected_outside_root"}``.
    """
    if images_dir is None:
        paths: list[str | None] = list(write_title_cards(items, out_dir))
        stats = {"source": "synthetic_title_cards", "present": len(paths), "missing": 0, "corrupt": 0}
        stats |= {"rejected_outside_root": 0, "renamed_file_names": 0}  # cards are named by item_idx
    else:
        paths, counts = find_images(items, Path(images_dir), stems)
        stats = {"source": source, **counts}
        write_image_index(items, paths, out_dir / IMAGES, Path(images_dir))
    return items.with_columns(pl.Series("image_path", paths, dtype=pl.String)), stats


def write_image_index(items: pl.DataFrame, paths: list[str | None], images_out: Path, root: Path) -> None:
    """With real images, ``images/`` holds no pictures but an index of the files used (path, size, mtime).

    The folder is the DVC output that ``embed`` depends on, so any change in which files are used, or in their size
    or modification time as seen by ``prepare``, reaches ``embed``. (DVC cannot watch ``data.images_dir`` itself:
    after changing images in place, run ``dvc repro --force prepare``.) Cards of an earlier run are removed.
    ``root`` (``data.images_dir``, resolved) is recorded: embed and the gallery check every file against it when
    they open it (:func:`image_root`).
    """
    rows = []
    for item_id, path in zip(items["item_id"].to_list(), paths, strict=True):
        if path is not None:
            info = Path(path).stat()
            rows.append({"item_id": item_id, "path": path, "bytes": info.st_size, "mtime_ns": info.st_mtime_ns})
    tmp = images_out.with_name(images_out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    index = {"source": "images_dir", "root": str(root.resolve()), "images": rows}
    (tmp / "index.json").write_text(json.dumps(index, indent=1) + "\n")
    shutil.rmtree(images_out, ignore_errors=True)
    tmp.rename(images_out)


def image_root(prepared_dir: Path) -> Path | None:
    """The folder every ``image_path`` of ``prepared_dir/items.parquet`` must resolve into when it is opened.

    ``data.images_dir`` as recorded by prepare in ``images/index.json``; ``images/`` itself for title cards; None
    for an items table not written by prepare (no ``images/`` folder), whose paths are then not checked.
    """
    images = Path(prepared_dir) / IMAGES
    index = images / "index.json"
    if not index.is_file():
        return images if images.is_dir() else None
    try:
        root = json.loads(index.read_text(encoding="utf-8")).get("root")
    except (ValueError, AttributeError) as e:
        raise ValueError(f"{index}: not a valid image index ({e}). Run `dvc repro prepare --force`.") from None
    if not isinstance(root, str):
        raise ValueError(f"{index} names no image root (an older prepare wrote it). Run `dvc repro prepare --force`.")
    return Path(root)


def checked_image(path: str | Path | None, root: Path | None) -> tuple[Path | None, str]:
    """``(path, "ok")`` when ``path`` may be opened now, else ``(None, reason)``: ``missing`` or
    ``rejected_outside_root`` (it resolves, symlinks followed, outside ``root``; None = no root to check)."""
    if not path:
        return None, "missing"
    if root is not None and not inside_root(Path(path), root):
        log.warning("%s resolves outside the image folder %s: not read", path, root)
        return None, "rejected_outside_root"
    return Path(path), "ok"


def resolve_image_path(image_path: str | Path | None, prepared_dir: Path, root: Path | None) -> Path | None:
    """The file that ``image_path`` of ``prepared_dir/items.parquet`` names, whatever the working directory; None
    for no path. ``root``: :func:`image_root` of ``prepared_dir`` (read once by the caller).

    - absolute (real images): as it is;
    - relative: under ``prepared_dir`` (title cards, ``images/<item_idx>.png``);
    - relative and no file there: a path of an older prepare, relative to the working directory it ran in
      (``data/prepared/images/1.png``, ``<data.images_dir as written>/a.jpg``): the part after a folder named
      like ``root`` (``images``), under ``root``: the first such file that lies inside ``root``. Else the path
      under ``prepared_dir`` (absent: counted missing by the caller).

    Paths are only joined here, never trusted: open the result only through :func:`checked_image`, which rejects
    one that resolves (``..``, symlinks) outside ``root``.
    """
    if not image_path:
        return None
    path = Path(image_path)
    if path.is_absolute():
        return path
    joined = Path(prepared_dir).absolute() / path
    if root is None or joined.is_file():
        return joined
    base = Path(root).absolute()
    for k, part in enumerate(path.parts[:-1]):
        if part == base.name:
            candidate = base.joinpath(*path.parts[k + 1 :])
            if candidate.is_file() and inside_root(candidate, base):
                return candidate
    return joined


def resolve_image_paths(paths: list[str | None], prepared_dir: Path, root: Path | None) -> list[str | None]:
    """:func:`resolve_image_path` of each of ``paths``, as strings (None where there is no path)."""
    resolved = (resolve_image_path(p, prepared_dir, root) for p in paths)
    return [None if p is None else str(p) for p in resolved]
