"""The column-mapped table reader (``data.source: table``): CSV, TSV, Parquet, JSON Lines, shards, images."""

from __future__ import annotations

import dataclasses
import gzip
import json
from datetime import datetime
from pathlib import Path

import polars as pl
import pytest
from PIL import Image

from pipeline.config import ConfigError, DataConfig, TableColumns, TableConfig, TableItemColumns
from pipeline.data.prepare import prepare, validate_config
from pipeline.data.readers import get_reader
from pipeline.data.readers.table import read_table
from pipeline.data.schema import INTERACTION_SCHEMA, DataFormatError
from pipeline.download.http import DownloadError, FetchOptions
from pipeline.download.run import download_table_images
from tests.helpers.data import T0, TABLE_CFG, TABLE_ITEMS_CSV, table_cfg, write_table
from tests.helpers.loopback import Loopback, jpeg


def rows(cfg: DataConfig) -> list[tuple]:
    return get_reader("table")(cfg).interactions.collect().select("user_id", "item_id", "timestamp", "row").rows()


def test_csv_renamed_columns_iso_timestamps_and_text(tmp_path: Path) -> None:
    events = (
        "ts,sku,uid,extra\n"
        "2023-11-14T22:13:20Z,A,u1,x\n"
        "2023-11-14T23:13:21+01:00,B,u1,y\n"  # the same instant + 1 s, written in another zone
        "2023-11-14 22:13:22.9,C,u1,z\n"  # no offset: read in data.table.timezone
        "2023-11-14,A,u2,w\n"  # a date: midnight in that zone
    )
    root = write_table(tmp_path, events)
    got = rows(table_cfg(root, timezone="UTC"))
    assert got == [("u1", "A", T0, 0), ("u1", "B", T0 + 1, 1), ("u1", "C", T0 + 2, 2), ("u2", "A", 1699920000, 3)]
    paris = rows(table_cfg(root, timezone="Europe/Paris"))
    assert [r[2] for r in paris] == [T0, T0 + 1, T0 + 2 - 3600, 1699920000 - 3600]  # only zone-less values move
    raw = read_table(table_cfg(root, timezone="UTC", text_labels={"brand": "Made by"}))
    assert dict(raw.items.select("item_id", "text").iter_rows()) == {
        "A": "Red Shoe. Made by: Nike",
        "B": "Blue Hat",
        "C": "Green Bag. Made by: Acme",
    }
    assert raw.items["title"].to_list() == ["Red Shoe", "Blue Hat", "Green Bag"]
    assert read_table(table_cfg(root, timezone="UTC")).items["text"][0] == "Red Shoe. Brand: Nike"  # default label


def test_iso_without_a_stated_zone_is_an_error_naming_file_and_row(tmp_path: Path) -> None:
    root = write_table(tmp_path, "uid,sku,ts\nu1,A,2023-11-14T22:13:20Z\nu1,B,2023-11-14 22:13:21\n")
    with pytest.raises(
        DataFormatError,
        match=r"events.csv: row 2: ISO 8601 timestamp '2023-11-14 22:13:21' has no "
        r"time zone. Fix: .*data.table.timezone: UTC",
    ):
        read_table(table_cfg(root))
    with pytest.raises(ConfigError, match=r"`data.table.timezone` = 'Mars/Base' is not a time zone"):
        read_table(table_cfg(root, timezone="Mars/Base"))


def test_tsv_epoch_units_and_counted_bad_rows(tmp_path: Path) -> None:
    events = (
        "uid\tsku\tts\tstars\n"
        f"u1\tA\t{T0 * 1000}\t5\n"  # milliseconds, detected by magnitude
        f"u1\tB\t{T0 + 1}\t4.5\n"
        f"\tC\t{T0}\t1\n"  # no user
        f"u1\t\t{T0}\t1\n"  # no item
        "u1\tC\t\t1\n"  # no timestamp
        "u1\tC\tyesterday\t1\n"  # not a timestamp
        "u1\tC\t-3\tbad\n"  # <= 0
    )
    root = write_table(tmp_path, events, name="events.tsv")
    columns = TableColumns(user="uid", item="sku", timestamp="ts", rating="stars")
    raw = read_table(table_cfg(root, interactions="events.tsv", columns=columns))
    df = raw.interactions.collect()
    assert df.schema == pl.Schema(INTERACTION_SCHEMA)
    assert df.select("timestamp", "rating").rows() == [(T0, 5.0), (T0 + 1, 4.5)]
    assert raw.drops == {"missing_user": 1, "missing_item": 1, "missing_timestamp": 1, "bad_timestamp": 2}
    assert "1 timestamps were in milliseconds" in " ".join(raw.notes)
    assert "not a number" not in " ".join(raw.notes)  # the one "bad" rating is on a dropped row
    stated = read_table(table_cfg(root, interactions="events.tsv", columns=columns, timestamp_unit="s"))
    assert stated.interactions.collect()["timestamp"].to_list() == [T0 + 1]  # T0 ms read as seconds: after 2100


