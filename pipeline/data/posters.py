"""MovieLens-1M posters as item images (``data.posters_dir``), for ``data.source: ml1m_recbole`` or ``movielens``.

The folder has the layout written by ``python -m stages.download ml1m_posters`` (a copy made by hand works too)::

    <posters_dir>/images/<MovieID>.jpg   one poster per MovieLens MovieID (.jpeg/.png/.webp are found as well)
    <posters_dir>/movies.dat             GroupLens ``MovieID::Title (Year)::Genres`` (latin-1; UTF-8 accepted)

``movies.dat`` is the only link between a MovieID and the embedded ML-1M (``ml1m_recbole``), whose item id is the
title with its year ("Toy Story (1995)"). Each item's title is looked up in order:

- ``exact``: the same string;
- ``accents_folded``: equal once accents are removed from both ("Misérables, Les (1995)" = "Miserables, ...");
- ``non_ascii_ignored``: equal once every non-ASCII character is dropped from both, for copies of ``movies.dat``
  whose accents were replaced by U+FFFD on a re-encoding ("Alien³ (1992)" = "Alien\\ufffd (1992)").

A looser step only sees MovieIDs no stricter step took, and a title that still fits several MovieIDs is not
guessed. Titles left over are counted by reason (``not_in_movies_dat``, ``ambiguous``). ``movielens`` items are
MovieIDs already, so they need no title match. The image of a matched item is then looked up, verified and
counted by :func:`pipeline.data.images.find_images` (``present`` / ``missing`` / ``corrupt``): every item without a
usable poster is masked by ``embed``, never given a made-up image.
"""

from __future__ import annotations

import logging
import unicodedata
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from pipeline.config import ConfigError
from pipeline.data.readers import check_unique_ids, parse_int, read_text, split_lines

log = logging.getLogger(__name__)

POSTER_SOURCES = ("ml1m_recbole", "movielens")  # data sources whose item ids map to MovieLens-1M MovieIDs
MATCH_STEPS = ("exact", "accents_folded", "non_ascii_ignored")
UNMATCHED_REASONS = ("not_in_movies_dat", "ambiguous")
MOVIES_DAT = "movies.dat"
IMAGES = "images"
FIX = (
    "data.posters_dir must hold images/<MovieID>.jpg and the GroupLens movies.dat (MovieID::Title::Genres); "
    "run `python -m stages.download ml1m_posters` (docs/datasets.md) or point data.posters_dir at such a folder"
)


@dataclass(frozen=True)
class PosterLookup:
    """Where each item's poster is looked up: ``stems[i]`` in ``images_dir`` (None: no MovieID for the item)."""

    images_dir: Path
    stems: list[str | None]
    matched: dict[str, int]  # MATCH_STEPS -> items
    unmatched: dict[str, int]  # UNMATCHED_REASONS -> items
    unmatched_examples: list[str]


def check_posters_dir(posters_dir: Path) -> None:
    """The folder exists with ``images/`` and ``movies.dat``; otherwise a ``ConfigError`` naming the key and fix."""
    for path, kind in ((posters_dir, "a directory"), (posters_dir / IMAGES, "a directory"),
                       (posters_dir / MOVIES_DAT, "a file")):  # fmt: skip
        if not (path.is_dir() if kind == "a directory" else path.is_file()):
            raise ConfigError(f"`data.posters_dir` = {str(posters_dir)!r}: {path} is not {kind}. Fix: {FIX}")


def read_movies_dat(path: Path) -> dict[str, list[str]]:
    """``title -> [MovieID, ...]`` from GroupLens ``movies.dat``; a malformed line is an error naming it."""
    text = read_text(path, "latin-1", FIX)
    frame, _ = split_lines(
        path, text, "::", ["movie_id", "title", "genres"], skip_header=False, layout="MovieID::Title::Genres", fix=FIX
    )
    frame = frame.with_columns(parse_int(path, frame, "movie_id", FIX, allow_integral_float=False).cast(pl.String))
    check_unique_ids(path, frame, "movie_id", FIX)
    titles: dict[str, list[str]] = defaultdict(list)
    for movie_id, title in frame.select("movie_id", "title").iter_rows():
        titles[title.strip()].append(movie_id)
    return dict(titles)


