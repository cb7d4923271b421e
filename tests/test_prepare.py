"""The prepare step: dedupe, iterative k-core, tie-breaking, id mapping, stats, images and the typer stage."""

from __future__ import annotations

import dataclasses
import json
import random
from collections import Counter
from pathlib import Path

import polars as pl
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from pipeline.config import ConfigError
from pipeline.data import readers
from pipeline.data.images import attach_images, image_file_stem, title_card_png, write_title_cards
from pipeline.data.prepare import DROP_REASONS, dedupe, k_core, prepare, timestamp_tie_rate
from pipeline.data.schema import INTERACTION_SCHEMA, RawData
from stages.prepare import app
from tests.helpers.data import DATA_CFG


def frame(rows: list[tuple]) -> pl.DataFrame:
    """(user_id, item_id, timestamp[, rating]) tuples -> interactions; ``row`` = position in the list."""
    return pl.DataFrame(
        {
            "user_id": [r[0] for r in rows],
            "item_id": [r[1] for r in rows],
            "timestamp": [r[2] for r in rows],
            "rating": [r[3] if len(r) > 3 else None for r in rows],
            "row": list(range(len(rows))),
        },
        schema=INTERACTION_SCHEMA,
    )


def items_for(ids: list[str]) -> pl.DataFrame:
    return pl.DataFrame(
        {"item_id": ids, "text": [f"Movie {i}" for i in ids], "image_ref": [None] * len(ids)},
        schema={"item_id": pl.String, "text": pl.String, "image_ref": pl.String},
    )


@pytest.fixture
def handmade(monkeypatch: pytest.MonkeyPatch):
    """Register a reader named "handmade" that returns the RawData given to the returned setter."""
    holder: dict[str, RawData] = {}
    monkeypatch.setitem(readers.READERS, "handmade", lambda cfg: holder["raw"])

    def use(interactions: pl.DataFrame, items: pl.DataFrame, drops: Counter | None = None) -> None:
        holder["raw"] = RawData(interactions.lazy(), items, [Path("handmade")], drops or Counter())

    return use


# ----------------------------------------------------------------------------------------------------------------
# Cleaning steps


def test_dedupe_modes() -> None:
    df = frame(
        [
            ("u", "a", 20),  # row 0
            ("u", "a", 10),  # row 1: the earliest (u, a): kept by user_item
            ("u", "a", 20),  # row 2: identical to row 0: dropped by both modes
            ("u", "b", 5),
            ("v", "a", 20),
        ]
    )
    kept, dropped = dedupe(df, "user_item")
    assert dropped == 2
    assert sorted(kept["row"].to_list()) == [1, 3, 4]
    kept, dropped = dedupe(df, "exact")
    assert dropped == 1
    assert sorted(kept["row"].to_list()) == [0, 1, 3, 4]


def test_k_core_is_iterative() -> None:
    """u3 falls under 3 -> item x falls under 2 -> u2 falls under 3: three removal passes plus a stable one."""
    rows = [("u1", "a", 1), ("u1", "b", 2), ("u1", "c", 3)]
    rows += [("u2", "a", 1), ("u2", "b", 2), ("u2", "x", 3)]
    rows += [("u3", "x", 1), ("u3", "y", 2)]
    rows += [("u4", "a", 1), ("u4", "b", 2), ("u4", "c", 3)]
    kept, dropped, passes = k_core(frame(rows), user_core=3, item_core=2)
    assert sorted(set(kept["user_id"].to_list())) == ["u1", "u4"]
    assert sorted(set(kept["item_id"].to_list())) == ["a", "b", "c"]
    assert dropped == 5
    assert passes == 4


def test_timestamp_tie_rate_hand_computed() -> None:
    sequences = pl.DataFrame(
        {"user_idx": [0, 1], "timestamps": [[10, 10, 20, 30, 30, 30], [30, 30, 40]]},
        schema={"user_idx": pl.Int32, "timestamps": pl.List(pl.Int64)},
    )
    # user 0: 10=10, 30=30, 30=30 -> 3 ties; user 1: 30=30 -> 1 (its first 30 does not tie with user 0's last)
    assert timestamp_tie_rate(sequences) == pytest.approx(4 / 9)


# ----------------------------------------------------------------------------------------------------------------
# prepare() end to end on hand-built data