def test_ratings_that_are_not_numbers_are_kept_unrated_and_counted(tmp_path: Path) -> None:
    events = f"uid,sku,ts,stars\nu1,A,{T0},5\nu1,B,{T0 + 1},five\nu1,C,{T0 + 2},\n"  # the last one: no rating
    root = write_table(tmp_path, events, name="events.csv")
    columns = TableColumns(user="uid", item="sku", timestamp="ts", rating="stars")
    raw = read_table(table_cfg(root, interactions="events.csv", columns=columns))
    assert raw.interactions.collect()["rating"].to_list() == [5.0, None, None]
    assert [n for n in raw.notes if "not a number" in n] == [
        "table: 1 kept interaction(s) have a rating that is not a number (e.g. 'five'); they count as unrated, so "
        "data.min_rating, when set, drops them (as min_rating). Fix: write ratings as numbers if they matter"
    ]


def test_parquet_shards_list_columns_float_ids_and_nulls(tmp_path: Path) -> None:
    shards = tmp_path / "events"
    shards.mkdir(parents=True)
    pl.DataFrame(
        {"uid": [1.0, 2.0], "sku": ["A", "B"], "ts": [T0 * 1000, T0 * 1000 + 1500], "tags": [["x"], ["y", "z"]]}
    ).write_parquet(shards / "part-0.parquet")
    pl.DataFrame(
        {"uid": [2.0, None], "sku": ["C", "A"], "ts": [T0 * 1000 + 3000, T0 * 1000], "tags": [[], None]}
    ).write_parquet(shards / "part-1.parquet")
    (shards / "_SUCCESS").write_text("")  # Spark's marker: skipped
    pl.DataFrame(
        {
            "sku": ["A", "B", "C", None, "A"],
            "name": ["Shoe", "Hat", "Bag", "x", "dup"],
            "tags": [["red", "sale"], [], None, ["q"], ["dup"]],
        }
    ).write_parquet(tmp_path / "items.parquet")
    item_columns = TableItemColumns(id="sku", text=["name", "tags"])
    for spec in ("events", "events/part-*.parquet"):
        cfg = table_cfg(tmp_path, interactions=spec, items="items.parquet", item_columns=item_columns)
        raw = read_table(cfg)
        df = raw.interactions.collect()
        assert df.select("user_id", "item_id", "timestamp", "row").rows() == [
            ("1", "A", T0, 0),
            ("2", "B", T0 + 1, 1),
            ("2", "C", T0 + 3, 2),
        ]  # float ids 1.0 -> "1"; a null user is counted; row is the global order across shards
        assert raw.drops == {"missing_user": 1}
        assert raw.items["text"].to_list() == ["Shoe. Tags: red, sale", "Hat", "Bag"]
        assert "1 record(s) without an item id skipped; 1 repeated item id(s) skipped" in " ".join(raw.notes)
    assert isinstance(read_table(cfg).interactions, pl.LazyFrame)  # prepare streams it


def test_parquet_datetimes_need_a_zone_unless_they_carry_one(tmp_path: Path) -> None:
    naive = [datetime(2023, 11, 14, 22, 13, 20), datetime(2023, 11, 14, 22, 13, 21)]
    frame = pl.DataFrame({"uid": ["u", "u"], "sku": ["A", "B"], "ts": naive})
    frame.write_parquet(tmp_path / "naive.parquet")
    frame.with_columns(pl.col("ts").dt.replace_time_zone("Europe/Paris")).write_parquet(tmp_path / "aware.parquet")
    write_table(tmp_path, "unused\n1\n")
    with pytest.raises(DataFormatError, match=r"naive.parquet: column 'ts' holds Datetime.*without a time zone"):
        read_table(table_cfg(tmp_path, interactions="naive.parquet"))
    assert [r[2] for r in rows(table_cfg(tmp_path, interactions="naive.parquet", timezone="UTC"))] == [T0, T0 + 1]
    assert [r[2] for r in rows(table_cfg(tmp_path, interactions="aware.parquet"))] == [T0 - 3600, T0 - 3599]


