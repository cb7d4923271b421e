"""Recommendations out of a trained model: the exported item index, every user's top-K, and on-demand queries.

``recommendations/index/`` (declared as the DVC artifact ``recommendation-index`` in dvc.yaml):

- ``items.faiss``: the FAISS inner-product index of the model's item vectors, of kind ``recommend.index`` (flat |
  ivf | hnsw, built by :func:`pipeline.evaluation.faiss_index.build_index`, the same code ``evaluate`` ranks with: FAISS
  id ``j`` is item ``j + 1``; the padding row is never indexed);
- ``items.parquet``: ``row`` (the FAISS id), ``item_idx``, ``item_id`` (raw id), ``title``, ``text``, ``image_path``;
- ``manifest.json``: model name, checkpoint checksum, params hash, data fingerprint, dim, item count, index type.

A query vector is the model's own user encoder (``user_vectors``) over the history's last ``max_seq_len`` items, so
its inner product with the index is the model's ranking score, the same one ``evaluate`` ranks by. The history is
always excluded (exact: :func:`pipeline.evaluation.retrieval.top_k`). Items never seen in training stay in the index: a
model that scores them from content (MP4SR, ODMT) can recommend them.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import polars as pl
import torch
from torch import nn

from pipeline.config import IndexConfig
from pipeline.data.dataset import left_pad
from pipeline.evaluation import faiss_index, retrieval
from pipeline.io import read_json, read_parquet, staged_outputs, write_json_atomic
from pipeline.serving.inference import item_table, load_trained, user_queries

log = logging.getLogger(__name__)

INDEX_DIR, TOPK_FILE = "index", "topk.parquet"
FAISS_FILE, ITEMS_FILE, MANIFEST_FILE = "items.faiss", "items.parquet", "manifest.json"
INDEX_FORMAT = 1
RERUN = "run `dvc repro recommend`"


class UnknownItemsError(ValueError):
    """Raw item ids that are not in the index (the message lists them)."""

    def __init__(self, unknown: Sequence[str], num_items: int) -> None:
        self.unknown = list(unknown)
        shown = ", ".join(repr(i) for i in self.unknown[:20]) + (" ..." if len(self.unknown) > 20 else "")
        super().__init__(
            f"{len(self.unknown)} item id(s) not in the index of {num_items} items: {shown}; check the ids "
            "(raw ids as in items.parquet's item_id) or pass --skip-unknown to drop them with a warning"
        )


def item_rows(prepared_dir: Path) -> pl.DataFrame:
    """``items.parquet`` as the index's row table: row, item_idx, item_id, title, text, image_path (row = idx - 1).

    ``title`` is the source's title column where it has one, else the raw item id.
    """
    path = Path(prepared_dir) / "items.parquet"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found. Run `dvc repro prepare`.")
    items = read_parquet(path, "Run `dvc repro prepare`.")
    if not np.array_equal(items["item_idx"].to_numpy(), np.arange(1, items.height + 1)):
        raise ValueError(f"{path}: item_idx must be 1..N in order; run `dvc repro prepare`")
    title = pl.col("title").cast(pl.String) if "title" in items.columns else pl.lit(None, dtype=pl.String)
    return items.select(
        (pl.col("item_idx") - 1).cast(pl.Int32).alias("row"),
        pl.col("item_idx").cast(pl.Int32),
        pl.col("item_id").cast(pl.String),
        pl.coalesce(title, pl.col("item_id").cast(pl.String)).alias("title"),
        (pl.col("text").cast(pl.String) if "text" in items.columns else pl.lit("")).fill_null("").alias("text"),
        (pl.col("image_path") if "image_path" in items.columns else pl.lit(None)).cast(pl.String).alias("image_path"),
    )


def params_hash(checkpoint: dict[str, Any]) -> str:
    """sha256 of what shaped the model: its name, config, training config and ``max_seq_len`` (sorted JSON)."""
    keys = ("model_name", "model_config", "train_config", "max_seq_len")
    blob = json.dumps({k: checkpoint.get(k) for k in keys}, sort_keys=True, default=repr)
    return hashlib.sha256(blob.encode()).hexdigest()


def write_index(
    out_dir: Path,
    vectors: np.ndarray,
    items: pl.DataFrame,
    checkpoint: dict[str, Any],
    index_config: IndexConfig = faiss_index.FLAT,
) -> dict[str, Any]:
    """Write ``items.faiss``, ``items.parquet`` and ``manifest.json`` into ``out_dir``; returns the manifest."""
    if len(vectors) != items.height + 1:
        raise ValueError(f"model has {len(vectors) - 1} item vectors but items.parquet has {items.height} items")
    out_dir.mkdir(parents=True, exist_ok=True)
    built = faiss_index.build_index(vectors, index_config)  # on the CPU: the artifact is a CPU index
    index = built.cpu
    faiss.write_index(index, str(out_dir / FAISS_FILE))
    items.write_parquet(out_dir / ITEMS_FILE)
    manifest = {
        "format": INDEX_FORMAT,
        "model_name": checkpoint["model_name"],
        "checkpoint_sha256": checkpoint["checksum"],
        "params_hash": params_hash(checkpoint),
        "data_fingerprint": checkpoint.get("data_fingerprint"),
        "max_seq_len": int(checkpoint["max_seq_len"]),
        "dim": int(index.d),
        "num_items": int(index.ntotal),
        "index_kind": built.kind,
        "faiss_index": type(index).__name__,
        "faiss_factory": built.factory,
        "index_params": built.params,
        "metric": "inner_product",
        "rows": "FAISS id j = item_idx j + 1 = row j of items.parquet",
    }
    write_json_atomic(out_dir / MANIFEST_FILE, manifest)
    return manifest


@dataclass
class ItemIndex:
    index: faiss_index.SearchIndex  # the FAISS index read from items.faiss, with its kind (manifest index_kind)
    vectors: np.ndarray  # (N+1, D) float32 as stored in the index, row 0 = padding (zeros)
    items: pl.DataFrame  # the row table (item_rows)
    manifest: dict[str, Any]
    ids: np.ndarray = field(init=False)  # (N+1,) object: raw id per item_idx, "" at 0
    titles: np.ndarray = field(init=False)  # (N+1,) object

    def __post_init__(self) -> None:
        self.ids = np.array(["", *self.items["item_id"].to_list()], dtype=object)
        self.titles = np.array(["", *self.items["title"].to_list()], dtype=object)


def load_index(index_dir: Path) -> ItemIndex:
    """Read an index folder written by :func:`write_index`, checking that its three parts agree."""
    index_dir = Path(index_dir)
    for name in (FAISS_FILE, ITEMS_FILE, MANIFEST_FILE):
        if not (index_dir / name).is_file():
            raise FileNotFoundError(f"{index_dir / name} not found; {RERUN} (or python -m stages.recommend export)")
    manifest = read_json(index_dir / MANIFEST_FILE, RERUN)
    if not isinstance(manifest, dict):
        raise ValueError(f"{index_dir / MANIFEST_FILE}: not an index manifest (a JSON object); {RERUN}")
    if manifest.get("format") != INDEX_FORMAT:
        raise ValueError(f"{index_dir / MANIFEST_FILE}: index format {manifest.get('format')!r} is not {INDEX_FORMAT}")
    try:
        index = faiss.read_index(str(index_dir / FAISS_FILE))
    except RuntimeError as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ValueError(f"{index_dir / FAISS_FILE} is not a readable FAISS index ({reason}); {RERUN}") from None
    items = read_parquet(index_dir / ITEMS_FILE, RERUN)
    if not (index.ntotal == items.height == manifest["num_items"] and index.d == manifest["dim"]):
        raise ValueError(
            f"{index_dir}: items.faiss holds {index.ntotal} x {index.d} vectors, items.parquet {items.height} rows, "
            f"manifest.json {manifest['num_items']} x {manifest['dim']}; the parts disagree, {RERUN}"
        )
    vectors = np.zeros((index.ntotal + 1, index.d), dtype=np.float32)  # (N+1, D)
    vectors[1:] = index.reconstruct_n(0, index.ntotal)
    return ItemIndex(faiss_index.wrap_loaded(index, manifest.get("index_kind", "flat")), vectors, items, manifest)


class Recommender:
    """A trained model + its index, loaded once; ``recommend`` answers any number of histories."""

    def __init__(
        self,
        model: nn.Module,
        checkpoint: dict[str, Any],
        index: ItemIndex,
        device: torch.device | str = "cpu",
        batch_size: int = 1024,
    ) -> None:
        if index.manifest["checkpoint_sha256"] != checkpoint["checksum"]:
            raise ValueError(
                f"the index was built from another checkpoint ({index.manifest['model_name']}, sha256 "
                f"{index.manifest['checkpoint_sha256'][:12]}) than the model given "
                f"({checkpoint['model_name']}, sha256 {checkpoint['checksum'][:12]}); {RERUN}"
            )
        self.model, self.checkpoint, self.index = model, checkpoint, index
        self.device, self.batch_size = device, batch_size
        self.max_seq_len = int(checkpoint["max_seq_len"])
        self.idx_of = {item_id: i for i, item_id in enumerate(index.ids) if i > 0}

    @classmethod
    def load(
        cls, model_path: Path, features: Path, prepared: Path, index_dir: Path, device: torch.device | str = "cpu"
    ) -> Recommender:
        model, checkpoint, _ = load_trained(model_path, features, prepared, device)
        return cls(model, checkpoint, load_index(index_dir), device)

    @property
    def num_items(self) -> int:
        return len(self.index.ids) - 1

    def map_ids(self, raw_ids: Sequence[str], skip_unknown: bool = False) -> np.ndarray:
        """Raw ids -> (h,) int64 item indices; unknown ids raise :class:`UnknownItemsError` or, with
        ``skip_unknown``, are dropped with a warning."""
        unknown = [i for i in raw_ids if i not in self.idx_of]
        if unknown and not skip_unknown:
            raise UnknownItemsError(unknown, self.num_items)
        if unknown:
            log.warning("skipped %d unknown item id(s): %s", len(unknown), ", ".join(map(repr, unknown[:20])))
        known = np.array([self.idx_of[i] for i in raw_ids if i in self.idx_of], dtype=np.int64)
        if len(known) == 0:
            raise ValueError(f"the history holds no known item id (of {len(raw_ids)} given); nothing to recommend from")
        return known

    def recommend(self, histories: Sequence[np.ndarray], k: int) -> tuple[np.ndarray, np.ndarray]:
        """U histories (item indices, oldest first) -> (U, k) items and scores, best first, history excluded."""
        histories = [np.asarray(h, dtype=np.int64) for h in histories]
        empty = [u for u, h in enumerate(histories) if len(h) == 0]
        if empty:
            raise ValueError(f"history {empty[0]} has no known item; a recommendation needs at least one")
        inputs = left_pad(histories, self.max_seq_len)  # (U, L)
        order = np.argsort((inputs != 0).sum(axis=1), kind="stable")  # similar lengths share a batch: less padding
        queries = np.empty((len(inputs), self.index.vectors.shape[1]), dtype=np.float32)  # (U, D)
        queries[order] = user_queries(self.model, inputs[order], self.batch_size, self.device)
        return retrieval.top_k(queries, self.index.vectors, histories, k, index=self.index.index)

    def rows(self, items: np.ndarray, scores: np.ndarray) -> list[dict[str, Any]]:
        """One user's (k,) result as ``[{"item_id", "title", "score"}]`` (padding entries dropped)."""
        keep = items > 0
        return [
            {"item_id": str(self.index.ids[i]), "title": str(self.index.titles[i]), "score": float(s)}
            for i, s in zip(items[keep], scores[keep], strict=True)
        ]


