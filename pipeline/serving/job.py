"""The `recommend` stage's two bodies: :func:`export_to_dir` (the DVC stage: the item index, every user's top-K and
the gallery) and :func:`query` (the on-demand CLI: one history's top-K from the exported index, printed by
:func:`render`)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from pipeline.config import RecommendConfig
from pipeline.io import check_disjoint
from pipeline.reporting.gallery import export_gallery
from pipeline.serving.inference import load_trained, resolve_device
from pipeline.serving.recommend import Recommender, export, format_table, parse_history, user_history, user_sequences

log = logging.getLogger(__name__)


def check_k(k: int) -> int:
    if k < 1:
        raise ValueError(f"--k = {k} must be >= 1")
    return k


def export_to_dir(
    cfg: RecommendConfig,
    prepared: Path,
    features: Path,
    model: Path,
    baseline: Path,
    out: Path,
    gallery: Path,
    device: str = "auto",
    k: int | None = None,
) -> None:
    """``out/index/`` (the artifact) and ``out/topk.parquet`` (every user's top ``k``, default ``recommend.k``), then
    ``gallery`` (model and baseline top-10s side by side for ``recommend.gallery_users`` seeded test users)."""
    k = check_k(cfg.k if k is None else k)
    inputs, files = {"--prepared": prepared, "--features": features}, {"--model": model, "--baseline": baseline}
    check_disjoint({"--out": out, "--gallery": gallery}, inputs, files, file_outputs=["--gallery"])
    torch_device = resolve_device(device, "--device")
    base, base_checkpoint, _ = load_trained(baseline, features, prepared, torch_device)  # fail before writing
    rec, _ = export(model, features, prepared, out, k, cfg.index_config, cfg.batch_size, torch_device)
    runs = [
        (rec.checkpoint["model_name"], rec.model, rec.max_seq_len),
        ("baseline", base, base_checkpoint["max_seq_len"]),
    ]
    export_gallery(gallery, runs, prepared, cfg.gallery_users, cfg.gallery_seed, torch_device)


def query(
    prepared: Path,
    features: Path,
    model: Path,
    index: Path,
    k: int,
    history: str | None = None,
    user: str | None = None,
    sep: str = ",",
    skip_unknown: bool = False,
    device: str = "auto",
) -> list[dict[str, Any]]:
    """The top ``k`` after ``history`` (raw item ids, oldest first, separated by ``sep``) or after all items of the
    user ``user`` of ``sequences.parquet``, searched in the exported ``index``: ``[{item_id, title, score}]``."""
    if (history is None) == (user is None):
        raise ValueError("give --history or --user (one of them)")
    k = check_k(k)
    if history is not None and not sep:  # str.split("") would answer "empty separator", naming no option
        raise ValueError(
            "--sep is empty; it separates the item ids of --history. Fix: pass the character between them, "
            "e.g. --sep ',' (the default)"
        )
    recommender = Recommender.load(model, features, prepared, index, resolve_device(device, "--device"))
    if user is not None:
        items = user_history(user_sequences(prepared), user)
    else:
        items = recommender.map_ids(parse_history(history or "", recommender.idx_of, sep), skip_unknown)
    left = recommender.num_items - len(set(items.tolist()))  # the history is never recommended back
    if left == 0:  # refused before the search, which could only come back empty
        raise ValueError(
            f"the history holds all {recommender.num_items} items of the index, and a history is never recommended "
            "back: nothing is left to recommend. Fix: pass a shorter history (the most recent items)"
        )
    if left < k:
        log.warning("only %d item(s) are not in the history: %d result(s) instead of --k %d", left, left, k)
    top_items, top_scores = recommender.recommend([items], k)
    return recommender.rows(top_items[0], top_scores[0])


def render(rows: list[dict[str, Any]], as_json: bool = False) -> str:
    """:func:`query`'s rows as the CLI prints them: a JSON list (``--json``) or an aligned text table."""
    return json.dumps(rows, ensure_ascii=False) if as_json else format_table(rows)