def test_json_lines_shards_with_malformed_lines(tmp_path: Path) -> None:
    folder = tmp_path / "events"
    folder.mkdir()
    (tmp_path / "items.csv").write_text(TABLE_ITEMS_CSV)
    with gzip.open(folder / "a.jsonl.gz", "wt") as f:
        f.write(json.dumps({"uid": 1, "sku": "A", "ts": T0}) + "\n{not json\n\n")
    (folder / "b.jsonl").write_text(json.dumps({"uid": 1, "sku": "B", "ts": "2023-11-14T22:13:21Z"}) + "\n")
    raw = read_table(table_cfg(tmp_path, interactions="events", items="items.csv"))
    assert raw.interactions.collect().select("user_id", "item_id", "timestamp", "row").rows() == [
        ("1", "A", T0, 0),
        ("1", "B", T0 + 1, 3),  # row = line across shards (a.jsonl.gz has 3 lines)
    ]
    assert raw.drops == {"malformed_json": 1, "blank_line": 1}
    (folder / "b.jsonl").write_text(json.dumps({"user": 1, "sku": "B", "ts": T0}) + "\n")
    with pytest.raises(
        DataFormatError,
        match=r"b.jsonl: no record has a field 'uid'.*fields of the first record: "
        r"user, sku, ts. Fix: set data.table.columns.user",
    ):
        read_table(table_cfg(tmp_path, interactions="events", items="items.csv"))


def test_json_lines_items_with_list_text(tmp_path: Path) -> None:
    write_table(tmp_path, f"uid,sku,ts\nu,A,{T0}\n", items="")
    lines = [{"sku": "A", "name": "Shoe", "tags": ["red", "sale"]}, {"sku": "B", "name": "Hat", "tags": []}]
    (tmp_path / "items.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    raw = read_table(
        table_cfg(tmp_path, items="items.jsonl", item_columns=TableItemColumns(id="sku", text=["name", "tags"]))
    )
    assert raw.items["text"].to_list() == ["Shoe. Tags: red, sale", "Hat"]


@pytest.mark.parametrize(
    ("kw", "error", "match"),
    [
        (
            {"columns": TableColumns(user="user", item="sku", timestamp="ts")},
            DataFormatError,
            r"events.csv: no column 'user' \(`data.table.columns.user`\); columns: uid, sku, ts. Fix: set",
        ),
        (
            {"item_columns": TableItemColumns(id="id", text=["name"])},
            DataFormatError,
            r"items.csv: no column 'id' \(`data.table.item_columns.id`\)",
        ),
        ({"interactions": None}, ConfigError, r"needs `data.table.interactions`"),
        (
            {"interactions": "events.parquet", "timestamp_unit": "iso"},
            ConfigError,
            r"'iso', but column 'ts' .* numbers",
        ),
        ({"interactions": "nope/*.parquet"}, DataFormatError, r"no table files"),
        ({"interactions": "missing.csv"}, DataFormatError, r"missing.csv does not exist"),
        ({"item_columns": TableItemColumns(id="sku", text=[])}, ConfigError, r"at least one text column"),
        ({"text_labels": {"price": "Price"}}, ConfigError, r"text_labels` labels 'price'"),
        (
            {"item_columns": TableItemColumns(id="sku", text=["name"], image="img")},
            ConfigError,
            r"item_columns.image` = 'img' needs data.images_dir",
        ),
    ],
)
def test_config_and_column_errors(tmp_path: Path, kw: dict, error: type, match: str) -> None:
    root = write_table(tmp_path, f"uid,sku,ts\nu,A,{T0}\n")
    pl.DataFrame({"uid": ["u"], "sku": ["A"], "ts": [T0]}).write_parquet(root / "events.parquet")
    with pytest.raises(error, match=match):
        read_table(table_cfg(root, **kw))


