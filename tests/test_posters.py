"""MovieLens-1M posters: ``python -m stages.download ml1m_posters`` on a loopback server, and ``data.posters_dir``
in prepare (MovieID -> title through movies.dat, misses counted by reason). Every image here is generated."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import socket
import zipfile
from pathlib import Path

import polars as pl
import pytest
from PIL import Image
from typer.testing import CliRunner

from pipeline.config import ConfigError, DataConfig
from pipeline.data.posters import match_titles, read_movies_dat
from pipeline.data.prepare import prepare
from pipeline.data.schema import DataFormatError
from pipeline.download import DownloadConfig, DownloadError, download_dataset
from pipeline.download.catalog import BASE_URL_ENV
from stages.download import app
from tests.helpers.loopback import Loopback

TITLES = ["Toy Story (1995)", "Misérables, Les (1995)", "Alien³ (1992)", "Heat (1995)", "Unknown Film (2000)"]
# movies.dat as some copies have it: accents lost ("Miserables") or replaced by U+FFFD on a re-encoding
MOVIES_DAT = ["1::Toy Story (1995)::Animation", "73::Miserables, Les (1995)::Drama", "1320::Alien\ufffd (1992)::Horror",
              "6::Heat (1995)::Action", "7::Sabrina (1995)::Comedy"]  # fmt: skip
CFG = DataConfig(
    source="ml1m_recbole", path=None, images_dir=None, min_rating=None, user_core=3, item_core=1,
    dedupe="user_item", max_seq_len=20, cold_start_fraction=0.0, seed=0,
)  # fmt: skip


def jpeg(colour: tuple[int, int, int] = (120, 40, 200)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (12, 18), colour).save(buf, format="JPEG")
    return buf.getvalue()


def write_recbole_ml1m(root: Path, titles: list[str] = TITLES) -> Path:
    """RecBole ML-1M atomic files (item id = title with year); 6 users, each with every item."""
    root.mkdir(parents=True)
    inter = ["user_id:token\titem_id:token\trating:float\ttimestamp:float"]
    for user in range(1, 7):
        inter += [f"{user}\t{title}\t4\t{978300000 + 100 * user + k}" for k, title in enumerate(titles)]
    items = ["item_id:token\tmovie_title:token\trelease_year:float\tgenre:token"]
    items += [f"{t}\t{t[:-7]}\t{t[-5:-1]}\tDrama" for t in titles]
    (root / "ml-1m.inter").write_text("\n".join(inter) + "\n", encoding="utf-8")
    (root / "ml-1m.item").write_text("\n".join(items) + "\n", encoding="utf-8")
    return root


def write_posters(root: Path, files: dict[str, bytes], movies: list[str] = MOVIES_DAT) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "movies.dat").write_text("\n".join(movies) + "\n", encoding="utf-8")
    for name, body in files.items():
        (root / "images" / name).write_bytes(body)
    return root


# ----------------------------------------------------------------------------------------------------------------
# Title matching


def test_titles_match_exactly_then_without_accents_then_ignoring_non_ascii() -> None:
    titles = {"Toy Story (1995)": ["1"], "Miserables, Les (1995)": ["73"], "Alien\ufffd (1992)": ["1320"]}
    ids, counts = match_titles(["Toy Story (1995)", "Misérables, Les (1995)", "Alien³ (1992)", "Nope (1990)"], titles)
    assert ids == ["1", "73", "1320", None]
    assert counts == {"exact": 1, "accents_folded": 1, "non_ascii_ignored": 1, "not_in_movies_dat": 1}


def test_a_title_fitting_several_movie_ids_is_not_guessed() -> None:
    # two MovieIDs whose titles are equal once non-ASCII characters are dropped
    titles = {"Caf\ufffd (1990)": ["10"], "Caf\u00ff (1990)": ["11"], "Heat (1995)": ["6"]}
    ids, counts = match_titles(["Café (1990)", "Heat (1995)"], titles)
    assert ids == [None, "6"] and counts["ambiguous"] == 1 and counts["exact"] == 1
    # two items that only a loose step would put on one MovieID: neither gets it
    ids, counts = match_titles(["Cafè (1990)", "Café (1990)"], {"Cafe (1990)": ["10"]})
    assert ids == [None, None] and counts["ambiguous"] == 2
    # an exactly matched MovieID is never handed to a looser match
    ids, _ = match_titles(["Cafe (1990)", "Café (1990)"], {"Cafe (1990)": ["10"]})
    assert ids == ["10", None]


def test_malformed_movies_dat_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "movies.dat"
    path.write_text("1::Toy Story (1995)::Animation\nx::Heat (1995)::Action\n", encoding="utf-8")
    with pytest.raises(DataFormatError, match=r"movies.dat:2: .*movie_id.*Fix: data.posters_dir must hold"):
        read_movies_dat(path)


# ----------------------------------------------------------------------------------------------------------------
# prepare with data.posters_dir


def test_prepare_uses_posters_through_movies_dat_and_counts_misses(tmp_path: Path) -> None:
    posters = write_posters(tmp_path / "posters", {"1.jpg": jpeg(), "73.jpg": jpeg((9, 9, 9)), "1320.jpg": b"<html>"})
    cfg = dataclasses.replace(CFG, path=str(write_recbole_ml1m(tmp_path / "ml-1m")), posters_dir=str(posters))
    stats = prepare(cfg, tmp_path / "out")
    images = stats["images"]
    assert images["source"] == "movielens_posters"
    assert (images["present"], images["missing"], images["corrupt"]) == (2, 2, 1)
    p = images["posters"]
    assert p["title_matched"] == {"exact": 2, "accents_folded": 1, "non_ascii_ignored": 1}
    assert p["title_unmatched"] == {"not_in_movies_dat": 1, "ambiguous": 0}
    assert p["title_unmatched_examples"] == ["Unknown Film (2000)"]
    assert p["items_without_poster"] == {
        "no_title_match": 1,
        "no_image_file": 1,
        "corrupt": 1,
        "rejected_outside_root": 0,
    }
    assert p["items_with_poster"] == 2 and p["coverage"] == pytest.approx(2 / 5)
    assert any("real MovieLens-1M posters" in n and "2 of 5 items" in n for n in stats["notes"])
    assert not any("synthetic title card" in n for n in stats["notes"])
    paths = dict(pl.read_parquet(tmp_path / "out" / "items.parquet").select("item_id", "image_path").iter_rows())
    assert paths["Toy Story (1995)"] == str(posters / "images" / "1.jpg")
    assert paths["Misérables, Les (1995)"] == str(posters / "images" / "73.jpg")
    assert paths["Alien³ (1992)"] is None and paths["Heat (1995)"] is None and paths["Unknown Film (2000)"] is None
    index = json.loads((tmp_path / "out" / "images" / "index.json").read_text())
    assert sorted(Path(r["path"]).name for r in index["images"]) == ["1.jpg", "73.jpg"]


def test_prepare_without_posters_keeps_the_title_cards(tmp_path: Path) -> None:
    cfg = dataclasses.replace(CFG, path=str(write_recbole_ml1m(tmp_path / "ml-1m")))
    stats = prepare(cfg, tmp_path / "out")
    assert stats["images"]["source"] == "synthetic_title_cards" and "posters" not in stats["images"]
    assert any("synthetic title card" in n for n in stats["notes"])


def test_grouplens_items_are_movie_ids_already(tmp_path: Path, tiny_ml1m_dir: Path) -> None:
    posters = write_posters(tmp_path / "posters", {"1.jpg": jpeg(), "2.png": _png()}, movies=["1::x (1990)::Drama"])
    cfg = dataclasses.replace(CFG, source="movielens", path=str(tiny_ml1m_dir), posters_dir=str(posters))
    stats = prepare(cfg, tmp_path / "out")
    items = pl.read_parquet(tmp_path / "out" / "items.parquet")
    found = dict(items.select("item_id", "image_path").iter_rows())
    assert found["1"] == str(posters / "images" / "1.jpg") and found["2"] == str(posters / "images" / "2.png")
    assert stats["images"]["present"] == 2 and stats["images"]["missing"] == items.height - 2
    assert stats["images"]["posters"]["title_matched"]["exact"] == items.height


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (10, 10), (1, 2, 3)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize(
    ("change", "pattern"),
    [
        ({"source": "table"}, r"`data.posters_dir` .* read only by data.source: ml1m_recbole or movielens"),
        ({"images_dir": "somewhere"}, r"`data.posters_dir` and `data.images_dir` are both set"),
        (
            {"posters_dir": "nowhere"},
            r"`data.posters_dir` = 'nowhere': nowhere is not a directory.*stages.download ml1m",
        ),
    ],
)
def test_posters_dir_config_errors(tmp_path: Path, change: dict, pattern: str) -> None:
    posters = write_posters(tmp_path / "posters", {})
    cfg = dataclasses.replace(CFG, path=str(write_recbole_ml1m(tmp_path / "ml-1m")), posters_dir=str(posters))
    with pytest.raises(ConfigError, match=pattern):
        prepare(dataclasses.replace(cfg, **change), tmp_path / "out")


def test_posters_dir_without_movies_dat_says_how_to_get_it(tmp_path: Path) -> None:
    (tmp_path / "posters" / "images").mkdir(parents=True)
    cfg = dataclasses.replace(
        CFG, path=str(write_recbole_ml1m(tmp_path / "ml-1m")), posters_dir=str(tmp_path / "posters")
    )
    with pytest.raises(ConfigError, match=r"movies.dat is not a file\. Fix: .*python -m stages.download ml1m_posters"):
        prepare(cfg, tmp_path / "out")


# ----------------------------------------------------------------------------------------------------------------
# python -m stages.download ml1m_posters


def _ml1m_zip(movies: list[str]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("ml-1m/movies.dat", ("\n".join(movies) + "\n").encode("latin-1", "replace"))
        z.writestr("ml-1m/ratings.dat", "1::1::5::978300760\n")
    return buf.getvalue()


def _serve_posters(server: Loopback) -> None:  # noqa: F811
    archive = _ml1m_zip(["1::Toy Story (1995)::Animation", "73::Misérables, Les (1995)::Drama",
                         "1320::Alien³ (1992)::Horror", "6::Heat (1995)::Action"])  # fmt: skip
    server.add("/ml-1m.zip", archive)
    server.add("/ml-1m.zip.md5", f"{hashlib.md5(archive).hexdigest()}  ml-1m.zip\n".encode())
    url = server.url
    listing = f"item_id,image\n1,{url}/cdn/toy.jpg\n73,{url}/cdn/gone.jpg\n1320,\n6,{url}/cdn/page.html\n"
    server.add("/ml1m_images.csv", listing.encode())
    server.add("/cdn/toy.jpg", jpeg((200, 10, 10)))  # listed URL works
    server.add("/cdn/page.html", b"<html>not an image</html>")  # 200 but not an image; no repository copy either
    server.add("/images/73.jpg", jpeg((10, 200, 10)))  # listed URL 404s: the repository's copy is used
    server.add("/images/1320.jpg", jpeg((10, 10, 200)))  # listed without a URL: the repository's copy


def test_download_posters_then_prepare_uses_them(server, tmp_path, monkeypatch) -> None:  # noqa: F811
    _serve_posters(server)
    monkeypatch.setenv(BASE_URL_ENV, server.url)  # GroupLens' ml-1m.zip from the loopback server too
    out = tmp_path / "raw" / "ml1m_posters"
    args = ["ml1m_posters", "--out", str(out), "--retries", "0", "--workers", "2"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (out / "images").glob("*.jpg")) == ["1.jpg", "1320.jpg", "73.jpg"]
    assert (out / "movies.dat").read_bytes().startswith(b"1::Toy Story (1995)")
    manifest = json.loads((out / "images" / "manifest.json").read_text())
    assert manifest["ok"] == 3 and manifest["failed"] == 1 and manifest["items"] == 4
    (failed,) = [f for f in manifest["files"] if f["status"] == "failed"]
    assert failed["path"].endswith("6.jpg")
    assert "listed URL: not a readable image" in failed["reason"] and "repository copy: HTTP 404" in failed["reason"]
    raw = json.loads((out / "manifest.json").read_text())
    assert [Path(f["path"]).name for f in raw["files"]] == ["ml1m_images.csv", "ml-1m.zip"] and raw["failed"] == 0
    sums = (out / "SHA256SUMS").read_text().splitlines()
    digest = hashlib.sha256((out / "images" / "73.jpg").read_bytes()).hexdigest()
    assert len(sums) == 3 and f"{digest}  73.jpg" in sums

    # resume: finished posters are not asked for again; only the failed one is retried
    hits = {path: route.hits for path, route in server.routes.items()}
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0, again.output
    assert server.routes["/cdn/toy.jpg"].hits == hits["/cdn/toy.jpg"]
    assert server.routes["/images/73.jpg"].hits == hits["/images/73.jpg"]
    assert server.routes["/ml-1m.zip"].hits == hits["/ml-1m.zip"]
    assert server.routes["/cdn/page.html"].hits == hits["/cdn/page.html"] + 1

    cfg = dataclasses.replace(CFG, path=str(write_recbole_ml1m(tmp_path / "ml-1m")), posters_dir=str(out))
    stats = prepare(cfg, tmp_path / "prepared")
    assert stats["images"]["present"] == 3
    assert stats["images"]["posters"]["items_without_poster"]["no_image_file"] == 1  # Heat: its poster failed
    assert stats["images"]["posters"]["title_matched"] == {"exact": 4, "accents_folded": 0, "non_ascii_ignored": 0}


def test_local_url_list_and_its_errors(server, tmp_path, monkeypatch) -> None:  # noqa: F811
    _serve_posters(server)
    monkeypatch.setenv(BASE_URL_ENV, server.url)
    listing = tmp_path / "list.csv"
    listing.write_text(f"item_id,image\n1,{server.url}/cdn/toy.jpg\n")
    cfg = DownloadConfig("ml1m_posters", None, str(tmp_path / "out"), False, 2, 0, 2.0, None, str(listing))
    summary = download_dataset(cfg, progress=False)
    assert summary.ok and summary.images is not None and summary.images.failed == 0
    assert server.routes["/ml1m_images.csv"].hits == 0
    listing.write_text("id,url\n1,x\n")
    with pytest.raises(DownloadError, match=r"list.csv:1: header .* is not `item_id,image`"):
        download_dataset(cfg, progress=False)
    listing.write_text("item_id,image\n1,x\nabc,y\n")
    with pytest.raises(DownloadError, match=r"list.csv:3: 'abc,y' is not `<MovieID>,<URL>`"):
        download_dataset(cfg, progress=False)
    other = DownloadConfig("movielens1m", None, str(tmp_path / "o"), False, 1, 0, 1.0, None, str(listing))
    with pytest.raises(DownloadError, match="--url-list is read only by ml1m_posters"):
        download_dataset(other, progress=False)


def test_offline_fails_fast_with_a_clear_message(tmp_path, caplog) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = ["ml1m_posters", "--out", str(tmp_path / "p"), "--base-url", f"http://127.0.0.1:{port}", "--timeout", "2"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    assert f"cannot reach http://127.0.0.1:{port}/ml1m_images.csv" in caplog.text
    assert "no network is reachable" in caplog.text