def export(
    model_path: Path,
    features: Path,
    prepared: Path,
    out: Path,
    k: int,
    index_config: IndexConfig,
    batch_size: int,
    device: Any,
) -> tuple[Recommender, pl.DataFrame]:
    """The `recommend` stage's outputs, published together: ``out/index/`` and ``out/topk.parquet``.

    The top-K lists are searched in the index as written (read back from the staging folder), so they are exactly
    what a consumer of the artifact gets.
    """
    model, checkpoint, _ = load_trained(model_path, features, prepared, device)
    sequences = user_sequences(prepared)
    with staged_outputs(out, [INDEX_DIR, TOPK_FILE]) as stage:
        write_index(stage / INDEX_DIR, item_table(model), item_rows(prepared), checkpoint, index_config)
        recommender = Recommender(model, checkpoint, load_index(stage / INDEX_DIR), device, batch_size)
        topk = all_users_topk(recommender, sequences, k)
        topk.write_parquet(stage / TOPK_FILE)
    log.info("%s: index of %d items, top-%d for %d users", out, recommender.num_items, k, topk.height)
    return recommender, topk


def user_sequences(prepared_dir: Path) -> pl.DataFrame:
    """user_idx, user_id, items (every known interaction, oldest first) from ``sequences.parquet``."""
    path = Path(prepared_dir) / "sequences.parquet"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found. Run `dvc repro prepare`.")
    return read_parquet(path, "Run `dvc repro prepare`.", columns=["user_idx", "user_id", "items"])


