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
