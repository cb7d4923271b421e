"""Prepare-stage benchmark for ``data.source: table`` on a generated Parquet interactions table (default 10M rows).

    python -m bench.prepare_table_10m                  # 10M rows: ~150 MB of Parquet under --dir
    python -m bench.prepare_table_10m --rows 1000000

1. Generates ``<dir>/<rows>/events.parquet`` (``uid`` int64, ``sku`` text, ``ts`` epoch milliseconds, ``stars``,
   and a ``payload`` text column the reader must not load; popularity-skewed items, 1.25M users for 10M rows) and
   ``items.parquet`` (``sku``, ``name``, ``tags`` as a list column), unless they already exist with that size.
2. In a fresh child process (so generation does not count), runs the ``table`` reader, then
   ``pipeline.data.prepare.prepare`` (k-core 5/5, dedupe, id mapping, Parquet outputs). ``data.images_dir`` points
   at an empty folder so prepare does not render ~800k synthetic title cards (not what this benchmark measures).
3. Prints wall time per phase and the child's peak RSS (``VmHWM``). Goal (issue 12): <= 60 s and <= 3 GB.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

from bench.prepare_amazon_10m import peak_rss_gib


def generate(folder: Path, rows: int, seed: int = 0) -> tuple[Path, Path]:
    """Write ``events.parquet`` and ``items.parquet`` (skipped when a finished pair with ``rows`` rows exists)."""
    events, items = folder / "events.parquet", folder / "items.parquet"
    stamp = folder / "rows"
    if events.exists() and items.exists() and stamp.exists() and stamp.read_text() == str(rows):
        return events, items
    folder.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    rng = np.random.default_rng(seed)
    n_users, n_items = max(rows // 8, 10), max(rows // 12, 10)
    item_idx = np.minimum(rng.zipf(1.3, size=rows) - 1, n_items - 1)  # popularity skew
    item_idx = (item_idx * 7919 + rng.integers(0, 3, size=rows)) % n_items
    frame = pl.DataFrame(
        {
            "uid": rng.integers(0, n_users, size=rows, dtype=np.int64),
            "sku_idx": item_idx.astype(np.int64),
            "ts": 1_500_000_000_000 + rng.integers(0, 200_000_000_000, size=rows, dtype=np.int64),
            "stars": rng.integers(1, 6, size=rows).astype(np.float64),
        }
    ).with_columns(
        pl.format("SKU-{}", pl.col("sku_idx")).alias("sku"),
        pl.format("session {} via app", pl.col("uid") % 9973).alias("payload"),
    )
    frame.select("uid", "sku", "ts", "stars", "payload").write_parquet(events, row_group_size=1_000_000)
    del frame
    pl.DataFrame({"i": np.arange(n_items)}).select(
        pl.format("SKU-{}", "i").alias("sku"),
        pl.format("Product {} &amp; friends", "i").alias("name"),
        pl.concat_list(pl.lit("Beauty"), pl.format("Line {}", pl.col("i") % 50)).alias("tags"),
    ).write_parquet(items)
    stamp.write_text(str(rows))
    size = events.stat().st_size / 2**20
    print(f"generated {rows:,} events ({size:.0f} MiB) in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    return events, items


def measure(folder: Path, out: Path, reader_only: bool) -> dict:
    """Child process: run the reader (and prepare) once and report phase times."""
    import logging

    from pipeline.config import DataConfig, TableColumns, TableConfig, TableItemColumns
    from pipeline.data.prepare import prepare
    from pipeline.data.readers.table import read_table

    logging.basicConfig(level=logging.WARNING)
    images = out / "no_images"
    images.mkdir(parents=True, exist_ok=True)
    table = TableConfig(
        interactions="events.parquet",
        items="items.parquet",
        columns=TableColumns(user="uid", item="sku", timestamp="ts", rating="stars"),
        item_columns=TableItemColumns(id="sku", text=["name", "tags"]),
    )
    cfg = DataConfig(
        source="table", path=str(folder), images_dir=str(images), min_rating=None, user_core=5, item_core=5,
        dedupe="user_item", max_seq_len=50, cold_start_fraction=0.0, seed=0, table=table,
    )  # fmt: skip
    result: dict = {}
    t0 = time.perf_counter()
    raw = read_table(cfg)  # reads the items, counts the drops in one streaming pass; interactions stay lazy
    result["reader_s"] = time.perf_counter() - t0
    result["reader_rows"] = raw.interactions.select(pl.len()).collect(engine="streaming").item()
    result["reader_items"] = raw.items.height
    result["reader_drops"] = dict(raw.drops)
    result["reader_peak_rss_gib"] = peak_rss_gib()
    if not reader_only:
        del raw
        t1 = time.perf_counter()
        stats = prepare(cfg, out)
        result["prepare_s"] = time.perf_counter() - t1  # includes a second read of the files
        result["prepared"] = {k: stats[k] for k in ("users", "items", "interactions", "timestamp_tie_rate")}
        result["dropped"] = stats["dropped"]
    result["total_s"] = time.perf_counter() - t0
    result["peak_rss_gib"] = peak_rss_gib()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()) / "mmrec-bench-table")
    parser.add_argument("--reader-only", action="store_true", help="skip pipeline.data.prepare")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    folder = args.dir / str(args.rows)
    if args.child:
        print(json.dumps(measure(folder, args.dir / "prepared", args.reader_only)))
        return
    events, _ = generate(folder, args.rows)
    cmd = [sys.executable, "-m", "bench.prepare_table_10m", "--child", "--rows", str(args.rows), "--dir", str(args.dir)]
    cmd += ["--reader-only"] * args.reader_only
    started = time.perf_counter()
    child = subprocess.run(cmd, check=True, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": "."})
    wall = time.perf_counter() - started
    result = json.loads(child.stdout.strip().splitlines()[-1])
    result.update(rows=args.rows, file=str(events), file_mib=events.stat().st_size / 2**20)
    result.update(child_wall_s=wall, cpus=os.cpu_count(), goal="<= 60 s, <= 3 GB")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