def fold_accents(text: str) -> str:
    """``text`` without combining marks: "Misérables" -> "Miserables"."""
    return "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))


def ascii_only(text: str) -> str:
    """``text`` with every non-ASCII character dropped: "Mis\\ufffdrables" and "Misérables" -> "Misrables"."""
    return "".join(c for c in text if c.isascii())


def match_titles(item_ids: list[str], titles: dict[str, list[str]]) -> tuple[list[str | None], Counter[str]]:
    """MovieID per item id (None if unmatched) and the count per outcome (MATCH_STEPS + UNMATCHED_REASONS)."""
    movie_ids: list[str | None] = [None] * len(item_ids)
    outcome: list[str] = ["not_in_movies_dat"] * len(item_ids)
    taken: set[str] = set()
    for step, key in zip(MATCH_STEPS, (str, fold_accents, ascii_only), strict=True):
        index: dict[str, set[str]] = defaultdict(set)
        for title, ids in titles.items():
            index[key(title)].update(i for i in ids if i not in taken)
        found: dict[int, str] = {}
        for i, item_id in enumerate(item_ids):
            if movie_ids[i] is not None:
                continue
            candidates = index.get(key(item_id), set())
            if len(candidates) == 1:
                found[i] = next(iter(candidates))
            elif len(candidates) > 1:
                outcome[i] = "ambiguous"
        claims = Counter(found.values())
        for i, movie_id in found.items():
            if claims[movie_id] == 1:  # two items on one MovieID: neither is guessed at this step
                movie_ids[i], outcome[i] = movie_id, step
                taken.add(movie_id)
            else:
                outcome[i] = "ambiguous"
    return movie_ids, Counter(outcome)


def poster_lookup(source: str, posters_dir: Path, item_ids: list[str]) -> PosterLookup:
    """The file stem (a MovieID) to look up for each item of ``source`` in ``<posters_dir>/images``."""
    check_posters_dir(posters_dir)
    if source == "movielens":  # GroupLens item ids are MovieIDs
        stems: list[str | None] = list(item_ids)
        counts: Counter[str] = Counter({"exact": len(item_ids)})
    else:
        stems, counts = match_titles(item_ids, read_movies_dat(posters_dir / MOVIES_DAT))
    unmatched = [item_id for item_id, stem in zip(item_ids, stems, strict=True) if stem is None]
    if unmatched:
        log.warning("%d item titles have no MovieID in %s (e.g. %s); they get no poster", len(unmatched),
                    posters_dir / MOVIES_DAT, unmatched[:3])  # fmt: skip
    return PosterLookup(
        images_dir=posters_dir / IMAGES,
        stems=stems,
        matched={step: counts[step] for step in MATCH_STEPS},
        unmatched={reason: counts[reason] for reason in UNMATCHED_REASONS},
        unmatched_examples=unmatched[:10],
    )


def poster_stats(lookup: PosterLookup, posters_dir: Path, image_counts: dict[str, int], items: int) -> dict[str, Any]:
    """``stats.json["images"]["posters"]``: title matches, items without a poster by reason, coverage."""
    unmatched = sum(lookup.unmatched.values())
    return {
        "posters_dir": str(posters_dir),
        "title_matched": lookup.matched,
        "title_unmatched": lookup.unmatched,
        "title_unmatched_examples": lookup.unmatched_examples,
        "items_with_poster": image_counts["present"],
        "items_without_poster": {
            "no_title_match": unmatched,
            "no_image_file": image_counts["missing"] - unmatched,
            "corrupt": image_counts["corrupt"],
            "rejected_outside_root": image_counts["rejected_outside_root"],
        },
        "coverage": image_counts["present"] / items if items else 0.0,
    }
