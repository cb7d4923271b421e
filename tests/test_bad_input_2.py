"""Bad input, second campaign (issue 20): one regression test (or a small group) per principle, on tiny data.

1. outputs never overlap inputs; 2. files are checked against their root when opened; 3. no two items share a
derived file name; 4. the features' manifest fingerprints content; 5. every section is range-checked and every
user-controlled size is capped; 6. training stages publish their outputs together; 7. a corrupt cache shard or one
bad item never stops a run; 8. every error from a file names the file.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipeline.io import check_disjoint


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _one_line_error(result) -> str:  # noqa: ANN001 - click's Result
    lines = [line for line in result.output.splitlines() if line.strip() and line.startswith("error: ")]
    assert result.exit_code == 1 and len(lines) == 1, result.output
    return lines[0]


# ----------------------------------------------------------------------------------------------------------------
# 1. Outputs never overlap inputs


def test_outputs_disjoint_from_inputs_prepare_out_at_raw_folder_deletes_nothing(
    tiny_params: Path, tiny_ml1m_dir: Path
) -> None:
    from stages.prepare import app

    (tiny_ml1m_dir / "images").mkdir()
    (tiny_ml1m_dir / "images" / "poster.png").write_bytes(b"user data")
    (tiny_ml1m_dir / "items.parquet").write_bytes(b"user table")
    before = _tree(tiny_ml1m_dir)
    for out in (tiny_ml1m_dir, tiny_ml1m_dir / "sub", tiny_ml1m_dir.parent):
        line = _one_line_error(CliRunner().invoke(app, ["--params", str(tiny_params), "--out", str(out)]))
        assert f"--out {out} " in line and f"the input data.path {tiny_ml1m_dir}" in line
        assert "nothing was written or deleted" in line
    assert _tree(tiny_ml1m_dir) == before


@pytest.mark.parametrize(
    ("stage", "args", "relation"),
    [
        ("train", ["--prepared", "{d}", "--out", "{d}"], "is the input --prepared"),
        ("baseline", ["--features", "{d}", "--out", "{d}/models"], "lies inside the input --features"),
        ("pretrain", ["--prepared", "{d}/prepared", "--out", "{d}"], "contains the input --prepared"),
        ("evaluate", ["--prepared", "{d}", "--out", "{d}"], "is the input --prepared"),
        ("recommend", ["--features", "{d}", "--out", "{d}/r"], "lies inside the input --features"),
        ("recommend", ["--prepared", "{d}", "--gallery", "{d}/g.html"], "lies inside the input --prepared"),
        ("embed", ["--items", "{d}/items.parquet", "--out", "{d}"], "would replace the input --items"),
        ("embed", ["--out", "{d}", "--cache", "{d}/cache"], "contains the input --cache"),
    ],
)
def test_outputs_disjoint_from_inputs_every_stage(
    tmp_path: Path, tiny_params: Path, stage: str, args: list[str], relation: str
) -> None:
    import importlib

    folder = tmp_path / "inputs"
    folder.mkdir()
    (folder / "keep.txt").write_text("user data")
    app = importlib.import_module(f"stages.{stage}").app
    argv = ["--params", str(tiny_params), *(a.format(d=folder) for a in args)]
    line = _one_line_error(CliRunner().invoke(app, argv))
    assert relation in line, line
    assert _tree(folder) == {"keep.txt": b"user data"}


def test_outputs_disjoint_from_inputs_follows_symlinks_and_allows_siblings(tmp_path: Path) -> None:
    (tmp_path / "raw").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "raw")
    with pytest.raises(ValueError, match=re.escape(f"--out {tmp_path / 'link'} is the input data.path")):
        check_disjoint({"--out": tmp_path / "link"}, {"data.path": tmp_path / "raw"})
    models = tmp_path / "models"  # train's default layout: models/ beside models/baseline/model.pt
    check_disjoint({"--out": models}, {}, {"--baseline": models / "baseline" / "model.pt"}, published=["model.pt"])
    with pytest.raises(ValueError, match="would replace the input --baseline"):
        check_disjoint({"--out": models}, {}, {"--baseline": models / "model.pt"}, published=["model.pt"])


# ----------------------------------------------------------------------------------------------------------------
# 2. Every file is resolved and checked against its root when it is opened


def test_files_checked_against_root_at_open_table_shard_symlink_is_not_read(tmp_path: Path) -> None:
    from pipeline.data.readers import get_reader
    from tests.test_readers_table import T0, table, write

    root = write(tmp_path / "raw", "uid,sku,ts\n")
    (root / "events").mkdir()
    (root / "events" / "part-0.csv").write_text(f"uid,sku,ts\nu1,A,{T0}\n", encoding="utf-8")
    outside = tmp_path / "elsewhere" / "secret.csv"
    outside.parent.mkdir()
    outside.write_text(f"uid,sku,ts\nspy,B,{T0}\n", encoding="utf-8")
    (root / "events" / "part-1.csv").symlink_to(outside)
    for spec in ("events", "events/part-*.csv"):
        raw = get_reader("table")(table(root, interactions=spec))
        assert raw.interactions.collect()["user_id"].to_list() == ["u1"]  # the secret's row is never read
        assert any("1 file(s) rejected_outside_root" in n and "part-1.csv" in n for n in raw.notes)


def test_files_checked_against_root_at_open_images_in_embed_and_gallery(tmp_path: Path) -> None:
    from PIL import Image

    from pipeline.data.images import attach_images, image_root
    from pipeline.features.embed import _image_inputs
    from pipeline.gallery import resolve_image
    from tests.test_hostile_input import _items

    images, prepared = tmp_path / "posters", tmp_path / "prepared"
    Image.new("RGB", (8, 8)).save(images.mkdir() or images / "a.png")
    Image.new("RGB", (8, 8)).save(images / "b.png")
    items, _ = attach_images(_items(["a", "b"], [None, None]), str(images), prepared)
    assert image_root(prepared) == images.resolve()
    secret = tmp_path / "secret.png"
    Image.new("RGB", (8, 8), (255, 0, 0)).save(secret)
    (images / "b.png").unlink()
    (images / "b.png").symlink_to(secret)  # replaced after prepare checked it: caught when opened
    paths = items["image_path"].to_list()
    inputs = _image_inputs(["a", "b"], paths, image_root(prepared))
    assert inputs.counts["rejected_outside_root"] == 1 and inputs.digests[1] is None and inputs.digests[0]
    assert resolve_image(paths[0], prepared, images) == Path(paths[0])
    assert resolve_image(paths[1], prepared, image_root(prepared)) is None


def test_files_checked_against_root_at_open_recbole_files(tmp_path: Path) -> None:
    from pipeline.data.readers import get_reader
    from pipeline.data.schema import DataFormatError
    from tests.test_readers_recbole import INTER, ITEM, cfg, write

    elsewhere = write(tmp_path / "elsewhere", "x", INTER, ITEM)
    root = write(tmp_path / "Beauty", "Beauty", INTER)
    (root / "Beauty.item").symlink_to(elsewhere / "x.item")
    raw = get_reader("recbole")(cfg(root))
    assert any("Beauty.item: 1 file rejected_outside_root" in n for n in raw.notes)
    assert set(raw.items["text"].to_list()) == {""}  # the outside file's text never arrives
    (root / "Beauty.inter").unlink()
    (root / "Beauty.inter").symlink_to(elsewhere / "x.inter")
    with pytest.raises(DataFormatError, match=r"Beauty.inter: rejected_outside_root: it resolves to .*x.inter"):
        get_reader("recbole")(cfg(root))
