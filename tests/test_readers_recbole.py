"""The generic RecBole atomic-files reader (``data.source: recbole``) and the ML-1M default built on it."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import polars as pl
import pytest

from pipeline.config import ConfigError, RecboleConfig
from pipeline.data.prepare import prepare, validate_config
from pipeline.data.readers import get_reader
from pipeline.data.readers.movielens import read_ml1m_recbole, recbole_ml1m_dir
from pipeline.data.readers.recbole import read_recbole
from pipeline.data.schema import INTERACTION_SCHEMA, DataFormatError
from tests.helpers.data import RECBOLE_CFG, RECBOLE_INTER, RECBOLE_ITEM, recbole_cfg, write_recbole


def test_reads_any_dataset_name_extra_fields_and_float_timestamps(tmp_path: Path) -> None:
    root = write_recbole(tmp_path / "Beauty", "Beauty", RECBOLE_INTER, RECBOLE_ITEM, extra=("user", "kg"))
    raw = get_reader("recbole")(recbole_cfg(root))  # the data set name defaults to the folder's
    df = raw.interactions.collect()
    assert df.schema == pl.Schema(INTERACTION_SCHEMA)
    assert df.rows() == [
        ("u1", "B01", 1588687728, 5.0, 0),
        ("u1", "B02", 1588687729, 4.0, 1),
        ("u2", "B01", 1588687730, 3.0, 2),  # 0.75 s floored
    ]
    assert raw.drops == {"blank_line": 1, "bad_timestamp": 1}
    notes = " ".join(raw.notes)
    assert "1 timestamps had a fraction of a second and were floored" in notes
    assert "Beauty.user, Beauty.kg not read" in notes
    items = raw.items.sort("item_id")
    assert items["text"].to_list() == [
        "Lip Balm. Categories: Beauty, Skin_Care. Brand: Maison",
        "Hand Cream. Categories: Beauty",
        "Soap. Brand: Savon",
    ]
    assert items["title"].to_list() == ["Lip Balm", "Hand Cream", "Soap"]
    # typed attributes, by RecBole type; `title` is a reserved name (the title column), noted
    assert items.schema["categories"] == pl.List(pl.String) and items["categories"][2].to_list() == []
    assert items["price"].to_list() == [3.5, None, 2.0]
    assert items["embedding"].to_list() == [[0.1, 0.2], [], [1.0]]
    assert "field(s) title not kept as item attributes" in notes
    assert [p.name for p in raw.source_files] == ["Beauty.inter", "Beauty.item"]


def test_text_fields_order_and_labels(tmp_path: Path) -> None:
    root = write_recbole(tmp_path / "d", "Beauty", RECBOLE_INTER, RECBOLE_ITEM)
    raw = read_recbole(
        recbole_cfg(
            root, dataset="Beauty", text_fields=["title", "price", "categories"], text_labels={"categories": "Genres"}
        )
    )
    text = dict(raw.items.select("item_id", "text").iter_rows())
    assert text["B01"] == "Lip Balm. Price: 3.5. Genres: Beauty, Skin_Care"
    assert text["B03"] == "Soap. Price: 2"  # an integral float without ".0"; an empty list is skipped
    with pytest.raises(ConfigError, match=r"text_fields.*'nope'.*fields: item_id, title"):
        read_recbole(recbole_cfg(root, dataset="Beauty", text_fields=["nope"]))
    with pytest.raises(ConfigError, match=r"text_labels.*'brand'.*not one of the text fields"):
        read_recbole(recbole_cfg(root, dataset="Beauty", text_fields=["title"], text_labels={"brand": "Brand"}))


def test_overridden_field_names_and_no_rating(tmp_path: Path) -> None:
    inter = ["uid:token\tiid:token\tts:float", "a\tx\t1000", "a\ty\t1000000000000"]
    root = write_recbole(
        tmp_path / "d", "mine", inter, ["iid:token\tgenre_list:token_seq", "x\tDrama Comedy", "y\tWar"]
    )
    raw = read_recbole(recbole_cfg(root, dataset="mine", user_field="uid", item_field="iid", timestamp_field="ts"))
    df = raw.interactions.collect()
    assert df["timestamp"].to_list() == [1000, 1000000000]  # milliseconds detected by magnitude
    assert df["rating"].null_count() == 2  # no `rating` field: null
    assert "1 timestamps were in milliseconds" in " ".join(raw.notes)
    assert dict(raw.items.select("item_id", "text").iter_rows()) == {"x": "Drama, Comedy", "y": "War"}


def test_missing_item_file_is_a_note_and_items_come_from_interactions(tmp_path: Path) -> None:
    root = write_recbole(tmp_path / "d", "d", RECBOLE_INTER[:3])
    raw = read_recbole(recbole_cfg(root))
    assert raw.items["item_id"].to_list() == ["B01", "B02"]
    assert raw.items["text"].to_list() == ["", ""]
    assert "d.item not found" in " ".join(raw.notes)
    assert [p.name for p in raw.source_files] == ["d.inter"]


def test_missing_timestamps_error_or_file_order(tmp_path: Path) -> None:
    root = write_recbole(tmp_path / "d", "d", ["user_id:token\titem_id:token", "u\ta", "u\tb", "v\ta"])
    with pytest.raises(
        DataFormatError,
        match=r"d.inter:1: no timestamp field `timestamp` \(data.recbole.timestamp_"
        r"field\).*Fix: set data.recbole.timestamp_field .* or to null",
    ):
        read_recbole(recbole_cfg(root))
    raw = read_recbole(recbole_cfg(root, timestamp_field=None))
    assert raw.interactions.collect()["timestamp"].to_list() == [1, 2, 3]
    assert "NO TIMESTAMPS" in raw.notes[1]


@pytest.mark.parametrize(
    ("inter", "item", "match"),
    [
        (["user_id\titem_id:token\ttimestamp:float", "u\ta\t1"], None, r"d.inter:1: bad header: field 'user_id'"),
        (["user_id:token\titem_id:str\ttimestamp:float", "u\ta\t1"], None, r"type one of token, token_seq"),
        (["uid:token\titem_id:token\ttimestamp:float", "u\ta\t1"], None, r"no field `user_id` \(data.recbole.user_"),
        (RECBOLE_INTER[:2] + ["5\tu1\ts1\tB01"], None, r"d.inter:3: expected 5 fields"),
        (RECBOLE_INTER[:2] + ["5\tu1\ts1\tB01\tnoon"], None, r"d.inter:3: not a number in field `timestamp`"),
        (RECBOLE_INTER[:2] + ["five\tu1\ts1\tB01\t1"], None, r"d.inter:3: not a number in field `rating`"),
        (RECBOLE_INTER[:2] + ["5\t \ts1\tB01\t1"], None, r"d.inter:3: empty field `user_id`"),
        (
            RECBOLE_INTER[:2],
            [*RECBOLE_ITEM[:2], "B01\tx\t\t\t\t"],
            r"d.item:3: item id 'B01' already defined on line 2",
        ),
        (RECBOLE_INTER[:2], [*RECBOLE_ITEM[:2], "B02\tx\t\tcheap\t\t"], r"d.item:3: not a number in field `price`"),
        (
            RECBOLE_INTER[:2],
            [*RECBOLE_ITEM[:2], "B02\tx\t\t\t\t1 two"],
            r"d.item:3: not a list of numbers in field `embedding`",
        ),
        (RECBOLE_INTER[:2], ["title:token", "x"], r"d.item:1: bad header: no field `item_id`"),
    ],
)
def test_bad_files_name_file_line_field_and_fix(
    tmp_path: Path, inter: list[str], item: list[str] | None, match: str
) -> None:
    root = write_recbole(tmp_path / "d", "d", inter, item)
    with pytest.raises(DataFormatError, match=match) as err:
        read_recbole(recbole_cfg(root))
    assert "Fix:" in str(err.value)


def test_dataset_name_and_path_errors(tmp_path: Path) -> None:
    root = write_recbole(tmp_path / "folder", "Beauty", RECBOLE_INTER, RECBOLE_ITEM)
    with pytest.raises(
        DataFormatError,
        match=r"no folder.inter .* found Beauty.inter: set data.recbole.dataset to "
        "'Beauty'",
    ):
        read_recbole(recbole_cfg(root))
    with pytest.raises(DataFormatError, match="needs data.path"):
        read_recbole(RECBOLE_CFG)
    with pytest.raises(ConfigError, match=r"`data.recbole.dataset` = '../folder/Beauty' must be a file name"):
        read_recbole(recbole_cfg(root, dataset="../folder/Beauty"))  # nothing is read outside data.path


def test_recbole_section_must_keep_defaults_for_other_sources() -> None:
    validate_config(dataclasses.replace(RECBOLE_CFG, source="ml1m_recbole", user_core=3))
    changed = dataclasses.replace(
        RECBOLE_CFG, source="ml1m_recbole", user_core=3, recbole=RecboleConfig(user_field="uid")
    )
    with pytest.raises(ConfigError, match=r"`data.recbole` is read only by data.source: recbole"):
        validate_config(changed)


def test_prepare_on_recbole_files(tmp_path: Path) -> None:
    inter = ["user_id:token\titem_id:token\ttimestamp:float"]
    inter += [f"u{u}\ti{(u + k) % 6}\t{1000 + 10 * k}" for u in range(8) for k in range(4)]
    item = ["item_id:token\tname:token\tgenre:token_seq"] + [f"i{i}\tThing {i}\tA B" for i in range(6)]
    root = write_recbole(tmp_path / "toys", "toys", inter, item)
    stats = prepare(dataclasses.replace(recbole_cfg(root), user_core=3), tmp_path / "out")
    assert stats["source"] == "recbole" and stats["interactions"] == 32 and stats["items"] == 6
    items = pl.read_parquet(tmp_path / "out" / "items.parquet")
    assert items["text"][0].startswith("Thing ") and items["text"][0].endswith(". Genre: A, B")


# ----------------------------------------------------------------------------------------------------------------
# The default source is this reader pointed at the wheel, with unchanged output.

# sha256 of the CSV of read_ml1m_recbole()'s interactions and items (list columns joined with "|"), computed with
# the ML-1M reader as it was before the generic reader existed (commit 5e3c458): the default's output is unchanged.
ML1M_INTERACTIONS_SHA256 = "1380180c1ff50cd13600f6429e401bde4ad419b06c5bf07f599f83060062ba9d"
ML1M_ITEMS_SHA256 = "65fd618ef2cc776d8aa3c0257bf628250c4f0e6d8bac272ee840bef72c6cab70"


def _fingerprint(df: pl.DataFrame) -> str:
    lists = [pl.col(c).cast(pl.List(pl.String)).list.join("|") for c, t in df.schema.items() if isinstance(t, pl.List)]
    return hashlib.sha256(df.with_columns(lists).write_csv().encode()).hexdigest()


def test_ml1m_default_output_is_unchanged_and_matches_the_generic_reader() -> None:
    raw = read_ml1m_recbole(dataclasses.replace(RECBOLE_CFG, source="ml1m_recbole"))
    interactions = raw.interactions.collect()
    assert _fingerprint(interactions) == ML1M_INTERACTIONS_SHA256
    assert _fingerprint(raw.items) == ML1M_ITEMS_SHA256
    generic = read_recbole(
        dataclasses.replace(RECBOLE_CFG, path=str(recbole_ml1m_dir(RECBOLE_CFG)))
    )  # dataset = folder = ml-1m
    assert generic.interactions.collect().equals(interactions)
    toy = generic.items.filter(pl.col("item_id") == "Toy Story (1995)").row(0, named=True)
    assert toy["text"] == "Toy Story. Genre: Animation Children's Comedy"  # ML-1M declares genre `token`
    assert toy["release_year"] == 1995.0
    assert "ml-1m.user not read" in " ".join(generic.notes)
