"""Hostile but realistic input (issue 10): bad data never reads outside its folders, never damages outputs."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import stat
from pathlib import Path

import polars as pl
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from pipeline.cli import error_line
from pipeline.config import ConfigError, DataConfig, check_params, load_params, load_section
from pipeline.data.images import attach_images
from pipeline.data.paths import inside_root, safe_file_stem, safe_file_stem_expr
from pipeline.data.prepare import prepare
from pipeline.data.readers import get_reader
from pipeline.data.readers.hm import read_articles
from pipeline.data.readers.movielens import read_movielens
from pipeline.data.readers.movielens_family import read_movielens_csv
from pipeline.data.readers.rawio import check_delimited, read_json_lines
from pipeline.data.schema import DataFormatError
from pipeline.io import staged_outputs, write_json_atomic
from pipeline.training.pretrain import PretrainConfig
from tests.helpers.data import image_ref_items
from tests.helpers.dvc_project import params_with

FIXTURES = Path(__file__).parent / "fixtures" / "real_formats"
REPO = Path(__file__).resolve().parents[1]

CFG = DataConfig(
    source="movielens", path=None, images_dir=None, min_rating=None, user_core=3, item_core=1,
    dedupe="user_item", max_seq_len=50, cold_start_fraction=0.0, seed=0,
)  # fmt: skip


def _png(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (10, 20, 30)).save(path)
    return path


# ----------------------------------------------------------------------------------------------------------------
# Path traversal


def test_symlink_in_images_dir_pointing_outside_is_rejected_not_read(tmp_path: Path) -> None:
    images = tmp_path / "images"
    secret = _png(tmp_path / "outside" / "secret.png")
    _png(images / "a.png")
    (images / "b.png").symlink_to(secret)
    (images / "inner.png").symlink_to(images / "a.png")  # a link that stays inside is fine
    result, stats = attach_images(image_ref_items(["a", "b", "inner"], [None] * 3), str(images), tmp_path / "out")
    assert stats["rejected_outside_root"] == 1 and stats["present"] == 2
    assert result["image_path"].to_list() == [str(images / "a.png"), None, str(images / "inner.png")]
    index = json.loads((tmp_path / "out" / "images" / "index.json").read_text())
    assert all("secret" not in row["path"] for row in index["images"])


def test_dotdot_item_id_and_ref_cannot_leave_images_dir(tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    _png(tmp_path / "outside" / "secret.jpg")
    items = image_ref_items(["../outside/secret", "x"], [None, "../outside/secret.jpg"])
    result, stats = attach_images(items, str(images), tmp_path / "out")
    assert result["image_path"].to_list() == [None, None]
    assert stats["missing"] == 1 and stats["rejected_outside_root"] == 1  # the id is a file name, the ref a path


def test_absolute_image_ref_outside_images_dir_is_rejected(tmp_path: Path) -> None:
    """An Amazon meta ``hi_res``/``large`` that is an absolute local path elsewhere is never read."""
    images = tmp_path / "images"
    inside = _png(images / "sub" / "ok.png")
    secret = _png(tmp_path / "elsewhere" / "secret.png")
    items = image_ref_items(["p", "q"], [str(secret), str(inside)])
    result, stats = attach_images(items, str(images), tmp_path / "out")
    assert result["image_path"].to_list() == [None, str(inside)]
    assert stats.pop("renamed_file_names") == 0
    assert stats == {"source": "images_dir", "present": 1, "missing": 0, "corrupt": 0, "rejected_outside_root": 1}


def test_hm_dotdot_article_id_builds_a_path_inside_images(tmp_path: Path) -> None:
    articles = tmp_path / "articles.csv"
    articles.write_text("article_id,prod_name\n../outside/secret,Evil\n0108775015,Good\n", encoding="utf-8")
    items = read_articles(articles, tmp_path / "images", relative=True, notes=[])
    refs = items["image_ref"].to_list()
    assert refs == ["_._/_._outside_secret.jpg", "010/0108775015.jpg"]
    assert all(inside_root(tmp_path / "images" / r, tmp_path / "images") for r in refs)


@pytest.mark.parametrize("item_id", ["../outside/secret", "..", ".", "", "a/b\\c", "x\x00y", "C:evil"])
def test_safe_file_stem_and_its_polars_twin_agree(item_id: str) -> None:
    stem = safe_file_stem(item_id)
    assert "/" not in stem and "\\" not in stem and not stem.startswith(".") and stem
    assert pl.select(safe_file_stem_expr(pl.lit(item_id))).item() == stem


# ----------------------------------------------------------------------------------------------------------------
# Silently damaged text


def _copy(name: str, tmp_path: Path) -> Path:
    out = tmp_path / name
    shutil.copytree(FIXTURES / name, out)
    return out


def test_ragged_movies_csv_row_is_an_error_naming_file_and_line(tmp_path: Path) -> None:
    root = _copy("ml-25m", tmp_path)
    with (root / "movies.csv").open("a", encoding="utf-8") as f:
        f.write("999,American President, The (1995),Comedy\n")  # unquoted comma in the title
    line = len((root / "movies.csv").read_text(encoding="utf-8").splitlines())
    with pytest.raises(DataFormatError, match=rf"movies.csv:{line}: expected 3 fields separated by ',' .* found 4"):
        read_movielens_csv(dataclasses.replace(CFG, source="movielens_csv", path=str(root)))


def test_short_ratings_csv_row_is_an_error_not_a_null(tmp_path: Path) -> None:
    root = _copy("ml-25m", tmp_path)
    lines = (root / "ratings.csv").read_text(encoding="utf-8").splitlines()
    lines[2] = "1,11,1.5"
    (root / "ratings.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(DataFormatError, match=r"ratings.csv:3: expected 4 fields .* found 3"):
        read_movielens_csv(dataclasses.replace(CFG, source="movielens_csv", path=str(root)))


def test_quoted_separator_in_hm_articles_is_one_field() -> None:
    report = check_delimited(FIXTURES / "hm" / "articles.csv", ",", header=True, fix="-")
    assert report.data_lines > 0 and report.replaced == 0


def test_invalid_utf8_in_csv_is_counted_and_noted_with_its_first_line(tmp_path: Path) -> None:
    root = _copy("ml-25m", tmp_path)
    data = (root / "ratings.csv").read_bytes().split(b"\n")
    data[3] = b"1\xff" + data[3][1:]  # a user id "1\ufffd" would otherwise be a new user, unnoticed
    (root / "ratings.csv").write_bytes(b"\n".join(data))
    raw = read_movielens_csv(dataclasses.replace(CFG, source="movielens_csv", path=str(root)))
    assert any("ratings.csv: 1 invalid UTF-8 byte sequence(s) on 1 line(s) (first: line 4)" in n for n in raw.notes)


def test_one_invalid_byte_in_utf8_movies_dat_decodes_per_line_not_per_file(tiny_ml1m_dir: Path) -> None:
    movies = tiny_ml1m_dir / "movies.dat"
    lines = movies.read_bytes().decode("latin-1").split("\n")
    lines[5] = lines[5].replace("::", "::\xff", 1)  # one stray latin-1 byte on line 6; the rest re-saved as UTF-8
    movies.write_bytes("\n".join(lines).encode("utf-8").replace("::ÿ".encode(), b"::\xff"))
    raw = read_movielens(dataclasses.replace(CFG, path=str(tiny_ml1m_dir)))
    assert "Amélie (2001). Genres: " in raw.items["text"][0]  # not "AmÃ©lie"
    assert any(
        "movies.dat: 1 line(s) are not valid UTF-8 and were read as latin-1 (first: line 6)" in n for n in raw.notes
    )


def test_bom_at_start_of_grouplens_dat_is_ignored(tiny_ml1m_dir: Path) -> None:
    ratings = tiny_ml1m_dir / "ratings.dat"
    ratings.write_bytes(b"\xef\xbb\xbf" + ratings.read_bytes())
    raw = read_movielens(dataclasses.replace(CFG, path=str(tiny_ml1m_dir)))
    assert raw.interactions.collect().height == len(ratings.read_bytes().splitlines())


def test_bom_at_start_of_jsonl_keeps_line_1(tmp_path: Path) -> None:
    path = tmp_path / "reviews.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"user_id": "u1"}\n{"user_id": "u2"}\n')
    frame, report = read_json_lines(path, {"user_id": pl.String()})
    assert frame["user_id"].to_list() == ["u1", "u2"] and report.malformed == 0


@pytest.mark.parametrize(
    ("source", "folder", "file", "content", "pattern"),
    [
        ("movielens_csv", "ml-25m", "movies.csv", "", r"movies.csv: the file is empty"),
        ("movielens_csv", "ml-25m", "ratings.csv", "userId,movieId,rating,timestamp\n", r"ratings.csv: no data rows"),
        ("hm", "hm", "transactions_train.csv", "", r"transactions_train.csv: the file is empty"),
        ("hm", "hm", "articles.csv", "article_id,prod_name\n", r"articles.csv: no data rows"),
        ("microlens", "microlens", "MicroLens-100k_pairs.csv", "user,item,timestamp\n", r"pairs.csv: no data rows"),
        ("movielens100k", "ml-100k", "u.data", "\n", r"u.data: the file is empty"),
        ("amazon2023", "amazon2023", "All_Beauty.jsonl", "", r"All_Beauty.jsonl: no records"),
    ],
)
def test_empty_or_header_only_file_is_an_error_naming_it(
    tmp_path: Path, source: str, folder: str, file: str, content: str, pattern: str
) -> None:
    root = _copy(folder, tmp_path)
    (root / file).write_text(content, encoding="utf-8")
    with pytest.raises(DataFormatError, match=pattern):
        get_reader(source)(dataclasses.replace(CFG, source=source, path=str(root)))


@pytest.mark.parametrize("name", ["ratings.dat", "movies.dat"])
def test_empty_grouplens_dat_is_an_error_naming_it_not_lower_user_core(tiny_ml1m_dir: Path, name: str) -> None:
    (tiny_ml1m_dir / name).write_bytes(b"")
    with pytest.raises(DataFormatError, match=rf"{name}: the file is empty"):
        read_movielens(dataclasses.replace(CFG, path=str(tiny_ml1m_dir)))


def test_movielens_negative_zero_and_absurd_timestamps_are_bad_timestamp(tiny_ml1m_dir: Path) -> None:
    ratings = tiny_ml1m_dir / "ratings.dat"
    lines = ratings.read_text(encoding="latin-1").splitlines()
    for k, ts in enumerate(("-5", "0", "9000000000000000000")):
        user, item, rating, _ = lines[k].split("::")
        lines[k] = f"{user}::{item}::{rating}::{ts}"
    ratings.write_text("\n".join(lines) + "\n", encoding="latin-1")
    raw = read_movielens(dataclasses.replace(CFG, path=str(tiny_ml1m_dir)))
    assert raw.drops["bad_timestamp"] == 3
    assert raw.interactions.collect().height == len(lines) - 3


# ----------------------------------------------------------------------------------------------------------------
# A failing stage never leaves a mixed output set


def _snapshot(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def test_cold_start_fraction_099_is_a_config_error_and_leaves_outputs_whole(
    tmp_path: Path, tiny_ml1m_dir: Path
) -> None:
    cfg = dataclasses.replace(CFG, path=str(tiny_ml1m_dir))
    out = tmp_path / "prepared"
    prepare(cfg, out)
    before = _snapshot(out)
    with pytest.raises(ConfigError, match=r"`data.cold_start_fraction` = 0.99 .* lower data.cold_start_fraction"):
        prepare(dataclasses.replace(cfg, cold_start_fraction=0.99), out)
    assert _snapshot(out) == before  # sequences.parquet, items.parquet, images/ and stats.json: all the old ones
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ml-1m", "prepared"]  # no staging folder left behind


def test_staged_outputs_replace_all_or_nothing(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with staged_outputs(out, ["a.txt", "d"]) as stage:
        (stage / "a.txt").write_text("old a")
        (stage / "d").mkdir()
        (stage / "d" / "x").write_text("old x")
    with pytest.raises(RuntimeError, match="boom"), staged_outputs(out, ["a.txt", "d"]) as stage:
        (stage / "a.txt").write_text("new a")
        raise RuntimeError("boom")
    with pytest.raises(RuntimeError, match="outputs not written, nothing replaced: d"):
        with staged_outputs(out, ["a.txt", "d"]) as stage:
            (stage / "a.txt").write_text("new a")
    assert (out / "a.txt").read_text() == "old a" and (out / "d" / "x").read_text() == "old x"
    with staged_outputs(out, ["a.txt", "d"]) as stage:
        (stage / "a.txt").write_text("new a")
        (stage / "d").mkdir()
    assert (out / "a.txt").read_text() == "new a" and not (out / "d" / "x").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_outputs_get_the_umask_mode_not_0600(tmp_path: Path, tiny_ml1m_dir: Path) -> None:
    old = os.umask(0o022)
    try:
        write_json_atomic(tmp_path / "x.json", {"a": 1})
        prepare(dataclasses.replace(CFG, path=str(tiny_ml1m_dir)), tmp_path / "prepared")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "x.json").stat().st_mode) == 0o644
    for name in ("stats.json", "items.parquet", "sequences.parquet", "images/1.png"):
        assert stat.S_IMODE((tmp_path / "prepared" / name).stat().st_mode) == 0o644, name
    assert stat.S_IMODE((tmp_path / "prepared" / "images").stat().st_mode) == 0o755


# ----------------------------------------------------------------------------------------------------------------
# Params: ranges, duplicate keys, YAML syntax


@pytest.mark.parametrize(
    ("section", "key", "value", "message"),
    [
        ("train", "epochs", -1, r"`train.epochs` = -1 must be >= 1"),
        ("train", "batch_size", 0, r"`train.batch_size` = 0 must be >= 1"),
        ("train", "lr", -0.1, r"`train.lr` = -0.1 must be > 0"),
        ("train", "lr", float("nan"), r"`train.lr` = nan must be > 0"),
        ("train", "patience", 0, r"`train.patience` = 0 must be >= 1"),
        ("train", "seed", -1, r"`train.seed` = -1 must be in \[0, 4294967295\]"),
        ("train", "num_threads", -3, r"`train.num_threads` = -3 must be >= 0"),
        ("data", "max_seq_len", 0, r"`data.max_seq_len` = 0 must be in \[1, 100000\]"),
        ("data", "cold_start_fraction", 1.0, r"`data.cold_start_fraction` = 1.0 must be in \[0, 1\)"),
        ("evaluate", "ks", [], r"`evaluate.ks` = \[\] must list at least one"),
        ("evaluate", "ks", [0], r"`evaluate.ks\[0\]` = 0 must be >= 1"),
        ("evaluate", "batch_size", 0, r"`evaluate.batch_size` = 0 must be >= 1"),
        ("embed", "text.batch_size", 0, r"`embed.text.batch_size` = 0 must be >= 1"),
        ("model", "odmt.num_heads", 0, r"`model.odmt.num_heads` = 0 must be >= 1"),
        ("model", "odmt.num_heads", 3, r"`model.odmt.num_heads` = 3 must divide `model.odmt.hidden_dim` = 64"),
        ("model", "odmt.dropout", 1.5, r"`model.odmt.dropout` = 1.5 must be in \[0, 1\)"),
        ("model", "fusion_heads", 3, r"`model.fusion_heads` = 3 must divide `model.odmt.hidden_dim` = 64"),
    ],
)
def test_out_of_range_param_names_the_given_file_and_dotted_key(
    tmp_path: Path, section: str, key: str, value: object, message: str
) -> None:
    path = params_with(tmp_path, section, key, value)
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))}: {message}"):
        load_params(path)


def test_pretrain_ranges_are_checked(tmp_path: Path) -> None:
    path = params_with(tmp_path, "pretrain", "lr", 0)
    with pytest.raises(ConfigError, match=r"other.yaml: `pretrain.lr` = 0.0 must be > 0"):
        load_section(PretrainConfig, "pretrain", path)


@pytest.mark.parametrize(("section", "key"), [("pretrain", "patience"), ("baseline", "train.patience")])
def test_patience_zero_is_refused_at_load_naming_its_own_section(tmp_path: Path, section: str, key: str) -> None:
    # a patience of 0 used to load and then stop the stage's training with a message about `train.patience`
    path = params_with(tmp_path, section, key, 0)
    with pytest.raises(ConfigError, match=rf"other.yaml: `{section}.{key}` = 0 must be >= 1"):
        check_params(yaml.safe_load(path.read_text(encoding="utf-8")), path)


def test_duplicate_yaml_key_is_an_error_naming_file_key_and_line(tmp_path: Path) -> None:
    path = tmp_path / "dup.yaml"
    text = (REPO / "params.yaml").read_text(encoding="utf-8")
    original = next(x for x in text.splitlines() if x.startswith("  user_core: "))
    path.write_text(text.replace(f"\n{original}\n", f"\n{original}\n  user_core: 9\n", 1), encoding="utf-8")
    line = text.splitlines().index(original) + 2
    with pytest.raises(ConfigError, match=rf"dup.yaml:{line}: duplicate key `user_core` \(first on line {line - 1}\)"):
        load_params(path)


def test_tab_in_params_is_a_one_line_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "tab.yaml"
    path.write_text("data:\n\tsource: movielens\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_params(path)
    assert str(info.value).startswith(f"{path}:2:1: not valid YAML") and "tabs" in str(info.value)
    assert "\n" not in str(info.value) and "<unicode string>" not in str(info.value)


# ----------------------------------------------------------------------------------------------------------------
# Stage CLIs: one error line, the traceback only on request


def test_stage_error_is_one_line_without_traceback(tmp_path: Path, tiny_params: Path) -> None:
    from stages.embed import app

    bad = tmp_path / "bad.yaml"
    bad.write_text(tiny_params.read_text(encoding="utf-8").replace("batch_size: 128", "batch_size: 0", 1))
    result = CliRunner().invoke(app, ["--params", str(bad), "--items", str(tmp_path / "none.parquet")])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines == [f"error: {bad}: `embed.text.batch_size` = 0 must be >= 1"]


def test_mmrec_debug_shows_the_traceback(tmp_path: Path, tiny_params: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from stages.embed import app

    bad = tmp_path / "bad.yaml"
    bad.write_text("embed:\n\tdevice: cpu\n", encoding="utf-8")
    monkeypatch.setenv("MMREC_DEBUG", "1")
    result = CliRunner().invoke(app, ["--params", str(bad)])
    assert isinstance(result.exception, ConfigError) and "bad.yaml:2:1: not valid YAML" in str(result.exception)


def test_unexpected_exception_is_one_line_with_its_type() -> None:
    assert error_line(ZeroDivisionError("division by zero")).startswith("error: ZeroDivisionError: division by zero")
    assert error_line(ConfigError("a.yaml: `x` = 0 must be >= 1\n  more")) == "error: a.yaml: `x` = 0 must be >= 1 more"
