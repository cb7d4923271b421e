"""Bad input, fourth campaign: what a researcher feeding their own files or options hits. Each case used to end in a
misleading line, an "unexpected" polars error or a silently wrong result; now it is one line naming the file (or
key, or option) and the fix."""

from __future__ import annotations

import dataclasses
import gzip
import json
import re
from pathlib import Path

import polars as pl
import pytest
import yaml
from typer.testing import CliRunner

from pipeline.cli import error_line
from pipeline.config import ConfigError, DataConfig, TableItemColumns, load_section
from pipeline.data.prepare import prepare
from pipeline.data.readers.movielens import read_movielens
from pipeline.data.readers.recbole import read_recbole
from pipeline.data.readers.table import read_table
from pipeline.data.schema import DataFormatError
from stages.recommend import app as recommend_app
from tests.helpers.data import (
    RECBOLE_CFG,
    RECBOLE_INTER,
    RECBOLE_ITEM,
    T0,
    recbole_cfg,
    table_cfg,
    write_recbole,
    write_table,
)
from tests.helpers.dvc_project import params_with
from tests.helpers.loopback import jpeg
from tests.helpers.projects import RECOMMEND, query_args, recommend_args, write_project

# ----------------------------------------------------------------------------------------------------------------
# 1. A `::`- or tab-separated text file (GroupLens .dat, the posters' movies.dat, RecBole atomic files) that is
#    UTF-16 or compressed


TITLES = ["Toy Story (1995)", "Heat (1995)", "Sabrina (1995)"]


def _ml1m_with_posters(root: Path) -> DataConfig:
    """RecBole ML-1M atomic files (item id = title) and a posters folder (images/1.jpg, movies.dat) under root."""
    (root / "ml-1m").mkdir(parents=True)
    inter = ["user_id:token\titem_id:token\trating:float\ttimestamp:float"]
    inter += [f"{u}\t{t}\t4\t{978300000 + 100 * u + k}" for u in range(1, 5) for k, t in enumerate(TITLES)]
    items = ["item_id:token\tmovie_title:token\trelease_year:float\tgenre:token"]
    items += [f"{t}\t{t[:-7]}\t{t[-5:-1]}\tDrama" for t in TITLES]
    (root / "ml-1m" / "ml-1m.inter").write_text("\n".join(inter) + "\n", encoding="utf-8")
    (root / "ml-1m" / "ml-1m.item").write_text("\n".join(items) + "\n", encoding="utf-8")
    (root / "posters" / "images").mkdir(parents=True)
    (root / "posters" / "images" / "1.jpg").write_bytes(jpeg())
    movies = "".join(f"{i}::{t}::Drama\n" for i, t in enumerate(TITLES, start=1))
    (root / "posters" / "movies.dat").write_text(movies, encoding="utf-8")
    cfg = dataclasses.replace(RECBOLE_CFG, source="ml1m_recbole", user_core=3, path=str(root / "ml-1m"))
    return dataclasses.replace(cfg, posters_dir=str(root / "posters"))


def _utf16(path: Path) -> None:
    path.write_bytes(path.read_bytes().decode("utf-8").encode("utf-16"))


def _gzip(path: Path) -> None:
    path.write_bytes(gzip.compress(path.read_bytes()))


@pytest.mark.parametrize(
    ("change", "what"),
    [(_utf16, r"UTF-16 text, not UTF-8 text\. Fix: save it as UTF-8"), (_gzip, r"gzip-compressed, .* \(gunzip\)")],
)
def test_posters_movies_dat_saved_as_utf16_or_gzipped_says_what_it_is(tmp_path: Path, change, what: str) -> None:  # noqa: ANN001
    # Notepad's "Unicode" (or a .dat left gzipped) used to be "movies.dat:1: expected 3 fields separated by '::'
    # (MovieID::Title::Genres), found 1: 'ÿþ1\x00:\x00:\x00T\x00o\x00y...'": a ragged line of binary garbage
    cfg = _ml1m_with_posters(tmp_path)
    posters = tmp_path / "posters"
    change(posters / "movies.dat")
    with pytest.raises(DataFormatError) as info:
        prepare(cfg, tmp_path / "out")
    message = str(info.value)
    assert re.match(rf"^{re.escape(str(posters / 'movies.dat'))}: {what}", message), message
    assert "\\x00" not in message and "fields" not in message and "data.posters_dir must hold" in message
    assert not (tmp_path / "out").exists()


def test_grouplens_ratings_dat_and_recbole_inter_saved_as_utf16_say_so(tmp_path: Path, tiny_ml1m_dir: Path) -> None:
    # ratings.dat used to be a ragged line of garbage; a RecBole .inter "not valid utf-8 (byte b'\xff' at offset 0)"
    _utf16(tiny_ml1m_dir / "ratings.dat")
    cfg = dataclasses.replace(RECBOLE_CFG, source="movielens", path=str(tiny_ml1m_dir))
    with pytest.raises(DataFormatError, match=r"ratings.dat: UTF-16 text, not UTF-8 text\. Fix: save it as UTF-8"):
        read_movielens(cfg)
    root = write_recbole(tmp_path / "d", "d", RECBOLE_INTER, RECBOLE_ITEM)
    _utf16(root / "d.inter")
    with pytest.raises(DataFormatError, match=r"d.inter: UTF-16 text, not UTF-8 text\. Fix: save it as UTF-8"):
        read_recbole(recbole_cfg(root))


