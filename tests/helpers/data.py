"""Data writers: prepared data (items.parquet, sequences.parquet, images of every kind), raw `table` and `recbole`
files with their `data:` configs, and the hand-made `data:` config."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import polars as pl
from PIL import Image

from pipeline.config import DataConfig, RecboleConfig, TableColumns, TableConfig, TableItemColumns

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


def image_ref_items(ids: list[str], refs: list[str | None]) -> pl.DataFrame:
    """A reader's items table (before prepare attaches images): ``ids`` with empty texts and ``refs`` as image_ref."""
    return pl.DataFrame(
        {"item_idx": list(range(1, len(ids) + 1)), "item_id": ids, "text": [""] * len(ids), "image_ref": refs},
        schema={"item_idx": pl.Int32, "item_id": pl.String, "text": pl.String, "image_ref": pl.String},
    )


# --- source `table`: events.csv + items.csv -------------------------------------------------------------------------

TABLE_CFG = dataclasses.replace(DATA_CFG, source="table")
T0 = 1_700_000_000  # 2023-11-14T22:13:20Z
TABLE_ITEMS_CSV = "sku,name,brand\nA,Red Shoe,Nike\nB,Blue Hat,\nC,Green Bag,Acme\n"


def table_cfg(root: Path, images_dir: Path | None = None, **kw: object) -> DataConfig:
    columns = kw.pop("columns", TableColumns(user="uid", item="sku", timestamp="ts"))
    item_columns = kw.pop("item_columns", TableItemColumns(id="sku", text=["name", "brand"]))
    spec = TableConfig(
        **{"interactions": "events.csv", "items": "items.csv", **kw}, columns=columns, item_columns=item_columns
    )  # type: ignore[arg-type]
    images = str(images_dir) if images_dir else None
    return dataclasses.replace(TABLE_CFG, path=str(root), images_dir=images, table=spec)


def write_table(root: Path, events: str, items: str = TABLE_ITEMS_CSV, name: str = "events.csv") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / name).write_text(events, encoding="utf-8")
    (root / "items.csv").write_text(items, encoding="utf-8")
    return root


# --- source `recbole`: <name>.inter / <name>.item ---------------------------------------------------------------------

RECBOLE_CFG = dataclasses.replace(DATA_CFG, source="recbole", user_core=1)

# A Amazon-style RecBole data set, not named after MovieLens: other field order, extra fields, float timestamps
# (one with a fraction), genres in a token_seq field named `categories`, a float_seq, a `.user` and a `.kg` file.
RECBOLE_INTER = [
    "rating:float\tuser_id:token\tsession:token\titem_id:token\ttimestamp:float",
    "5\tu1\ts1\tB01\t1588687728",
    "4\tu1\ts1\tB02\t1588687729.0",
    "",
    "3\tu2\ts2\tB01\t1588687730.75",
    "2\tu2\ts2\tB03\t-5",
]
RECBOLE_ITEM = [
    "item_id:token\ttitle:token\tcategories:token_seq\tprice:float\tbrand:token\tembedding:float_seq",
    "B01\tLip Balm\tBeauty Skin_Care\t3.5\tMaison\t0.1 0.2",
    "B02\tHand Cream\tBeauty\t\t\t",
    "B03\tSoap\t\t2\tSavon\t1",
]


def write_recbole(
    root: Path, name: str, inter: list[str], item: list[str] | None = None, extra: tuple[str, ...] = ()
) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / f"{name}.inter").write_text("\n".join(inter) + "\n", encoding="utf-8")
    if item is not None:
        (root / f"{name}.item").write_text("\n".join(item) + "\n", encoding="utf-8")
    for suffix in extra:
        (root / f"{name}.{suffix}").write_text("x:token\n1\n", encoding="utf-8")
    return root


def recbole_cfg(root: Path, **recbole: object) -> DataConfig:
    return dataclasses.replace(RECBOLE_CFG, path=str(root), recbole=RecboleConfig(**recbole))  # type: ignore[arg-type]