def test_ragged_csv_and_mixed_formats_are_errors(tmp_path: Path) -> None:
    root = write_table(tmp_path, f"uid,sku,ts\nu,A,{T0}\nu,B\n")
    with pytest.raises(DataFormatError, match=r"events.csv:3: expected 3 fields"):
        read_table(table_cfg(root))
    (tmp_path / "shards").mkdir()
    (tmp_path / "shards" / "a.csv").write_text(f"uid,sku,ts\nu,A,{T0}\n")
    pl.DataFrame({"uid": ["u"], "sku": ["B"], "ts": [T0]}).write_parquet(tmp_path / "shards" / "b.parquet")
    with pytest.raises(DataFormatError, match=r"mixes formats \(csv, parquet\)"):
        read_table(table_cfg(root, interactions="shards"))


def _png(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (200, 10, 10)).save(path)


@pytest.mark.parametrize("bad", ["../outside.png", "/etc/passwd", "a/../../x.png"])
def test_image_paths_must_stay_inside_images_dir(tmp_path: Path, bad: str) -> None:
    images = tmp_path / "raw" / "images"  # data.path is tmp_path/raw; the outputs go beside it, never inside
    _png(images / "posters" / "a.png")
    items = f"sku,name,img\nA,Shoe,posters/a.png\nB,Hat,{images / 'posters' / 'a.png'}\nC,Bag,{bad}\n"
    root = write_table(tmp_path, f"uid,sku,ts\nu,A,{T0}\n", items=items)
    item_columns = TableItemColumns(id="sku", text=["name"], image="img")
    with pytest.raises(DataFormatError, match=rf"items.csv: row 3: image path '{bad}' leaves data.images_dir"):
        read_table(table_cfg(root, images, item_columns=item_columns))


def test_image_urls_and_relative_paths_through_prepare_and_download(tmp_path: Path) -> None:
    server = Loopback()  # the downloader tests' 127.0.0.1 server: no internet
    try:
        server.add("/b.jpg", jpeg())
        _image_urls_through_prepare_and_download(tmp_path, server.url)
    finally:
        server.close()


def _image_urls_through_prepare_and_download(tmp_path: Path, base_url: str) -> None:
    images = tmp_path / "raw" / "images"  # data.path is tmp_path/raw; the outputs go beside it, never inside
    _png(images / "posters" / "a.png")
    items = f"sku,name,img\nA,Shoe,posters/a.png\nB,Hat,{base_url}/b.jpg\nC,Bag,\nD,Cap,ftp://x/d.png\n"
    events = "uid,sku,ts\n" + "".join(f"u{u},{s},{T0 + i}\n" for u in range(3) for i, s in enumerate("ABC"))
    root = write_table(tmp_path / "raw", events, items=items)
    item_columns = TableItemColumns(id="sku", text=["name"], image="img")
    cfg = table_cfg(root, images, item_columns=item_columns)
    with pytest.raises(DataFormatError, match=r"items.csv: row 4: image 'ftp://x/d.png' is a URL that is not http"):
        read_table(cfg)
    (root / "items.csv").write_text(items.replace("D,Cap,ftp://x/d.png\n", ""))
    stats = prepare(cfg, tmp_path / "out")
    assert {k: stats["images"][k] for k in ("present", "missing", "rejected_outside_root")} == {
        "present": 1,
        "missing": 2,
        "rejected_outside_root": 0,
    }  # prepare never goes online: the URL's image is missing until `stages.download table`
    with pytest.raises(DownloadError, match="stages.download table fetches"):
        download_table_images(dataclasses.replace(cfg, images_dir=None), FetchOptions(timeout=1, retries=0), 1)
    summary = download_table_images(cfg, FetchOptions(timeout=5, retries=0), 1, progress=False)
    assert summary.without_url == 2 and summary.failed == 0
    assert (images / "B.jpg").is_file() and (images / "manifest.json").is_file()
    stats = prepare(cfg, tmp_path / "out")
    assert (stats["images"]["present"], stats["images"]["missing"]) == (2, 1)
    prepared = pl.read_parquet(tmp_path / "out" / "items.parquet").sort("item_id")
    assert prepared["image_path"].to_list() == [str(images / "posters" / "a.png"), str(images / "B.jpg"), None]


def test_table_section_must_keep_defaults_for_other_sources() -> None:
    changed = dataclasses.replace(TABLE_CFG, source="ml1m_recbole", table=TableConfig(interactions="events.parquet"))
    with pytest.raises(ConfigError, match=r"`data.table` is read only by data.source: table"):
        validate_config(changed)
