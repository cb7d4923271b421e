"""Prepared-data writers (items.parquet, sequences.parquet, images of every kind) and the hand-made `data:` config."""

from __future__ import annotations

from pathlib import Path

import polars as pl
from PIL import Image

from pipeline.config import DataConfig

DATA_CFG = DataConfig(
    source="handmade",
    path=None,
    images_dir=None,
    min_rating=None,
    user_core=3,
    item_core=1,
    dedupe="user_item",
    max_seq_len=50,
    cold_start_fraction=0.0,
    seed=0,
)


def write_dataset(root: Path) -> Path:
    """8 items: every image mode, an empty text, a null image path, a missing file and a corrupt file."""
    images = root / "images"
    images.mkdir(parents=True)
    Image.new("RGB", (320, 240), (200, 30, 30)).save(images / "rgb.png")
    Image.new("L", (100, 150), 90).save(images / "gray.png")
    Image.new("RGBA", (64, 64), (0, 0, 255, 128)).save(images / "rgba.png")
    Image.new("CMYK", (80, 80), (0, 200, 200, 0)).save(images / "cmyk.jpg")
    Image.new("P", (50, 70), 7).save(images / "palette.png")
    (images / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    paths = ["rgb.png", "gray.png", "rgba.png", "cmyk.jpg", "palette.png", "corrupt.png", "gone.png", None]
    items = pl.DataFrame(
        {
            "item_idx": pl.Series(range(1, 9), dtype=pl.Int32),
            "item_id": [f"m{i}" for i in range(1, 9)],
            "text": [
                "Toy Story (1995) Animation|Children's|Comedy",
                "",
                "Heat (1995) Action|Crime|Thriller",
                "GoldenEye (1995) Action|Adventure|Thriller",
                "Casino (1995) Drama|Thriller",
                "Sabrina (1995) Comedy|Romance",
                "   ",
                "Jumanji (1995) Adventure|Children's|Fantasy",
            ],
            "image_path": [str(images / p) if p else None for p in paths],
            "year": pl.Series([1995] * 8, dtype=pl.Int32),
        }
    )
    prepared = root / "prepared"
    prepared.mkdir()
    items.write_parquet(prepared / "items.parquet")
    # Users' sequences: training part = all but the last two items.
    pl.DataFrame(
        {
            "user_idx": pl.Series([1, 2, 3], dtype=pl.Int32),
            "user_id": ["u1", "u2", "u3"],
            "items": pl.Series([[1, 2, 3, 4, 5], [1, 3, 6], [2, 1, 8, 7]], dtype=pl.List(pl.Int32)),
            "timestamps": pl.Series([[1, 2, 3, 4, 5], [1, 2, 3], [1, 2, 3, 4]], dtype=pl.List(pl.Int64)),
        }
    ).write_parquet(prepared / "sequences.parquet")
    return prepared


def write_items(path: Path, texts: list[str]) -> Path:
    pl.DataFrame(
        {
            "item_idx": pl.Series(range(1, len(texts) + 1), dtype=pl.Int32),
            "item_id": [f"m{i}" for i in range(len(texts))],
            "text": texts,
            "image_path": pl.Series([None] * len(texts), dtype=pl.String),
        }
    ).write_parquet(path)
    return path
