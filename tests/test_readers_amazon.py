"""Amazon 2018 / 2023 readers on fixtures in the real formats (tests/fixtures/real_formats), plus the shared
JSON-lines machinery and text clean-up. Expected counts follow the bad rows planted by make_fixtures.py."""

from __future__ import annotations

import dataclasses
import gzip
import json
import shutil
import unicodedata
from pathlib import Path

import polars as pl
import pytest

from pipeline.config import DataConfig
from pipeline.data.readers import READERS
from pipeline.data.readers.amazon2018 import read_amazon2018
from pipeline.data.readers.amazon2023 import META_SCHEMA, REVIEW_SCHEMA, read_amazon2023
from pipeline.data.readers.rawio import epoch_seconds, read_json_lines
from pipeline.data.schema import INTERACTION_SCHEMA, ITEM_REQUIRED_COLUMNS, DataFormatError
from pipeline.data.text import clean_text, clean_text_series

FIXTURES = Path(__file__).parent / "fixtures" / "real_formats"
CFG = DataConfig(
    source="amazon2023", path=None, images_dir=None, min_rating=None, user_core=5, item_core=5,
    dedupe="user_item", max_seq_len=50, cold_start_fraction=0.0, seed=0,
)  # fmt: skip


def cfg(path: Path, source: str = "amazon2023", **kw: object) -> DataConfig:
    return dataclasses.replace(CFG, source=source, path=str(path), **kw)


def assert_contract(raw) -> pl.DataFrame:
    """The reader honours pipeline.data.schema: dtypes, no nulls in ids/time, unique rows and item ids."""
    inter = raw.interactions.collect()
    assert dict(inter.schema) == INTERACTION_SCHEMA
    assert inter.select(pl.col("user_id", "item_id", "timestamp", "row").null_count().sum()).row(0) == (0, 0, 0, 0)
    assert inter["row"].is_unique().all()
    for name, dtype in ITEM_REQUIRED_COLUMNS.items():
        assert raw.items.schema[name] == dtype, name
    assert raw.items["item_id"].is_unique().all() and raw.items["text"].null_count() == 0
    return inter


def gzip_dir(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True)
    for f in src.iterdir():
        if f.is_file():
            (dst / (f.name + ".gz")).write_bytes(gzip.compress(f.read_bytes()))
    return dst


# ----------------------------------------------------------------------------------------------------------------
# Amazon 2023


def test_amazon2023_fixture_counts_every_bad_row():
    raw = read_amazon2023(cfg(FIXTURES / "amazon2023"))
    inter = assert_contract(raw)
    lines = (FIXTURES / "amazon2023" / "All_Beauty.jsonl").read_bytes().count(b"\n")
    expected = {"malformed_json": 1, "blank_line": 1, "missing_user": 1, "missing_timestamp": 1, "bad_timestamp": 1}
    assert dict(raw.drops) == expected
    assert inter.height + sum(raw.drops.values()) == lines  # every line is kept or counted
    # reviews of items without metadata are left for prepare to count (unknown_item)
    assert inter.filter(pl.col("item_id") == "B0NOMETA01").height == 2
    assert set(raw.items["item_id"]) == {f"B0000010{i:02d}" for i in range(24)}


def test_amazon2023_timestamps_rows_and_utf8():
    raw = read_amazon2023(cfg(FIXTURES / "amazon2023"))
    inter = raw.interactions.collect()
    lines = (FIXTURES / "amazon2023" / "All_Beauty.jsonl").read_bytes().split(b"\n")
    first = json.loads(lines[0])
    row0 = inter.filter(pl.col("row") == 0).row(0, named=True)
    assert row0["timestamp"] == first["timestamp"] // 1000  # milliseconds floored to seconds
    assert row0["user_id"] == first["user_id"] and row0["item_id"] == first["parent_asin"]
    assert inter["timestamp"].max() < 10**11
    # row = 0-based physical line: the latin-1 line (1-based line 281) is kept, with its row
    bad_utf8 = inter.filter(pl.col("row") == 280).row(0, named=True)
    assert bad_utf8["timestamp"] == 1588687728 and bad_utf8["rating"] == 3.0
    notes = " ".join(raw.notes)
    assert "invalid UTF-8 (e.g. line 281)" in notes and "milliseconds" in notes
    assert "malformed review line(s) skipped (e.g. line 6)" in notes
    assert "1 record(s) without an item id skipped; 1 repeated item id(s) skipped" in notes


def test_amazon2023_item_text_and_images():
    items = read_amazon2023(cfg(FIXTURES / "amazon2023")).items
    by_id = {r["item_id"]: r for r in items.iter_rows(named=True)}
    first = by_id["B000001000"]
    assert first["text"] == (
        "Crème Hydrating Serum No. 0 — 30 ml. Gentle & fragrance-free formula 0. Made in France. "
        "Apply twice daily. Suitable for all skin types 0. Store: Maison Belle"
    )
    assert unicodedata.is_normalized("NFC", first["text"]) and "Cre\u0300me" not in first["text"]
    assert "Categories: Beauty & Personal Care > Skin Care" in by_id["B000001001"]["text"]
    assert not any("<" in t or "&amp;" in t or "&nbsp;" in t for t in items["text"])
    # images: hi_res, else large; the item with an empty image list has none
    assert first["image_ref"] == "https://m.media-amazon.com/images/I/B000001000.jpg"
    assert by_id["B000001001"]["image_ref"] == "https://m.media-amazon.com/images/I/B000001001._SL1500_.jpg"
    assert by_id["B000001007"]["image_ref"] is None


