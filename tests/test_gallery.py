"""reports/gallery.html (issue 13): a seeded sample of test users, history + held-out item, each model's top-10;
self-contained; checked in a real headless browser (Debian's chromium) where one is installed."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from PIL import Image

from pipeline.data.splits import load_split
from pipeline.reporting import gallery
from pipeline.serving.inference import load_trained
from tests.helpers.projects import write_project

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PROBE = """<script>
window.addEventListener("load", () => {
  const images = [...document.images];
  document.body.setAttribute("data-probe", JSON.stringify({
    images: images.length,
    broken: images.filter((img) => !(img.complete && img.naturalWidth > 0)).map((img) => img.id || img.alt),
    rows: document.querySelectorAll("#gallery tbody tr.user-row").length,
    columns: [...document.querySelectorAll("#gallery thead th.model")].map((th) => th.textContent),
    cells: document.querySelectorAll("#gallery tbody td.recs").length,
  }));
});
</script>"""


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def make_gallery(tmp_path: Path, count: int = 5) -> tuple[Path, dict]:
    """write_project's data and two untrained SASRecs; items get titles and title-card PNGs (one missing, one not an
    image), then the gallery of both models is written."""
    _, prepared, models = write_project(tmp_path)
    runs = []
    for name, path in (("sasrec", models / "model.pt"), ("baseline", models / "baseline" / "model.pt")):
        model, checkpoint, _ = load_trained(path, tmp_path / "features", prepared)
        runs.append((name, model, checkpoint["max_seq_len"]))
    images = prepared / "images"
    images.mkdir()
    items = pl.read_parquet(prepared / "items.parquet")
    paths = []
    for i in items["item_idx"].to_list():
        Image.new("RGB", (224, 224), (20 * i % 256, 90, 160)).save(images / f"{i}.png")
        paths.append(str(images / f"{i}.png"))
    (images / "2.png").write_bytes(b"not a png")
    paths[2] = str(images / "gone.png")  # item 3: file missing
    items.with_columns(
        pl.Series("image_path", paths), pl.Series("title", [f"Movie <{i}> & co" for i in items["item_idx"]])
    ).write_parquet(prepared / "items.parquet")
    out = tmp_path / "reports" / "gallery.html"
    gallery.export_gallery(out, runs, prepared, count=count, seed=3)
    return out, {"prepared": prepared, "count": count}


def test_sample_is_seeded_and_bounded() -> None:
    a, b = gallery.sample_users(100, 20, seed=0), gallery.sample_users(100, 20, seed=0)
    np.testing.assert_array_equal(a, b)
    assert len(set(a.tolist())) == 20 and list(a) == sorted(a)
    assert not np.array_equal(a, gallery.sample_users(100, 20, seed=1))
    assert len(gallery.sample_users(7, 20, seed=0)) == 7


def test_gallery_rows_columns_history_and_marked_target(tmp_path: Path) -> None:
    path, info = make_gallery(tmp_path)
    page = path.read_text(encoding="utf-8")
    assert page.count('<tr class="user-row"') == info["count"]
    assert re.findall(r'<th class="model">([^<]+)</th>', page) == ["sasrec top-10", "baseline top-10"]
    assert page.count('<td class="recs"') == 2 * info["count"]
    assert not re.findall(r'(?:src|href)="(?!data:)', page)  # self-contained: every image inlined, no links
    assert "Movie &lt;4&gt; &amp; co" in page and "<4>" not in page  # titles escaped
    split = load_split(info["prepared"])
    rows = gallery.sample_users(len(split), info["count"], seed=3)
    users = re.findall(r'<tr class="user-row" data-user="([^"]+)">(.*?)</tr>', page, flags=re.S)
    for (user_id, cells), row in zip(users, rows, strict=True):
        assert user_id == f"user{row}"
        history_cell, *model_cells = cells.split('<td class="recs"')
        shown = [int(i) for i in re.findall(r'data-item="(\d+)"', history_cell)]
        target = int(split.test_target[row])
        assert shown == [*split.history("test")[row][-10:].tolist(), target]  # last 10, then the held-out item
        for cell in model_cells:
            recs = [int(i) for i in re.findall(r'data-item="(\d+)"', cell)]
            assert len(recs) == min(10, 12 - len(split.history("test")[row])) and not set(recs) & set(shown[:-1])
            hits = re.findall(r'class="item hit" data-item="(\d+)"', cell)
            assert hits == ([str(target)] if target in recs else [])


def test_gallery_in_a_headless_browser(tmp_path: Path) -> None:
    """Every image decodes (naturalWidth > 0), one row per user, one column per model; a screenshot is saved."""
    browser = chromium()
    if browser is None:
        pytest.skip("no chromium on PATH; `apt-get install -y chromium` (.ci/run installs it on CI)")
    path, info = make_gallery(tmp_path)
    probe = tmp_path / "probe.html"
    canary = '<img id="canary" src="data:image/png;base64,AAAA">'  # undecodable: proves the probe sees breakage
    page = path.read_text(encoding="utf-8").replace("</body>", canary + PROBE + "</body>")
    probe.write_text(page, encoding="utf-8")
    flags = [browser, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"]
    dom = subprocess.run(
        [*flags, "--virtual-time-budget=10000", "--dump-dom", probe.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    found = re.search(r'data-probe="([^"]*)"', dom)
    assert found, dom[:500]
    result = json.loads(html.unescape(found.group(1)))
    assert result["broken"] == ["canary"]  # every gallery image decoded, placeholders included
    assert result["images"] >= info["count"] * 11 + 1  # history + target (+ top-10s) per user, + the canary
    assert result["rows"] == info["count"] and result["cells"] == 2 * info["count"]
    assert result["columns"] == ["sasrec top-10", "baseline top-10"]

    screenshot = tmp_path / "gallery.png"
    subprocess.run(
        [*flags, "--window-size=1400,1600", f"--screenshot={screenshot}", path.as_uri()],
        capture_output=True,
        timeout=120,
        check=True,
        cwd=tmp_path,
    )
    with Image.open(screenshot) as shot:
        assert shot.size == (1400, 1600)
        pixels = np.asarray(shot.convert("RGB").resize((64, 64))).reshape(-1, 3)
        assert len(np.unique(pixels, axis=0)) > 10  # not a blank page
