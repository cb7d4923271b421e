"""``items.parquet``'s ``image_path`` does not depend on the working directory of the prepare run.

Prepare writes title cards relative to the prepared folder (``images/<item_idx>.png``) and real images as absolute
paths; every reader resolves them with :func:`pipeline.data.images.resolve_image_path`. A stage run from another
working directory, with absolute ``--prepared``/``--features`` paths, reads the same images (no "resolves outside
the image folder" warning, no false "stale features" error), and items tables of older versions, whose card paths
are relative to the prepare run's working directory (``data/prepared/images/1.png``), keep working.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from pipeline.data.images import checked_image, image_root, resolve_image_path
from pipeline.features.store import check_content, load_catalog
from tests.fixtures.make_tiny_ml1m import write_tiny_ml1m
from tests.helpers.dvc_project import tiny_params

pytestmark = pytest.mark.slow


def _invoke(app: object, argv: list[str]) -> str:
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 0, result.output
    return result.output


def _prepare_and_embed(project: Path) -> None:
    """``prepare`` and ``embed`` as dvc.yaml runs them: from ``project``, with relative paths."""
    from stages.embed import app as embed_app
    from stages.prepare import app as prepare_app

    _invoke(prepare_app, ["--params", "params.yaml", "--out", "data/prepared"])
    embed = ["--items", "data/prepared/items.parquet", "--out", "data/features", "--cache", "data/cache"]
    _invoke(embed_app, ["--params", "params.yaml", *embed])


def _train_and_evaluate(params: Path, prepared: Path, features: Path, models: Path, reports: Path) -> dict:
    """baseline, train, evaluate and recommend (the gallery) with these paths; returns metrics.json."""
    from stages.baseline import app as baseline_app
    from stages.evaluate import app as evaluate_app
    from stages.recommend import app as recommend_app
    from stages.train import app as train_app

    common = ["--params", str(params), "--prepared", str(prepared), "--features", str(features)]
    baseline = models / "baseline" / "model.pt"
    trained = ["--model", str(models / "model.pt"), "--baseline", str(baseline)]
    _invoke(baseline_app, [*common, "--out", str(baseline.parent)])
    pretrained = models / "pretrain" / "pretrain.pt"  # absent: train from scratch
    _invoke(train_app, [*common, "--out", str(models), "--pretrained", str(pretrained), "--baseline", str(baseline)])
    evaluate = ["--out", str(reports), "--device", "cpu", "--experiments", str(reports / "experiments")]
    _invoke(evaluate_app, [*common, *trained, *evaluate])
    gallery = ["--gallery", str(reports / "gallery.html"), "--device", "cpu"]
    _invoke(recommend_app, ["export", *common, *trained, "--out", str(models.parent / "recommendations"), *gallery])
    return json.loads((reports / "metrics.json").read_text())


def _gallery_images(reports: Path) -> int:
    """How many thumbnails of the gallery are real images (not the "no image" placeholder)."""
    return (reports / "gallery.html").read_text().count("data:image/jpeg;base64,")


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny ML-1M project, prepared and embedded from its own folder with relative paths (title cards)."""
    root = tmp_path_factory.mktemp("cwd")
    params = tiny_params(write_tiny_ml1m(root / "raw"), data={"images_dir": None, "posters_dir": None})
    params["embed"]["device"] = "cpu"
    params["train"]["device"] = params["baseline"]["train"]["device"] = "cpu"
    params["train"]["epochs"] = params["baseline"]["train"]["epochs"] = 2
    project = root / "a"
    project.mkdir()
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(project)
        _prepare_and_embed(project)
    return project


def test_prepare_writes_card_paths_relative_to_the_prepared_folder(project: Path) -> None:
    prepared = project / "data" / "prepared"
    items = pl.read_parquet(prepared / "items.parquet")
    assert items["image_path"].to_list() == [f"images/{i}.png" for i in items["item_idx"]]
    for path in items["image_path"]:
        assert resolve_image_path(path, prepared, image_root(prepared)) == prepared.absolute() / path