# ----------------------------------------------------------------------------------------------------------------
# 2. A text field listed twice in the params


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("recbole.text_fields", ["title", "genre", "title"], "lists 'title' twice; list each field once"),
        ("table.item_columns.text", ["name", "name"], "lists 'name' twice; list each column once"),
    ],
)
def test_a_text_field_listed_twice_is_refused_at_load(tmp_path: Path, key: str, value: list, message: str) -> None:
    # used to pass the load and stop prepare with "error: DuplicateError: projections contained duplicate output
    # name 'title'. It's possible that ... (unexpected; rerun with MMREC_DEBUG=1 for the traceback)", naming no key
    path = params_with(tmp_path, "data", key, value)
    with pytest.raises(ConfigError) as info:
        load_section(DataConfig, "data", path)
    assert str(info.value) == f"{path}: `data.{key}` = {value!r} {message}"


def test_a_text_field_listed_twice_no_longer_reaches_polars(tmp_path: Path) -> None:
    # the readers, given such a config built in Python, say the same instead of polars' DuplicateError
    root = write_recbole(tmp_path / "d", "d", RECBOLE_INTER, RECBOLE_ITEM)
    with pytest.raises(ConfigError, match=r"^`data.recbole.text_fields` = \['title', 'title'\] lists 'title' twice"):
        read_recbole(recbole_cfg(root, text_fields=["title", "title"]))
    events = "".join(f"u{u},{sku},{T0 + 60 * k}\n" for u in range(3) for k, sku in enumerate("ABC"))
    cfg = table_cfg(write_table(tmp_path / "shop", "uid,sku,ts\n" + events))
    cfg = dataclasses.replace(
        cfg, table=dataclasses.replace(cfg.table, item_columns=TableItemColumns("sku", ["name"] * 2))
    )
    with pytest.raises(ConfigError, match=r"^`data.table.item_columns.text` = \['name', 'name'\] lists 'name' twice"):
        read_table(cfg)


# ----------------------------------------------------------------------------------------------------------------
# 3. A table whose header names a mapped column twice


@pytest.mark.parametrize(
    ("events", "items", "column", "key"),
    [
        ("uid,sku,ts,sku\n{rows_sku}", None, "sku", "data.table.columns.item"),
        ("uid,sku,ts\n{rows}", "sku,name,brand,name\nA,Red Shoe,Nike,x\nB,Blue Hat,,y\nC,Bag,Acme,z\n", "name",
         "data.table.item_columns.text"),
    ],
)  # fmt: skip
def test_a_csv_header_naming_a_mapped_column_twice_is_an_error(
    tmp_path: Path, events: str, items: str | None, column: str, key: str
) -> None:
    # polars renames the second `sku` to `sku_duplicated_0`: the interactions silently took the first column (and an
    # item table repeating `name` silently took its first `name` as the title)
    rows = [(f"u{u}", sku, T0 + 60 * k) for u in range(3) for k, sku in enumerate("ABC")]
    text = events.format(
        rows="".join(f"{u},{s},{t}\n" for u, s, t in rows), rows_sku="".join(f"{u},{s},{t},X\n" for u, s, t in rows)
    )
    root = write_table(tmp_path / "shop", text, *([items] if items else []))
    cfg = dataclasses.replace(table_cfg(root), user_core=1, item_core=1)
    path = root / ("items.csv" if items else "events.csv")
    with pytest.raises(DataFormatError) as info:
        read_table(cfg)
    assert str(info.value) == (
        f"{path}: the header names column {column!r} (`{key}`) more than once, so which one is meant is unclear. "
        f"Fix: rename or remove the other {column!r} column(s)"
    )


def test_a_missing_column_lists_the_file_columns_only(tmp_path: Path) -> None:
    # the list of columns used to show the reader's own row counter `_frow` first for an item table
    events = "".join(f"u{u},{sku},{T0 + 60 * k}\n" for u in range(3) for k, sku in enumerate("ABC"))
    root = write_table(tmp_path / "shop", "uid,sku,ts\n" + events, "sku,title\nA,x\nB,y\nC,z\n")
    with pytest.raises(DataFormatError, match=r"items.csv: no column 'name' .*; columns: sku, title\. Fix: set"):
        read_table(table_cfg(root))


# ----------------------------------------------------------------------------------------------------------------
# 4. Empty separators


