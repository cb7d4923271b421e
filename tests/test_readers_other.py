"""H&M, MicroLens and MovieLens 100K / 20M+ readers on fixtures in the real formats (tests/fixtures/real_formats)."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import polars as pl
import pytest

from pipeline.config import DataConfig
from pipeline.data.readers import READERS
from pipeline.data.readers.hm import read_hm
from pipeline.data.readers.microlens import read_microlens
from pipeline.data.readers.movielens_family import read_movielens100k, read_movielens_csv, read_movielens_family
from pipeline.data.schema import INTERACTION_SCHEMA, ITEM_REQUIRED_COLUMNS, DataFormatError

FIXTURES = Path(__file__).parent / "fixtures" / "real_formats"
CFG = DataConfig(
    source="hm", path=None, images_dir=None, min_rating=None, user_core=3, item_core=1,
    dedupe="user_item", max_seq_len=50, cold_start_fraction=0.0, seed=0,
)  # fmt: skip


def cfg(source: str, path: Path, **kw: object) -> DataConfig:
    return dataclasses.replace(CFG, source=source, path=str(path), **kw)


def collect(raw) -> pl.DataFrame:
    inter = raw.interactions.collect()
    assert dict(inter.schema) == INTERACTION_SCHEMA
    assert inter.select(pl.col("user_id", "item_id", "timestamp", "row").null_count().sum()).row(0) == (0, 0, 0, 0)
    assert inter["row"].is_unique().all() and inter["row"].is_sorted()
    for name, dtype in ITEM_REQUIRED_COLUMNS.items():
        assert raw.items.schema[name] == dtype, name
    assert raw.items["item_id"].is_unique().all()
    return inter


def data_lines(path: Path) -> int:
    return len([line for line in path.read_text(encoding="latin-1").splitlines() if line.strip()])


# ----------------------------------------------------------------------------------------------------------------
# H&M


def test_hm_fixture():
    raw = read_hm(cfg("hm", FIXTURES / "hm"))
    inter = collect(raw)
    assert dict(raw.drops) == {"missing_user": 1, "bad_timestamp": 1}
    assert inter.height + 2 == data_lines(FIXTURES / "hm" / "transactions_train.csv") - 1  # minus the header
    assert inter["item_id"].str.len_chars().eq(10).all()
    # the row written without its leading zero matches the article
    assert inter.filter(pl.col("row") == 24)["item_id"].item() == "0108775044"
    assert "0999999999" in inter["item_id"].to_list()  # unknown article: left for prepare (unknown_item)
    assert (inter["timestamp"] % 86_400 == 0).all() and inter["timestamp"].min() == 1_537_401_600  # 2018-09-20
    assert any("day resolution" in n for n in raw.notes)
    first = raw.items.row(0, named=True)
    assert first["item_id"] == "0108775015"
    assert first["text"] == (
        "Strap top 0. Vest top. Black Solid. Section: Womens Everyday Basics. Garment: Jersey Basic. "
        'Jersey top with narrow shoulder straps, "soft" feel'
    )
    assert raw.items.filter(pl.col("item_id") == "0111565001")["text"].item().endswith("Garment: Jersey Basic")
    assert Path(first["image_ref"]).is_file() and first["image_ref"].endswith("images/010/0108775015.jpg")


def test_hm_image_ref_is_relative_to_images_dir():
    images = FIXTURES / "hm" / "images"
    raw = read_hm(cfg("hm", FIXTURES / "hm", images_dir=str(images)))
    refs = raw.items["image_ref"].to_list()
    assert refs[0] == "010/0108775015.jpg" and (images / refs[0]).is_file()
    assert not (images / refs[-1]).exists()  # the last article has no image: prepare counts it as missing


def test_hm_missing_column(tmp_path):
    shutil.copy(FIXTURES / "hm" / "articles.csv", tmp_path)
    (tmp_path / "transactions_train.csv").write_text("t_dat,customer,article_id\n2018-09-20,a,0108775015\n")
    with pytest.raises(DataFormatError, match=r"missing column\(s\) customer_id"):
        read_hm(cfg("hm", tmp_path))


# ----------------------------------------------------------------------------------------------------------------
# MicroLens


def test_microlens_fixture():
    raw = read_microlens(cfg("microlens", FIXTURES / "microlens"))
    inter = collect(raw)
    assert dict(raw.drops) == {"missing_item": 1}
    assert inter.height == data_lines(FIXTURES / "microlens" / "MicroLens-100k_pairs.csv") - 2
    assert inter.filter(pl.col("row") == 0)["timestamp"].item() == 1_583_089_438  # ms -> s
    assert any("milliseconds" in n for n in raw.notes)
    by_id = {r["item_id"]: r for r in raw.items.iter_rows(named=True)}
    assert by_id["5"]["text"] == "Funny cat video 5, part 2 😺"  # unquoted commas stay in the title
    assert Path(by_id["1"]["image_ref"]).is_file()
    assert not Path(by_id["12"]["image_ref"]).exists()


@pytest.mark.parametrize("header", ["userID,videoID,timestamp\n", ""])
def test_microlens_header_variants_and_quoted_titles(tmp_path, header):
    (tmp_path / "MicroLens-50k_pairs.csv").write_text(header + "7,1,1583079438000\n7,2,1583079439000\n")
    (tmp_path / "MicroLens-50k_titles.csv").write_text('item,title\n1,"A ""quoted"", title"\n2,plain\n2,again\n')
    raw = read_microlens(cfg("microlens", tmp_path))
    inter = collect(raw)
    assert inter["item_id"].to_list() == ["1", "2"] and inter["timestamp"].to_list() == [1583079438, 1583079439]
    assert raw.items["text"].to_list() == ['A "quoted", title', "plain"]
    assert raw.items["image_ref"].null_count() == 2
    assert any("1 repeated item id(s) skipped" in n for n in raw.notes)
    assert any("set data.images_dir" in n for n in raw.notes)


# ----------------------------------------------------------------------------------------------------------------
# MovieLens 100K and 20M+


def test_movielens100k_fixture():
    raw = read_movielens100k(cfg("movielens100k", FIXTURES / "ml-100k"))
    inter = collect(raw)
    assert dict(raw.drops) == {"bad_timestamp": 1}
    assert inter.height == data_lines(FIXTURES / "ml-100k" / "u.data") - 1
    assert inter["rating"].to_list()[:2] == [2.0, 3.0]
    by_id = {r["item_id"]: r for r in raw.items.iter_rows(named=True)}
    assert by_id["1"]["text"] == "Toy Story (1995). Genres: Animation, Children's, Comedy"
    assert by_id["4"]["title"] == "Misérables, Les" and by_id["4"]["year"] == 1995  # latin-1 decoded
    assert by_id["5"]["title"] == "Shanghai Triad (Yao a yao yao dao waipo qiao)"
    assert raw.items["image_ref"].null_count() == raw.items.height


def test_movielens_csv_fixture():
    raw = read_movielens_csv(cfg("movielens_csv", FIXTURES / "ml-25m"))
    inter = collect(raw)
    assert dict(raw.drops) == {"missing_timestamp": 1}
    assert "424242" in inter["item_id"].to_list()  # not in movies.csv: prepare drops it as unknown_item
    by_id = {r["item_id"]: r for r in raw.items.iter_rows(named=True)}
    assert by_id["11"]["text"] == "American President, The (1995). Genres: Comedy, Drama, Romance"
    assert by_id["131262"]["genres"] == [] and by_id["131262"]["text"] == "Innocence (2014)"
    assert by_id["209171"]["title"] == "Amélie (Fabuleux destin d'Amélie Poulain, Le)"


def test_movielens_csv_movies_without_id_and_repeated_ids_are_counted_apart(tmp_path):
    shutil.copytree(FIXTURES / "ml-25m", tmp_path / "ml", dirs_exist_ok=True)
    movies = tmp_path / "ml" / "movies.csv"
    lines = movies.read_text(encoding="utf-8").splitlines()
    first = lines[1]
    movies.write_text("\n".join([*lines, first, ',"No Id (1999)",Drama', ' ,"Blank Id (1999)",Drama']) + "\n")
    raw = read_movielens_csv(cfg("movielens_csv", tmp_path / "ml"))
    assert raw.items.height == len(lines) - 1  # the fixture's movies, each once
    note = next(n for n in raw.notes if n.startswith("movies.csv:"))
    assert "2 record(s) without an item id skipped" in note and "1 repeated item id(s) skipped (first kept)" in note


def test_movielens_csv_ratings_that_are_not_numbers_are_counted_in_a_note(tmp_path, monkeypatch):
    from pipeline.data.prepare import prepare

    shutil.copytree(FIXTURES / "ml-25m", tmp_path / "ml", dirs_exist_ok=True)
    ratings = tmp_path / "ml" / "ratings.csv"
    lines = ratings.read_text(encoding="utf-8").splitlines()
    lines[1] = lines[1].replace(",1.0,", ",four stars,")  # user 1, movie 1
    lines[2] = lines[2].replace(",1.5,", ", N/A ,")
    ratings.write_text("\n".join(lines) + "\n")
    raw = read_movielens_csv(cfg("movielens_csv", tmp_path / "ml"))
    note = next(n for n in raw.notes if "not a number" in n)
    assert note.startswith("movielens_csv: 2 kept interaction(s)") and "'four stars'" in note
    unchanged = read_movielens_csv(cfg("movielens_csv", FIXTURES / "ml-25m"))
    assert collect(raw).height == collect(unchanged).height  # all kept: without min_rating the rating is unused

    monkeypatch.setitem(READERS, "movielens_csv", read_movielens_csv)
    stats = prepare(cfg("movielens_csv", tmp_path / "ml", min_rating=0.5), tmp_path / "out")
    assert stats["dropped"]["min_rating"] == 2  # unrated fails data.min_rating, as the note says
    assert any("not a number" in n for n in stats["notes"])


def test_movielens_family_dispatch(tmp_path):
    assert read_movielens_family(cfg("m", FIXTURES / "ml-100k")).source_files[0].name == "u.data"
    assert read_movielens_family(cfg("m", FIXTURES / "ml-25m")).source_files[0].name == "ratings.csv"
    with pytest.raises(DataFormatError, match="holds no MovieLens ratings"):
        read_movielens_family(cfg("m", tmp_path))


def test_movielens_csv_through_prepare(tmp_path, monkeypatch):
    from pipeline.data.prepare import prepare

    monkeypatch.setitem(READERS, "movielens_csv", read_movielens_csv)
    (tmp_path / "posters").mkdir()  # real images wanted, none present: all counted missing (no title cards)
    stats = prepare(cfg("movielens_csv", FIXTURES / "ml-25m", images_dir=str(tmp_path / "posters")), tmp_path / "out")
    assert stats["dropped"]["missing_timestamp"] == 1 and stats["dropped"]["unknown_item"] == 1
    assert stats["users"] == 4 and stats["interactions"] == 20
