"""Prepare-stage benchmark on an Amazon-Reviews-2023-format category with N reviews (default 10 million).

    python -m bench.prepare_amazon_10m                 # 10M rows: generates ~4.5 GB of JSON lines under --dir
    python -m bench.prepare_amazon_10m --rows 1000000 --gzip

1. Generates ``<dir>/Bench.jsonl[.gz]`` (reviews with realistic fields and text lengths, millisecond timestamps,
   popularity-skewed items) and ``meta_Bench.jsonl[.gz]`` (one record per item, HTML descriptions, image lists),
   unless they already exist with the requested size.
2. In a fresh child process (so generation does not count), runs the ``amazon2023`` reader and then
   ``pipeline.data.prepare.prepare`` (k-core 5/5, dedupe, id mapping, parquet outputs). ``data.images_dir``
   points at an empty folder so prepare skips rendering a million synthetic title cards (which is not what this
   benchmark measures).
3. Prints wall time per phase and the child's peak RSS (``VmHWM`` from /proc/self/status: unlike ``ru_maxrss``
   it is not inherited from the generating parent across fork/exec). Goal (issue 5): <= 4 GB, <= 3 min.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

_WORDS = (
    "great product works as described love it would buy again the color is nice smells lovely fits well my skin "
    "feels soft after using quality could be better arrived quickly packaging was damaged but item fine texture "
    "is creamy not greasy a little goes a long way price is fair compared to stores gift for my wife she adores"
).split()


def _texts(rng: np.random.Generator, n: int) -> list[str]:
    """A pool of review texts with a long-tailed length distribution (median ~200 characters)."""
    lengths = np.clip(rng.lognormal(3.5, 0.8, size=n).astype(int), 3, 400)
    return [" ".join(rng.choice(_WORDS, size=k)) for k in lengths]


def _ids(prefix: str, n: int, width: int) -> np.ndarray:
    return np.array([f"{prefix}{i:0{width}d}" for i in range(n)], dtype=object)


def generate(folder: Path, rows: int, compress: bool, seed: int = 0) -> tuple[Path, Path]:
    """Write the reviews and meta files (skipped when a finished pair with ``rows`` lines is already there)."""
    suffix = ".jsonl.gz" if compress else ".jsonl"
    reviews, meta = folder / f"Bench{suffix}", folder / f"meta_Bench{suffix}"
    stamp = folder / f"Bench{suffix}.rows"
    if reviews.exists() and meta.exists() and stamp.exists() and stamp.read_text() == str(rows):
        return reviews, meta
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    n_users, n_items = max(rows // 8, 10), max(rows // 12, 10)
    users = np.array([f"AE{i:026d}" for i in range(n_users)], dtype=object)
    items = _ids("B0", n_items, 8)
    texts = np.array(_texts(rng, 4096), dtype=object)
    opener = (lambda p: gzip.open(p, "wb", compresslevel=1)) if compress else (lambda p: open(p, "wb"))  # noqa: SIM115
    started = time.perf_counter()
    chunk = 500_000
    with opener(reviews) as f:
        for start in range(0, rows, chunk):
            n = min(chunk, rows - start)
            item_idx = np.minimum(rng.zipf(1.3, size=n) - 1, n_items - 1)  # popularity skew
            item_idx = (item_idx * 7919 + rng.integers(0, 3, size=n)) % n_items
            frame = pl.DataFrame(
                {
                    "rating": rng.integers(1, 6, size=n).astype(np.float64),
                    "title": texts[rng.integers(0, len(texts), size=n)].tolist(),
                    "text": texts[rng.integers(0, len(texts), size=n)].tolist(),
                    "images": pl.Series([[] for _ in range(n)], dtype=pl.List(pl.String)),
                    "asin": items[item_idx].tolist(),
                    "parent_asin": items[item_idx].tolist(),
                    "user_id": users[rng.integers(0, n_users, size=n)].tolist(),
                    "timestamp": 1_500_000_000_000 + rng.integers(0, 200_000_000_000, size=n),
                    "helpful_vote": rng.integers(0, 20, size=n),
                    "verified_purchase": rng.random(n) < 0.9,
                }
            )
            f.write(frame.write_ndjson().encode("utf-8"))
            print(f"  reviews {start + n:,}/{rows:,} ({time.perf_counter() - started:.0f} s)", file=sys.stderr)
    with opener(meta) as f:
        for start in range(0, n_items, chunk):
            n = min(chunk, n_items - start)
            ids = items[start : start + n].tolist()
            frame = pl.DataFrame(
                {
                    "main_category": ["All Beauty"] * n,
                    "title": [f"Product {i} &amp; friends" for i in ids],
                    "average_rating": rng.random(n) * 4 + 1,
                    "rating_number": rng.integers(1, 1000, size=n),
                    "features": [["Gentle formula", "Made in France"]] * n,
                    "description": [[f"<p>Apply <b>daily</b>. {t}</p>"] for t in texts[rng.integers(0, 4096, n)]],
                    "images": [
                        [{"thumb": None, "large": f"https://x/{i}.jpg", "hi_res": None, "variant": "MAIN"}] for i in ids
                    ],  # fmt: skip
                    "store": ["Maison"] * n,
                    "categories": [["Beauty", "Skin Care"]] * n,
                    "parent_asin": ids,
                }
            )
            f.write(frame.write_ndjson().encode("utf-8"))
    stamp.write_text(str(rows))
    size = reviews.stat().st_size / 2**30
    print(f"generated {rows:,} reviews ({size:.2f} GiB) in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    return reviews, meta


def peak_rss_gib() -> float:
    """This process's peak resident set (Linux ``VmHWM``; ``ru_maxrss`` elsewhere) in GiB."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def measure(folder: Path, out: Path, reader_only: bool) -> dict:
    """Child process: run the reader (and prepare) once and report phase times."""
    import logging

    from pipeline.config import DataConfig
    from pipeline.data.readers.amazon2023 import read_amazon2023

    logging.basicConfig(level=logging.WARNING)
    images = out / "no_images"
    images.mkdir(parents=True, exist_ok=True)
    cfg = DataConfig(
        source="amazon2023", path=str(folder), images_dir=str(images), min_rating=None, user_core=5, item_core=5,
        dedupe="user_item", max_seq_len=50, cold_start_fraction=0.0, seed=0,
    )  # fmt: skip
    result: dict = {}
    t0 = time.perf_counter()
    raw = read_amazon2023(cfg)
    result["reader_s"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    n = raw.interactions.select(pl.len()).collect().item()
    result["reader_rows"] = n
    result["reader_collect_s"] = time.perf_counter() - t1
    result["reader_items"] = raw.items.height
    result["reader_drops"] = dict(raw.drops)
    result["reader_peak_rss_gib"] = peak_rss_gib()
    if not reader_only:
        del raw
        from pipeline.data import prepare as prep
        from pipeline.data.readers import READERS

        READERS.setdefault("amazon2023", read_amazon2023)  # until the registry lists it
        t2 = time.perf_counter()
        stats = prep.prepare(cfg, out)
        result["prepare_s"] = time.perf_counter() - t2  # includes a second read of the files
        result["prepared"] = {k: stats[k] for k in ("users", "items", "interactions", "timestamp_tie_rate")}
    result["total_s"] = time.perf_counter() - t0
    result["peak_rss_gib"] = peak_rss_gib()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()) / "mmrec-bench-amazon2023")
    parser.add_argument("--gzip", action="store_true", help="write .jsonl.gz (as downloaded) instead of .jsonl")
    parser.add_argument("--reader-only", action="store_true", help="skip pipeline.data.prepare")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    folder = args.dir / f"{args.rows}{'-gz' if args.gzip else ''}"
    if args.child:
        print(json.dumps(measure(folder, args.dir / "prepared", args.reader_only)))
        return
    reviews, _ = generate(folder, args.rows, args.gzip)
    cmd = [
        sys.executable,
        "-m",
        "bench.prepare_amazon_10m",
        "--child",
        "--rows",
        str(args.rows),
        "--dir",
        str(args.dir),
    ]
    cmd += ["--gzip"] * args.gzip + ["--reader-only"] * args.reader_only
    started = time.perf_counter()
    child = subprocess.run(cmd, check=True, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": "."})
    wall = time.perf_counter() - started
    result = json.loads(child.stdout.strip().splitlines()[-1])
    result.update(rows=args.rows, file=str(reviews), file_gib=reviews.stat().st_size / 2**30)
    result.update(child_wall_s=wall, cpus=os.cpu_count())
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