def test_empty_recbole_seq_separator_is_refused_at_load(tmp_path: Path) -> None:
    # `seq_separator: ""` used to be accepted: every token_seq split into single characters ("Beauty Skin_Care" ->
    # genres B, e, a, u, ...), or a float_seq reported as "not a list of numbers" at a line that was fine
    path = params_with(tmp_path, "data", "recbole.seq_separator", "")
    with pytest.raises(ConfigError) as info:
        load_section(DataConfig, "data", path)
    assert str(info.value) == (
        f"{path}: `data.recbole.seq_separator` = '' must not be empty: it separates the values of a token_seq or "
        'float_seq field (RecBole\'s default is one space: seq_separator: " ")'
    )
    root = write_recbole(tmp_path / "d", "d", RECBOLE_INTER, [line.rsplit("\t", 1)[0] for line in RECBOLE_ITEM])
    with pytest.raises(ConfigError, match=r"^`data.recbole.seq_separator` = '' must not be empty"):
        read_recbole(recbole_cfg(root, seq_separator=""))


def _exported_project(tmp_path: Path) -> dict[str, Path]:
    """write_project's tiny project with its index exported by the recommend stage, for `query` calls."""
    params, prepared, models = write_project(tmp_path)
    params.write_text(yaml.safe_dump(yaml.safe_load(params.read_text()) | {"recommend": dict(RECOMMEND)}))
    p = {"params": params, "prepared": prepared, "models": models, "features": tmp_path / "features"}
    p["out"] = tmp_path / "recommendations"
    assert CliRunner().invoke(recommend_app, recommend_args(p)).exit_code == 0
    return p


def test_recommend_query_with_an_empty_sep_names_the_option(tmp_path: Path) -> None:
    # was "error: empty separator" (Python's str.split), naming neither --sep nor a fix
    p = _exported_project(tmp_path)
    result = CliRunner().invoke(recommend_app, [*query_args(p), "--history", "m3,m4", "--sep", ""])
    assert result.exit_code == 1 and result.stderr.strip().splitlines() == [
        "error: --sep is empty; it separates the item ids of --history. Fix: pass the character between them, "
        "e.g. --sep ',' (the default)"
    ]


# ----------------------------------------------------------------------------------------------------------------
# 5. RecBole fields named like the reader's own columns


@pytest.mark.parametrize("name", ["line", "row"])
def test_recbole_field_named_line_or_row_is_a_header_error(tmp_path: Path, name: str) -> None:
    # a `row:token` (or `line:float`) field used to end in "error: DuplicateError: projections contained duplicate
    # output name 'row'. ... (unexpected; ...)"
    inter = [f"user_id:token\titem_id:token\ttimestamp:float\t{name}:token", "u\ta\t1\tx", "u\tb\t2\ty"]
    root = write_recbole(tmp_path / "d", "d", inter)
    with pytest.raises(DataFormatError) as info:
        read_recbole(recbole_cfg(root))
    line = error_line(info.value)
    assert line.startswith(
        f"error: {root / 'd.inter'}:1: bad header: field `{name}` has a name the reader keeps for its own "
        f"bookkeeping (line, row): "
    ), line
    assert f"Fix: rename the field in the header (e.g. `{name}_id:token`)" in line and "unexpected" not in line


# ----------------------------------------------------------------------------------------------------------------
# 6. RecBole ids written with surrounding spaces


def test_recbole_ids_padded_with_spaces_match_in_inter_and_item(tmp_path: Path) -> None:
    # `.item` ids were stripped but `.inter` ids were not, so "a " in both files never matched: every interaction
    # was dropped as unknown_item and prepare said "lower data.user_core / data.item_core or data.min_rating"
    inter = ["user_id:token\titem_id:token\ttimestamp:float"]
    inter += [f" u{u}\t{i} \t{100 + 10 * u + k}" for u in range(4) for k, i in enumerate("abcd")]
    root = write_recbole(tmp_path / "d", "d", inter, ["item_id:token\ttitle:token"] + [f"{i} \tT{i}" for i in "abcd"])
    stats = prepare(dataclasses.replace(recbole_cfg(root), user_core=3), tmp_path / "out")
    assert stats["dropped"]["unknown_item"] == 0 and stats["users"] == 4 and stats["items"] == 4


# ----------------------------------------------------------------------------------------------------------------
# 7. A --history that covers (nearly) the whole catalogue


def test_recommend_query_with_every_item_in_the_history_says_nothing_is_left(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # printed an empty table and exited 0: the history is excluded, so nothing was left, and nothing said so
    p = _exported_project(tmp_path)
    every = pl.read_parquet(p["prepared"] / "items.parquet")["item_id"].to_list()
    result = CliRunner().invoke(recommend_app, [*query_args(p), "--history", ",".join(every)])
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        f"error: the history holds all {len(every)} items of the index, and a history is never recommended back: "
        "nothing is left to recommend. Fix: pass a shorter history (the most recent items)"
    ]
    fewer = [*query_args(p), "--history", ",".join(every[:-2]), "--k", "5", "--json"]
    result = CliRunner().invoke(recommend_app, fewer)
    assert result.exit_code == 0 and sorted(r["item_id"] for r in json.loads(result.stdout)) == sorted(every[-2:])
    assert "only 2 item(s) are not in the history: 2 result(s) instead of --k 5" in caplog.text