def rows_for_prepare() -> list[tuple]:
    return [
        ("alice", "m1", 100, 5.0),
        ("alice", "m2", 100, 4.0),  # tie with the previous one: ordered by row
        ("alice", "m3", 90, 3.0),
        ("alice", "m4", 300, 2.0),
        ("alice", "m2", 400, 4.0),  # alice re-rates m2: a user_item duplicate
        ("bob", "m3", 50, 5.0),
        ("bob", "m1", 60, 5.0),
        ("bob", "m4", 60, 2.0),
        ("bob", "m9", 70, 5.0),  # m9 has no metadata: unknown_item
        ("carol", "m1", 10, 5.0),  # carol keeps 2 items after min_rating=2 -> removed by the 3-core
        ("carol", "m2", 20, 1.0),
        ("carol", "m3", 30, 4.0),
    ]


def test_prepare_outputs_and_stats(tmp_path: Path, handmade) -> None:
    handmade(frame(rows_for_prepare()), items_for(["m1", "m2", "m3", "m4", "m5"]), Counter({"bad_line": 2}))
    out = tmp_path / "prepared"
    stats = prepare(dataclasses.replace(DATA_CFG, min_rating=2.0), out)

    items = pl.read_parquet(out / "items.parquet")
    seqs = pl.read_parquet(out / "sequences.parquet")
    # chronological first appearance: bob's m3 at t=50, then m1 (bob, t=60, row 6), m4 (t=60, row 7), then m2
    assert items["item_id"].to_list() == ["m3", "m1", "m4", "m2"]
    assert items["item_idx"].to_list() == [1, 2, 3, 4]  # contiguous, 0 reserved for padding
    assert items.schema["item_idx"] == pl.Int32
    assert items["text"].to_list() == ["Movie m3", "Movie m1", "Movie m4", "Movie m2"]
    assert items["image_path"].to_list() == [f"images/{i}.png" for i in range(1, 5)]  # under out/, whatever the cwd
    assert all((out / p).is_file() for p in items["image_path"])

    assert seqs["user_id"].to_list() == ["bob", "alice"]  # bob appears first (t=50)
    assert seqs["user_idx"].to_list() == [0, 1]
    assert seqs.schema["items"] == pl.List(pl.Int32) and seqs.schema["timestamps"] == pl.List(pl.Int64)
    assert seqs["items"].to_list() == [[1, 2, 3], [1, 2, 4, 3]]  # alice: m3@90, m1@100 (row 0), m2@100 (row 1), m4
    assert seqs["timestamps"].to_list() == [[50, 60, 60], [90, 100, 100, 300]]

    assert stats == json.loads((out / "stats.json").read_text())
    assert set(stats["dropped"]) == {"bad_line", *DROP_REASONS}
    assert stats["dropped"] == {"bad_line": 2, "unknown_item": 1, "min_rating": 1, "duplicate": 1, "kcore": 2}
    assert stats["input_rows"] == 14 == stats["interactions"] + sum(stats["dropped"].values())
    assert (stats["users"], stats["items"], stats["interactions"]) == (2, 4, 7)
    assert stats["density"] == pytest.approx(7 / 8)
    assert stats["timestamp_tie_rate"] == pytest.approx(2 / 7)
    assert stats["sequence_length"] == {
        "min": 3.0, "p25": 3.25, "p50": 3.5, "p75": 3.75, "p90": 3.9, "max": 4.0, "mean": 3.5
    }  # fmt: skip
    assert stats["metadata_items_not_in_catalog"] == {"never_interacted": 1, "filtered_out": 0}
    assert stats["images"] == {
        "source": "synthetic_title_cards", "present": 4, "missing": 0, "corrupt": 0, "rejected_outside_root": 0,
        "renamed_file_names": 0,
    }  # fmt: skip
    assert any("synthetic title card" in note for note in stats["notes"])


def test_prepare_is_independent_of_row_order_in_memory(tmp_path: Path, handmade) -> None:
    """Same ``row`` values, rows shuffled in the frame: identical output bytes (ties broken by ``row``)."""
    df = frame(rows_for_prepare())
    outputs = []
    out = tmp_path / "prepared"  # the same directory twice: image paths are part of items.parquet
    for shuffled in [df, df.sample(fraction=1.0, shuffle=True, seed=3)]:
        handmade(shuffled, items_for(["m5", "m4", "m3", "m2", "m1"]))
        prepare(DATA_CFG, out)
        outputs.append([(out / name).read_bytes() for name in ("items.parquet", "sequences.parquet")])
        outputs[-1] += [p.read_bytes() for p in sorted((out / "images").iterdir())]
    assert outputs[0][0] != b"" and outputs[0] == outputs[1]


