"""``reports/gallery.html``: what each trained model recommends, by eye, for a fixed seeded sample of test users.

One row per user: the last ``HISTORY_SHOWN`` items of their test input (thumbnail + title, oldest first) and the
held-out test item, then one column per model with its test top-``TOP_SHOWN`` (the same ranking ``evaluate``
scores: history masked), the held-out item outlined where it appears. Self-contained: every thumbnail is a
``data:`` URI (an item without a readable image gets an inline SVG placeholder), no script, no network.
"""

from __future__ import annotations

import base64
import html
import io
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
from PIL import Image, UnidentifiedImageError
from torch import nn

from pipeline.data.dataset import eval_inputs
from pipeline.data.images import checked_image, image_root, resolve_image_path
from pipeline.data.splits import UserSplit, load_split
from pipeline.evaluation import retrieval
from pipeline.io import write_text_atomic
from pipeline.serving.inference import item_table, user_queries
from pipeline.serving.recommend import item_rows, user_sequences

log = logging.getLogger(__name__)

HISTORY_SHOWN = 10
TOP_SHOWN = 10
THUMB_PX = 72  # longest side of a thumbnail
PLACEHOLDER = (
    "data:image/svg+xml;base64,"
    + base64.b64encode(
        b'<svg xmlns="http://www.w3.org/2000/svg" width="72" height="72"><rect width="72" height="72" fill="#ddd"/>'
        b'<text x="36" y="40" font-size="10" text-anchor="middle" fill="#666">no image</text></svg>'
    ).decode()
)


@dataclass
class GalleryRun:
    name: str  # column header ("odmt", "baseline")
    items: np.ndarray  # (R, TOP_SHOWN) test top-K of the sampled users, -1 pads
    scores: np.ndarray  # (R, TOP_SHOWN)


def sample_users(num_users: int, count: int, seed: int) -> np.ndarray:
    """A fixed, seeded sample of ``min(count, num_users)`` user positions (split order), ascending."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(num_users, size=min(count, num_users), replace=False))


def test_top_k(
    name: str, model: nn.Module, split: UserSplit, rows: np.ndarray, max_seq_len: int, device: object = "cpu"
) -> GalleryRun:
    """``model``'s test ranking of users ``rows``: input = history before the test item, that history masked."""
    inputs = eval_inputs(split, "test", max_seq_len)[rows]  # (R, L)
    queries = user_queries(model, inputs, 256, device)  # (R, D)
    histories = [split.history("test")[r] for r in rows]
    items, scores = retrieval.top_k(queries, item_table(model), histories, TOP_SHOWN)
    return GalleryRun(name, items, scores)


def thumbnail_uri(path: Path | None) -> str:
    """A small JPEG ``data:`` URI of the image at ``path``; the placeholder when absent or unreadable."""
    if path is None:
        return PLACEHOLDER
    try:
        with Image.open(path) as image:
            image.thumbnail((THUMB_PX, THUMB_PX))
            buffer = io.BytesIO()
            image.convert("RGB").save(buffer, format="JPEG", quality=80)
    except (OSError, UnidentifiedImageError, ValueError) as e:
        log.warning("gallery: %s is not a readable image (%s); placeholder shown", path, e)
        return PLACEHOLDER
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