def test_amazon2023_gzip_reads_the_same(tmp_path):
    plain = read_amazon2023(cfg(FIXTURES / "amazon2023"))
    gz = read_amazon2023(cfg(gzip_dir(FIXTURES / "amazon2023", tmp_path / "gz")))
    assert gz.interactions.collect().equals(plain.interactions.collect())
    assert gz.items.equals(plain.items) and gz.drops == plain.drops
    assert gz.source_files[0].name == "All_Beauty.jsonl.gz"


def test_reviews_file_as_data_path_and_missing_meta(tmp_path):
    raw = read_amazon2023(cfg(FIXTURES / "amazon2023" / "All_Beauty.jsonl"))
    assert raw.items.height == 24
    shutil.copy(FIXTURES / "amazon2023" / "All_Beauty.jsonl", tmp_path / "All_Beauty.jsonl")
    with pytest.raises(DataFormatError, match=r"meta_All_Beauty.*download meta_All_Beauty"):
        read_amazon2023(cfg(tmp_path))
    shutil.copy(FIXTURES / "amazon2023" / "All_Beauty.jsonl", tmp_path / "Toys_and_Games.jsonl")
    with pytest.raises(DataFormatError, match="several reviews files"):
        read_amazon2023(cfg(tmp_path))
    with pytest.raises(DataFormatError, match="needs data.path"):
        read_amazon2023(CFG)