def test_prepare_dedupe_exact_and_chronological_sequences(tmp_path: Path, handmade) -> None:
    rng = random.Random(0)
    rows = [(f"u{u}", f"m{rng.randrange(6)}", rng.randrange(5)) for u in range(8) for _ in range(6)]
    rows += rows[:5]  # exact duplicates
    handmade(frame(rows), items_for([f"m{i}" for i in range(6)]))
    stats = prepare(dataclasses.replace(DATA_CFG, dedupe="exact"), tmp_path)
    seqs = pl.read_parquet(tmp_path / "sequences.parquet")
    assert stats["dropped"]["duplicate"] >= 5
    for ts in seqs["timestamps"].to_list():
        assert ts == sorted(ts)
    flat = [i for s in seqs["items"].to_list() for i in s]
    assert sorted(set(flat)) == list(range(1, stats["items"] + 1))
    assert stats["input_rows"] == stats["interactions"] + sum(stats["dropped"].values())


@pytest.mark.parametrize(
    ("change", "pattern"),
    [
        ({"user_core": 2}, r"data.user_core.*>= 3"),
        ({"max_seq_len": 0}, r"data.max_seq_len.*> 0"),
        ({"cold_start_fraction": 1.0}, r"data.cold_start_fraction.*must be in \[0, 1\)"),
        ({"source": "nope"}, r"data.source.*must be one of"),
    ],
)
def test_prepare_rejects_bad_config(tmp_path: Path, change: dict, pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern):
        prepare(dataclasses.replace(DATA_CFG, **change), tmp_path)


def test_prepare_with_nothing_left_says_what_to_lower(tmp_path: Path, handmade) -> None:
    handmade(frame([("u", "a", 1), ("u", "b", 2)]), items_for(["a", "b"]))
    with pytest.raises(ConfigError, match="no interactions left"):
        prepare(DATA_CFG, tmp_path)


# ----------------------------------------------------------------------------------------------------------------
# Images


def test_title_cards_are_deterministic_pngs() -> None:
    first = title_card_png("Amélie (2001)", "Amélie", "2001 | Comedy, Romance")
    assert first == title_card_png("Amélie (2001)", "Amélie", "2001 | Comedy, Romance")
    assert first != title_card_png("Heat (1995)", "Heat", "1995 | Action")
    image = Image.open(__import__("io").BytesIO(first))
    assert image.size == (224, 224) and image.format == "PNG"


def test_title_card_colour_comes_from_the_first_genre_not_the_item_id(tmp_path: Path) -> None:
    """The background must carry content (first genre), never an ID surrogate: same genre -> same colour."""
    items = pl.DataFrame(
        {
            "item_idx": [1, 2, 3],
            "item_id": ["1", "2", "3"],
            "text": ["", "", ""],
            "title": ["Heat", "Ronin", "Amelie"],
            "year": [1995, 1998, 2001],
            "genres": [["Action", "Crime"], ["Action", "Thriller"], ["Comedy"]],
        }
    )
    paths = write_title_cards(items, tmp_path)
    corner = [Image.open(tmp_path / p).convert("RGB").getpixel((200, 40)) for p in paths]
    assert corner[0] == corner[1] != corner[2]


