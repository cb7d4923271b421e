"""Paths built from data: item ids made safe as file names, and the check that a path stays inside its root.

Data files decide which local files are read (an H&M ``article_id`` becomes ``images/<first 3>/<id>.jpg``, an
Amazon ``hi_res`` may be a local path, a file in ``data.images_dir`` may be a symlink). Every reader builds such
paths with :func:`safe_file_stem`, and every image path is resolved (symlinks included) and accepted only when
:func:`inside_root` holds; anything else is counted as ``rejected_outside_root`` and masked, never read.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from pathlib import Path

import polars as pl

_UNSAFE = re.compile(r'[/\\:*?"<>|\x00-\x1f\x7f]')
_UNSAFE_POLARS = r'[/\\:*?"<>|\x00-\x1f\x7f]'


def safe_file_stem(item_id: str) -> str:
    """The file name (without extension) for ``item_id``: never a path separator, ``..`` or a hidden file.

    Rule: each character of ``/ \\ : * ? " < > |`` and each control character becomes ``_``; a leading ``.``
    becomes ``_`` (no hidden files, no ``..``); an empty id becomes ``_``. Ids made of letters, digits, spaces,
    ``-_.,()'&!`` and non-ASCII letters are kept as they are ("Toy Story (1995)" -> "Toy Story (1995)").
    """
    stem = _UNSAFE.sub("_", item_id)
    if stem.startswith("."):
        stem = "_" + stem[1:]
    return stem or "_"


def safe_file_stem_expr(expr: pl.Expr) -> pl.Expr:
    """:func:`safe_file_stem` as a polars expression (same rule, vectorised)."""
    replaced = expr.str.replace_all(_UNSAFE_POLARS, "_")
    no_dot = pl.when(replaced.str.starts_with(".")).then(pl.lit("_") + replaced.str.slice(1)).otherwise(replaced)
    return pl.when(no_dot.str.len_bytes() == 0).then(pl.lit("_")).otherwise(no_dot)


def inside_root(path: Path, root: Path) -> bool:
    """``path``, resolved with every symlink followed, lies inside ``root`` (also resolved)."""
    try:
        return path.resolve(strict=False).is_relative_to(root.resolve(strict=False))
    except (OSError, RuntimeError):  # a symlink loop, an unreadable component
        return False


MAX_STEM_BYTES = 200  # file systems allow 255 bytes per name; room is left for ".jpeg", ".part" and a prefix


def file_stems(item_ids: list[str]) -> tuple[list[str], int]:
    """One distinct file stem per distinct id of ``item_ids`` (:func:`safe_file_stem`), and how many were renamed.

    Two ids that make the same safe stem (``a/b`` and ``a_b``) would share one image: the id that is its stem
    unchanged keeps it and the others get ``<stem>~<sha256(id)[:12]>``; a stem longer than ``MAX_STEM_BYTES`` is cut
    and gets the same suffix (no "File name too long"). Ids that need neither keep the plain stem, so existing
    image folders stay valid.
    """
    plain = [safe_file_stem(i) for i in item_ids]
    owners: dict[str, set[str]] = {}
    for item_id, stem in zip(item_ids, plain, strict=True):
        owners.setdefault(stem, set()).add(item_id)
    shared = Counter({stem: len(ids) for stem, ids in owners.items() if len(ids) > 1})
    stems, renamed = [], set()
    for item_id, stem in zip(item_ids, plain, strict=True):
        if len(stem.encode("utf-8")) > MAX_STEM_BYTES or (stem in shared and stem != item_id):
            cut = stem.encode("utf-8")[: MAX_STEM_BYTES - 13].decode("utf-8", errors="ignore")
            stem = f"{cut}~{hashlib.sha256(item_id.encode('utf-8')).hexdigest()[:12]}"
            renamed.add(item_id)
        stems.append(stem)
    return stems, len(renamed)