def user_history(sequences: pl.DataFrame, user_id: str) -> np.ndarray:
    """The known items of ``user_id`` (oldest first); an unknown user is an error with example ids."""
    hit = sequences.filter(pl.col("user_id") == user_id)
    if hit.height == 0:
        examples = ", ".join(repr(u) for u in sequences["user_id"].head(3).to_list())
        raise ValueError(f"user {user_id!r} is not in sequences.parquet ({sequences.height} users, e.g. {examples})")
    return np.asarray(hit["items"][0].to_list(), dtype=np.int64)


def all_users_topk(recommender: Recommender, sequences: pl.DataFrame, k: int) -> pl.DataFrame:
    """Every user's top-K after their last known item (history excluded): ids, titles, scores, ranked."""
    histories = [np.asarray(s, dtype=np.int64) for s in sequences["items"].to_list()]
    items, scores = recommender.recommend(histories, k)  # (U, k)
    kept = [row[row > 0] for row in items]  # padding (-1) only in catalogs smaller than history + k
    kept_scores = [s[row > 0] for s, row in zip(scores, items, strict=True)]
    ids, titles = recommender.index.ids, recommender.index.titles
    return pl.DataFrame(
        {
            "user_idx": sequences["user_idx"],
            "user_id": sequences["user_id"],
            "item_idx": pl.Series([row.tolist() for row in kept], dtype=pl.List(pl.Int32)),
            "item_id": pl.Series([ids[row].tolist() for row in kept], dtype=pl.List(pl.String)),
            "title": pl.Series([titles[row].tolist() for row in kept], dtype=pl.List(pl.String)),
            "score": pl.Series([row.tolist() for row in kept_scores], dtype=pl.List(pl.Float32)),
        }
    )


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """``rows`` (:meth:`Recommender.rows`) as an aligned text table: rank, item id, title, score."""
    id_width = max([len("item_id"), *(len(r["item_id"]) for r in rows)])
    title_width = max([len("title"), *(len(r["title"]) for r in rows)])
    lines = [f"{'rank':>4}  {'item_id':<{id_width}}  {'title':<{title_width}}  {'score':>9}"]
    for rank, r in enumerate(rows, 1):
        lines.append(f"{rank:>4}  {r['item_id']:<{id_width}}  {r['title']:<{title_width}}  {r['score']:>9.4f}")
    return "\n".join(lines)


def parse_history(text: str, known: set[str] | dict[str, int], sep: str = ",") -> list[str]:
    """Split ``text`` on ``sep`` into raw ids. Raw ids may contain ``sep`` themselves (ML-1M's ids are titles such
    as "Godfather, The (1972)"), so at each position the longest run of pieces that forms a known id wins; a piece
    that starts no known id is returned alone (stripped), to be reported as unknown."""
    pieces = text.split(sep)
    longest = 1 + max((item_id.count(sep) for item_id in known), default=0)  # most pieces one id can span
    out: list[str] = []
    i = 0
    while i < len(pieces):
        for j in range(min(len(pieces), i + longest), i, -1):
            candidate = sep.join(pieces[i:j]).strip()
            if candidate in known:
                out.append(candidate)
                i = j
                break
        else:
            if pieces[i].strip():
                out.append(pieces[i].strip())
            i += 1
    return out