def write_gallery(
    path: Path,
    split: UserSplit,
    user_ids: np.ndarray,
    rows: np.ndarray,
    runs: list[GalleryRun],
    items: pl.DataFrame,
    prepared_dir: Path,
    seed: int,
) -> None:
    """Render and write the gallery atomically (see the module docstring)."""
    titles = ["", *items["title"].to_list()]
    image_paths = ["", *items["image_path"].to_list()]
    thumbs: dict[int, str] = {}
    root = image_root(prepared_dir)  # each image is checked against it when opened

    def figure(item: int, extra: str = "", caption: str = "", tooltip: str = "") -> str:
        if item not in thumbs:
            path, _ = checked_image(resolve_image_path(image_paths[item], prepared_dir, root), root)  # None: outside
            thumbs[item] = thumbnail_uri(path if path is not None and path.is_file() else None)
        title = html.escape(titles[item])
        hover = html.escape(tooltip or titles[item])
        return (
            f'<figure class="item{extra}" data-item="{item}" title="{hover}"><img src="{thumbs[item]}" alt="{title}">'
            f"<figcaption>{caption}{title}</figcaption></figure>"
        )

    body = []
    for pos, row in enumerate(rows):
        target = int(split.test_target[row])
        shown = split.history("test")[row][-HISTORY_SHOWN:]
        history = "".join(figure(int(i)) for i in shown)
        cells = [
            f'<td class="history"><div class="user">user {html.escape(str(user_ids[row]))}</div>'
            f'<div class="strip">{history}</div><div class="target-label">held-out test item:</div>'
            f"{figure(target, ' target')}</td>"
        ]
        for run in runs:
            recs = []
            for rank, (item, score) in enumerate(zip(run.items[pos], run.scores[pos], strict=True), 1):
                if item > 0:
                    hit = " hit" if item == target else ""
                    recs.append(figure(int(item), hit, f"<b>{rank}.</b> ", f"{titles[item]} (score {score:.4f})"))
            model = html.escape(run.name)
            cells.append(f'<td class="recs" data-model="{model}"><div class="strip">{"".join(recs)}</div></td>')
        body.append(f'<tr class="user-row" data-user="{html.escape(str(user_ids[row]))}">{"".join(cells)}</tr>')
    header = "".join(f'<th class="model">{html.escape(run.name)} top-{TOP_SHOWN}</th>' for run in runs)
    hits = {run.name: int((run.items == split.test_target[rows][:, None]).any(axis=1).sum()) for run in runs}
    summary = ", ".join(f"{name}: {count} of {len(rows)}" for name, count in hits.items())
    page = _PAGE.format(
        count=len(rows),
        seed=seed,
        history=HISTORY_SHOWN,
        top=TOP_SHOWN,
        summary=html.escape(summary),
        header=header,
        body="\n".join(body),
    )
    write_text_atomic(path, page)
    log.info("%s: %d users x %d models, %d thumbnails", path, len(rows), len(runs), len(thumbs))


def export_gallery(
    path: Path,
    models: list[tuple[str, nn.Module, int]],
    prepared_dir: Path,
    count: int,
    seed: int,
    device: object = "cpu",
) -> None:
    """The gallery of ``models`` (name, model, its max_seq_len) for ``count`` seeded test users of ``prepared_dir``."""
    split = load_split(prepared_dir)
    rows = sample_users(len(split), count, seed)
    runs = [test_top_k(name, model, split, rows, max_seq_len, device) for name, model, max_seq_len in models]
    user_ids = user_id_array(user_sequences(prepared_dir), split)
    write_gallery(path, split, user_ids, rows, runs, item_rows(prepared_dir), prepared_dir, seed)


def user_id_array(sequences: pl.DataFrame, split: UserSplit) -> np.ndarray:
    """(U,) raw user ids in split order."""
    by_idx: Mapping[int, str] = dict(zip(sequences["user_idx"].to_list(), sequences["user_id"].to_list(), strict=True))
    return np.array([by_idx[int(u)] for u in split.user_idx], dtype=object)


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Recommendation gallery</title>
<style>
body {{ font: 13px system-ui, sans-serif; margin: 16px; color: #222; }}
table {{ border-collapse: collapse; }}
td, th {{ border: 1px solid #ccc; padding: 6px; vertical-align: top; text-align: left; }}
th.model {{ background: #f3f3f3; }}
.strip {{ display: flex; flex-wrap: wrap; gap: 4px; max-width: 820px; }}
figure {{ margin: 0; width: 76px; }}
figure img {{ width: 72px; height: 72px; object-fit: cover; display: block; border: 2px solid transparent; }}
figcaption {{ font-size: 10px; line-height: 1.2; overflow-wrap: anywhere; }}
figure.target img, figure.hit img {{ border-color: #d62728; }}
figure.hit figcaption {{ color: #d62728; font-weight: bold; }}
.user {{ font-weight: bold; margin-bottom: 4px; }}
.target-label {{ margin-top: 6px; font-size: 11px; color: #555; }}
</style></head>
<body>
<h1>What each model recommends</h1>
<p>{count} test users (seeded sample, recommend.gallery_seed = {seed}). Left: the last {history} items of each
user's history (oldest first) and the held-out test item. Right: each model's top-{top} for the next item
(history masked, as <code>evaluate</code> ranks), the held-out item outlined in red where it appears.
Held-out item in the top-{top}: {summary}.</p>
<table id="gallery">
<thead><tr><th>history (last {history}) and held-out item</th>{header}</tr></thead>
<tbody>
{body}
</tbody></table>
</body></html>
"""