def test_images_dir_present_missing_corrupt(tmp_path: Path) -> None:
    images_dir = tmp_path / "img"
    images_dir.mkdir()
    Image.new("RGB", (8, 8), (255, 0, 0)).save(images_dir / "a.png")
    Image.new("RGB", (8, 8), (0, 255, 0)).save(images_dir / "b_c.JPG")  # item id "b/c": "/" -> "_"; ext any case
    (images_dir / "d.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    (images_dir / "sub").mkdir()
    Image.new("RGB", (8, 8), (0, 0, 255)).save(images_dir / "sub" / "f.webp")
    items = pl.DataFrame(
        {
            "item_idx": [1, 2, 3, 4, 5, 6],
            "item_id": ["a", "b/c", "d", "e", "f", "g"],
            "text": [""] * 6,
            # a reader's local image_ref (relative to images_dir) is the fallback; URLs are not fetched here
            "image_ref": [None, None, None, None, "sub/f.webp", "https://example.com/g.jpg"],
        }
    )
    out = tmp_path / "out"
    (out / "images").mkdir(parents=True)
    (out / "images" / "1.png").write_bytes(b"stale card")  # cards of an earlier run are removed
    result, stats = attach_images(items, str(images_dir), out)
    assert stats == {
        "source": "images_dir", "present": 3, "missing": 2, "corrupt": 1, "rejected_outside_root": 0,
        "renamed_file_names": 0,
    }  # fmt: skip
    assert result["image_path"].to_list() == [
        str(images_dir / "a.png"), str(images_dir / "b_c.JPG"), None, None, str(images_dir / "sub" / "f.webp"), None
    ]  # fmt: skip
    # images/ (the DVC output embed depends on) now only indexes the real files used, so a change reaches embed
    assert [p.name for p in (out / "images").iterdir()] == ["index.json"]
    index = json.loads((out / "images" / "index.json").read_text())
    assert [row["path"] for row in index["images"]] == [p for p in result["image_path"].to_list() if p]
    assert all(row["bytes"] > 0 for row in index["images"])
    assert image_file_stem("../x:y") == "_._x_y"


def test_images_dir_must_exist(tmp_path: Path) -> None:
    items = pl.DataFrame({"item_idx": [1], "item_id": ["a"], "text": [""]})
    with pytest.raises(ConfigError, match="data.images_dir"):
        attach_images(items, str(tmp_path / "absent"), tmp_path)


# ----------------------------------------------------------------------------------------------------------------
# The stage


def test_stage_on_tiny_fixture(tmp_path: Path, tiny_params: Path) -> None:
    out = tmp_path / "prepared"
    result = CliRunner().invoke(app, ["--params", str(tiny_params), "--out", str(out)])
    assert result.exit_code == 0, result.output
    stats = json.loads((out / "stats.json").read_text())
    assert stats["source"] == "movielens" and stats["users"] == 30
    assert stats["dropped"]["duplicate"] > 0  # the fixture has exact and user-item duplicates
    assert stats["timestamp_tie_rate"] > 0
    assert stats["input_rows"] == stats["interactions"] + sum(stats["dropped"].values())
    items = pl.read_parquet(out / "items.parquet")
    assert items["item_idx"].to_list() == list(range(1, stats["items"] + 1))
    assert "Amélie (2001). Genres: " in " ".join(items["text"].to_list())
    assert len(list((out / "images").glob("*.png"))) == stats["items"]


def test_stage_reports_config_errors(tmp_path: Path, tiny_params: Path) -> None:
    raw = yaml.safe_load(tiny_params.read_text())
    raw["data"]["user_core"] = 1
    tiny_params.write_text(yaml.safe_dump(raw))
    result = CliRunner().invoke(app, ["--params", str(tiny_params), "--out", str(tmp_path / "o")])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)  # a clean exit, not a crash
    assert "error: `data.user_core` = 1: leave-one-out needs at least 3" in result.output
    assert not (tmp_path / "o").exists()


def test_stage_help() -> None:
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    assert "--params" in result.output and "--out" in result.output


def test_history_limit_keeps_each_users_most_recent_interactions(tmp_path: Path) -> None:
    """The ODMT authors' protocol: every history cut to its last N interactions, the cut counted in stats."""
    from pipeline.data.prepare import limit_history

    df = pl.DataFrame(
        {"user_id": ["u"] * 5 + ["v"] * 2, "item_id": list("abcdeab"), "timestamp": [5, 1, 3, 2, 4, 1, 2]}
    ).with_row_index("row")
    kept, dropped = limit_history(df, 3)
    assert dropped == 2
    assert kept.filter(pl.col("user_id") == "u").sort("timestamp")["item_id"].to_list() == ["c", "e", "a"]
    assert kept.filter(pl.col("user_id") == "v").height == 2
    assert limit_history(df, None) == (df, 0)
    with pytest.raises(ConfigError, match="history_limit"):
        limit_history(df, 2)


def test_stage_with_history_limit_counts_the_cut_rows(tmp_path: Path, tiny_params: Path) -> None:
    raw = yaml.safe_load(tiny_params.read_text())
    raw["data"]["history_limit"] = 4
    tiny_params.write_text(yaml.safe_dump(raw))
    out = tmp_path / "prepared"
    result = CliRunner().invoke(app, ["--params", str(tiny_params), "--out", str(out)])
    assert result.exit_code == 0, result.output
    stats = json.loads((out / "stats.json").read_text())
    assert stats["dropped"]["history_limit"] > 0
    assert stats["input_rows"] == stats["interactions"] + sum(stats["dropped"].values())
    lengths = pl.read_parquet(out / "sequences.parquet")["items"].list.len()
    assert lengths.max() <= 4
