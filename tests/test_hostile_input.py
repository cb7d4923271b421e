"""Hostile but realistic input (issue 10): bad data never reads outside its folders, never damages outputs."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
from PIL import Image

from pipeline.config import DataConfig
from pipeline.data.images import attach_images
from pipeline.data.paths import inside_root, safe_file_stem, safe_file_stem_expr
from pipeline.data.readers.hm import read_articles

CFG = DataConfig(
    source="movielens", path=None, images_dir=None, min_rating=None, user_core=3, item_core=1,
    dedupe="user_item", max_seq_len=50, cold_start_fraction=0.0, seed=0,
)  # fmt: skip


def _png(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (10, 20, 30)).save(path)
    return path


def _items(ids: list[str], refs: list[str | None]) -> pl.DataFrame:
    return pl.DataFrame(
        {"item_idx": list(range(1, len(ids) + 1)), "item_id": ids, "text": [""] * len(ids), "image_ref": refs},
        schema={"item_idx": pl.Int32, "item_id": pl.String, "text": pl.String, "image_ref": pl.String},
    )


# ----------------------------------------------------------------------------------------------------------------
# Path traversal


def test_symlink_in_images_dir_pointing_outside_is_rejected_not_read(tmp_path: Path) -> None:
    images = tmp_path / "images"
    secret = _png(tmp_path / "outside" / "secret.png")
    _png(images / "a.png")
    (images / "b.png").symlink_to(secret)
    (images / "inner.png").symlink_to(images / "a.png")  # a link that stays inside is fine
    result, stats = attach_images(_items(["a", "b", "inner"], [None] * 3), str(images), tmp_path / "out")
    assert stats["rejected_outside_root"] == 1 and stats["present"] == 2
    assert result["image_path"].to_list() == [str(images / "a.png"), None, str(images / "inner.png")]
    index = json.loads((tmp_path / "out" / "images" / "index.json").read_text())
    assert all("secret" not in row["path"] for row in index["images"])


def test_dotdot_item_id_and_ref_cannot_leave_images_dir(tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    _png(tmp_path / "outside" / "secret.jpg")
    items = _items(["../outside/secret", "x"], [None, "../outside/secret.jpg"])
    result, stats = attach_images(items, str(images), tmp_path / "out")
    assert result["image_path"].to_list() == [None, None]
    assert stats["missing"] == 1 and stats["rejected_outside_root"] == 1  # the id is a file name, the ref a path


def test_absolute_image_ref_outside_images_dir_is_rejected(tmp_path: Path) -> None:
    """An Amazon meta ``hi_res``/``large`` that is an absolute local path elsewhere is never read."""
    images = tmp_path / "images"
    inside = _png(images / "sub" / "ok.png")
    secret = _png(tmp_path / "elsewhere" / "secret.png")
    items = _items(["p", "q"], [str(secret), str(inside)])
    result, stats = attach_images(items, str(images), tmp_path / "out")
    assert result["image_path"].to_list() == [None, str(inside)]
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