def test_truncated_gzip_is_a_clear_error(tmp_path):
    data = gzip.compress((FIXTURES / "amazon2023" / "All_Beauty.jsonl").read_bytes())
    (tmp_path / "All_Beauty.jsonl.gz").write_bytes(data[: len(data) // 2])
    shutil.copy(FIXTURES / "amazon2023" / "meta_All_Beauty.jsonl", tmp_path)
    with pytest.raises(DataFormatError, match=r"truncated or corrupt \(an interrupted download\?\)"):
        read_amazon2023(cfg(tmp_path))


def test_amazon2023_through_prepare(tmp_path, monkeypatch):
    """The reader's output passes prepare's checks and row accounting; unknown items are counted there."""
    from pipeline.data.prepare import prepare

    monkeypatch.setitem(READERS, "amazon2023", read_amazon2023)
    stats = prepare(cfg(FIXTURES / "amazon2023", images_dir=str(FIXTURES / "amazon2023" / "images")), tmp_path)
    assert stats["dropped"]["unknown_item"] == 2 and stats["dropped"]["malformed_json"] == 1
    assert stats["users"] == 40 and stats["items"] >= 20  # 5-core keeps (nearly) everything
    images = stats["images"]
    assert images["present"] + images["missing"] == stats["items"] and images["missing"] >= 2
    items = pl.read_parquet(tmp_path / "items.parquet")
    assert items["text"].str.starts_with("Crème Hydrating Serum").all()


# ----------------------------------------------------------------------------------------------------------------
# Amazon 2018 (and 2014)


def test_amazon2018_fixture():
    raw = read_amazon2018(cfg(FIXTURES / "amazon2018", "amazon2018"))
    inter = assert_contract(raw)
    assert dict(raw.drops) == {"malformed_json": 1, "missing_user": 1, "missing_timestamp": 1}
    assert (inter["timestamp"] % 86_400 == 0).all()
    assert inter.filter(pl.col("row") == 40)["timestamp"].item() == 1_254_009_600  # reviewTime "09 27, 2009"
    assert any("5-core Amazon 2018 files have day-resolution timestamps" in n for n in raw.notes)
    by_id = {r["item_id"]: r for r in raw.items.iter_rows(named=True)}
    assert by_id["B000004001"]["text"] == (
        "Lion Brand Yarn “Vanna’s Choice” 1. Brand: Lion Brand. Categories: Arts, Crafts & Sewing > Knitting & "
        "Crochet > Yarn. Soft acrylic yarn. Skein 1’s weight: 100 g"
    )
    assert "Brand:" not in by_id["B000004000"]["text"]  # empty brand is left out
    assert by_id["B000004000"]["image_ref"].endswith("B000004000._US40_.jpg")  # no high-res: imageURL
    assert by_id["B000004001"]["image_ref"].endswith("I/B000004001.jpg")  # imageURLHighRes first
    assert by_id["B000004009"]["image_ref"] is None


def test_amazon2014_python_literal_meta(tmp_path):
    reviews = [
        {"reviewerID": "U1", "asin": "I1", "overall": 5.0, "unixReviewTime": 1369699200},
        {"reviewerID": "U1", "asin": "I2", "overall": 3.0, "unixReviewTime": 1369699200},
    ]
    (tmp_path / "reviews_Beauty_5.json").write_text("\n".join(json.dumps(r) for r in reviews) + "\n")
    meta = [
        "{'asin': 'I1', 'title': 'Brush <i>Set</i>', 'imUrl': 'http://ecx.images-amazon.com/I1.jpg', "
        "'categories': [['Beauty', 'Tools & Accessories'], ['Beauty', 'Makeup']], 'description': 'Soft &amp; dense'}",
        '{"asin": "I2", "title": "Plain JSON line", "description": ["a", "b"]}',
        "[1, 2, 3]",
    ]
    (tmp_path / "meta_Beauty.json").write_text("\n".join(meta) + "\n")
    raw = read_amazon2018(cfg(tmp_path, "amazon2018"))
    by_id = {r["item_id"]: r for r in raw.items.iter_rows(named=True)}
    assert by_id["I1"]["text"] == ("Brush Set. Categories: Beauty > Tools & Accessories; Beauty > Makeup. Soft & dense")
    assert by_id["I1"]["image_ref"] == "http://ecx.images-amazon.com/I1.jpg"
    assert by_id["I2"]["text"] == "Plain JSON line. a b"
    assert any("Python-literal" in n for n in raw.notes)
    assert any("1 malformed meta line(s) skipped (e.g. line 3)" in n for n in raw.notes)
    assert any("5-core" in n for n in raw.notes)  # reviews_Beauty_5 is a 5-core file


# ----------------------------------------------------------------------------------------------------------------
# JSON lines, timestamps, text


def test_json_lines_blocks_do_not_change_the_result():
    path = FIXTURES / "amazon2023" / "All_Beauty.jsonl"
    whole, report = read_json_lines(path, REVIEW_SCHEMA)
    tiny, tiny_report = read_json_lines(path, REVIEW_SCHEMA, chunk_bytes=700)  # many blocks, some all-bad
    assert tiny.equals(whole)
    assert (report.malformed, report.blank, report.non_utf8) == (tiny_report.malformed, tiny_report.blank, 1)
    assert report.lines == path.read_bytes().count(b"\n")


def test_json_lines_odd_values(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_bytes(
        b'{"user_id": "u", "parent_asin": "i", "timestamp": 1700000000, "rating": 5}\n'
        b'{"user_id": 12345, "parent_asin": "i", "timestamp": "1700000001000", "rating": "4.5"}\n'
        b"null\n"
        b'{"unrelated": true}\n'
        b'{"user_id": "v", "parent_asin": "i", "timestamp": NaN}\n'
        b'{"user_id": "w", "parent_asin": "i", "timestamp": 1700000002}'  # no final newline
    )
    frame, report = read_json_lines(path, REVIEW_SCHEMA)
    assert frame["user_id"].to_list() == ["u", "12345", "w"]  # numbers read as text
    assert frame["timestamp"].to_list() == ["1700000000", "1700000001000", "1700000002"]
    assert frame["row"].to_list() == [0, 1, 5]
    assert report.malformed == 3 and report.malformed_lines == [3, 4, 5]


def test_nested_fields_of_the_wrong_shape(tmp_path):
    path = tmp_path / "meta.jsonl"
    records = [
        {"parent_asin": "A", "features": ["ok"], "description": "a plain string", "images": [{"large": "L"}]},
        {"parent_asin": "B", "features": [1, {"x": 1}, True], "images": [{"large": 5, "hi_res": None}, "junk"]},
        {"parent_asin": "C", "features": {"not": "a list"}, "images": "nope", "categories": None},
    ]
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    frame, report = read_json_lines(path, META_SCHEMA)
    assert report.malformed == 0
    rows = {r["parent_asin"]: r for r in frame.iter_rows(named=True)}
    assert rows["A"]["description"] == ["a plain string"] and rows["A"]["images"] == [{"hi_res": None, "large": "L"}]
    assert rows["B"]["features"] == ["1", None, "true"]
    assert rows["B"]["images"] == [{"hi_res": None, "large": "5"}, None]
    assert rows["C"]["features"] is None and rows["C"]["images"] is None


def test_epoch_seconds_units():
    values = pl.Series(["1588687728", "1588687728923", "1588687728923456", "1588687728923456789", "1.5887e9", "x"])
    got = pl.select(epoch_seconds(pl.lit(values))).to_series().to_list()
    assert got == [1588687728, 1588687728, 1588687728, 1588687728, 1588700000, None]


def test_clean_text():
    raw = (
        '<script>var a = "<b>";</script><p>Soft&nbsp;&amp; <b>gentle</b><br/>formula&#8217;s\tbest</p>'
        "\x00\x07 Cre\u0300me   \u00a0 \u2603"
    )
    expected = "Soft & gentle formula’s best Crème ☃"
    assert clean_text(raw) == expected
    series = pl.Series("t", [raw, None, "plain ascii  text ", "&lt;b&gt; is kept as text"])
    assert clean_text_series(series).to_list() == [expected, None, "plain ascii text", "<b> is kept as text"]