def test_stages_from_another_cwd_with_absolute_paths_read_the_same_images(
    project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The bug: from another cwd every card "resolved outside the image folder" and train stopped with "stale"."""
    from stages.embed import app as embed_app

    prepared, features = project / "data" / "prepared", project / "data" / "features"
    (project / "reports" / "experiments").mkdir(parents=True, exist_ok=True)
    with monkeypatch.context() as same_cwd:
        same_cwd.chdir(project)
        here = _train_and_evaluate(
            Path("params.yaml"), Path("data/prepared"), Path("data/features"), Path("models"), Path("reports")
        )

    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "reports" / "experiments").mkdir(parents=True)
    monkeypatch.chdir(elsewhere)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        argv = ["--params", str(project / "params.yaml"), "--items", str(prepared / "items.parquet")]
        _invoke(embed_app, [*argv, "--out", str(elsewhere / "features"), "--cache", str(project / "data" / "cache")])
        image = json.loads((elsewhere / "features" / "manifest.json").read_text())["modalities"]["image"]
        assert image["present"] == image["cache_hits"] > 0 and image["encoded"] == image["missing"] == 0  # same bytes
        for name in ("image.npy", "image_mask.npy", "image_tokens.npy", "text.npy"):
            np.testing.assert_array_equal(np.load(elsewhere / "features" / name), np.load(features / name))
        assert np.load(elsewhere / "features" / "image_mask.npy")[1:].all()
        there = _train_and_evaluate(
            project / "params.yaml", prepared, features, elsewhere / "models", elsewhere / "reports"
        )
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert there["odmt"] == here["odmt"] and there["baseline"] == here["baseline"]
    assert _gallery_images(elsewhere / "reports") == _gallery_images(project / "reports") > 0


def test_old_items_table_with_cwd_relative_card_paths_still_works(
    project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """An items.parquet of an older prepare, run from the repository with --out data/prepared."""
    import shutil

    old = tmp_path / "repo" / "data" / "prepared"
    shutil.copytree(project / "data" / "prepared", old)
    items = pl.read_parquet(old / "items.parquet")
    legacy = [f"data/prepared/images/{i}.png" for i in items["item_idx"]]
    items.with_columns(pl.Series("image_path", legacy)).write_parquet(old / "items.parquet")
    root = image_root(old)
    assert [resolve_image_path(p, old, root) for p in legacy] == [
        old / "images" / f"{i}.png" for i in items["item_idx"]
    ]
    manifest = json.loads((project / "data" / "features" / "manifest.json").read_text())
    monkeypatch.chdir(tmp_path)
    with caplog.at_level(logging.WARNING):
        check_content(project / "data" / "features", old, "image", manifest["modalities"]["image"])  # not stale
        catalog = load_catalog(project / "data" / "features", old, ("image",))
    assert bool(catalog.masks["image"][1:].all())
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def test_resolver_keeps_escaping_paths_outside(tmp_path: Path) -> None:
    """The resolver only joins paths; the root check after it stays as strict (``..`` and symlinks rejected)."""
    prepared = tmp_path / "prepared"
    (prepared / "images").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(prepared / "images" / "1.png")
    secret = tmp_path / "secret.png"
    Image.new("RGB", (8, 8), (255, 0, 0)).save(secret)
    (prepared / "images" / "2.png").symlink_to(secret)
    root = image_root(prepared)
    assert root == prepared / "images"
    assert checked_image(resolve_image_path("images/1.png", prepared, root), root)[1] == "ok"
    assert resolve_image_path(None, prepared, root) is None and resolve_image_path("", prepared, root) is None
    for bad in (
        "images/2.png",
        "images/../../secret.png",
        "../secret.png",
        str(secret),
        "x/images/../../secret.png",
        "data/prepared/images/2.png",
    ):
        path = resolve_image_path(bad, prepared, root)
        assert checked_image(path, root) == (None, "rejected_outside_root"), bad


def test_real_images_get_absolute_paths_and_old_relative_ones_still_resolve(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """data.images_dir written relative to the cwd: prepare writes absolute paths; an older prepare's cwd-relative
    ones (``raw/images/sub/b.png``) are found under the recorded root from anywhere."""
    from pipeline.data.images import attach_images
    from tests.helpers.data import image_ref_items

    images = tmp_path / "repo" / "raw" / "images"
    (images / "sub").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(images / "a.png")
    Image.new("RGB", (8, 8), (0, 9, 0)).save(images / "sub" / "b.png")
    prepared = tmp_path / "repo" / "data" / "prepared"
    monkeypatch.chdir(tmp_path / "repo")
    items, stats = attach_images(image_ref_items(["a", "b"], [None, "sub/b.png"]), "raw/images", prepared)
    assert stats["present"] == 2
    assert items["image_path"].to_list() == [str(images / "a.png"), str(images / "sub" / "b.png")]
    monkeypatch.chdir(tmp_path)
    root = image_root(prepared)
    assert root == images
    for old, new in (("raw/images/a.png", images / "a.png"), ("raw/images/sub/b.png", images / "sub" / "b.png")):
        assert checked_image(resolve_image_path(old, prepared, root), root) == (new, "ok")
    absent = resolve_image_path("raw/images/absent.png", prepared, root)  # no such file: under prepared/, refused
    assert checked_image(absent, root) == (None, "rejected_outside_root")
