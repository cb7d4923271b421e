"""The downloader against a loopback HTTP server started by each test (127.0.0.1, a free port; no internet).

The server serves byte strings by path with scripted misbehaviour (404, 5xx, a slow answer, a truncated body,
ignored ``Range``) and records every request, so the tests assert what went over the wire: how many requests,
which ``Range`` headers, how many at once.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import socket
import struct
import time
import zipfile
import zlib
from pathlib import Path

import polars as pl
import pytest
from PIL import Image
from typer.testing import CliRunner

from pipeline.download import DownloadConfig, DownloadError, FetchOptions, RemoteFile, download_dataset
from pipeline.download.http import fetch_all, fetch_file
from pipeline.download.images import download_images, verify_image
from stages.download import app
from tests.helpers.loopback import Loopback, Route, jpeg

FIXTURES = Path(__file__).parent / "fixtures" / "real_formats"
FAST = FetchOptions(timeout=2.0, retries=3, backoff=0.01, max_backoff=0.05)


def _png(mode="L", size=(20, 20)) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, 128).save(buf, format="PNG")
    return buf.getvalue()


def _png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height`` (a decompression bomb)."""
    raw = _png()
    ihdr = struct.pack(">II", width, height) + raw[24:29]
    chunk = b"IHDR" + ihdr
    return raw[:8] + struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk)) + raw[33:]


# ----------------------------------------------------------------------------------------------------------------
# fetch_file / fetch_all


def test_404_is_recorded_and_not_retried(server, tmp_path):
    server.add("/other", b"x")
    result = fetch_file(RemoteFile(url=f"{server.url}/missing.gz", dest=tmp_path / "missing.gz"), FAST)
    assert not result.ok and result.reason.startswith("HTTP 404")
    assert result.attempts == 1
    assert not (tmp_path / "missing.gz").exists() and not (tmp_path / "missing.gz.part").exists()


def test_5xx_is_retried_with_backoff_then_succeeds(server, tmp_path):
    route = server.add("/f.bin", b"payload" * 100, fail_first=2)
    result = fetch_file(RemoteFile(url=f"{server.url}/f.bin", dest=tmp_path / "f.bin"), FAST)
    assert result.ok, result.reason
    assert route.hits == 3 and result.attempts == 3
    assert (tmp_path / "f.bin").read_bytes() == b"payload" * 100
    assert result.sha256 == hashlib.sha256(b"payload" * 100).hexdigest()


def test_persistent_5xx_gives_up_after_bounded_retries(server, tmp_path):
    route = server.add("/down", b"x", status=503)
    opts = FetchOptions(timeout=2.0, retries=2, backoff=0.01, max_backoff=0.02)
    result = fetch_file(RemoteFile(url=f"{server.url}/down", dest=tmp_path / "down"), opts)
    assert not result.ok and "gave up after 3 attempt(s)" in result.reason and "503" in result.reason
    assert route.hits == 3


def test_timeout_is_bounded(server, tmp_path):
    route = server.add("/slow", b"late", delay=1.0)
    opts = FetchOptions(timeout=0.2, retries=1, backoff=0.01, max_backoff=0.02)
    started = time.perf_counter()
    result = fetch_file(RemoteFile(url=f"{server.url}/slow", dest=tmp_path / "slow"), opts)
    elapsed = time.perf_counter() - started
    assert not result.ok and "timed out" in result.reason
    assert route.hits == 2 and result.attempts == 2
    assert elapsed < 2.0  # two 0.2 s timeouts, not two 1 s answers
    assert not (tmp_path / "slow").exists()


def test_truncated_body_is_retried_and_never_left_in_place(server, tmp_path):
    body = bytes(range(256)) * 40
    route = server.add("/t.bin", body, truncate=1000, ranges=False)  # always cut; Range ignored
    opts = FetchOptions(timeout=2.0, retries=2, backoff=0.01, max_backoff=0.02)
    result = fetch_file(RemoteFile(url=f"{server.url}/t.bin", dest=tmp_path / "t.bin"), opts)
    assert not result.ok and "truncated body: received 1000 of 10240 bytes" in result.reason
    assert route.hits == 3
    assert not (tmp_path / "t.bin").exists()  # the final name never holds a partial file


def test_truncated_body_resumes_with_range(server, tmp_path):
    body = bytes(range(256)) * 40
    route = server.add("/r.bin", body, truncate=4000, truncate_times=1)
    result = fetch_file(RemoteFile(url=f"{server.url}/r.bin", dest=tmp_path / "r.bin", size=len(body)), FAST)
    assert result.ok and result.reason == "resumed"
    assert route.range_headers == ["bytes=4000-"]
    assert (tmp_path / "r.bin").read_bytes() == body


def test_size_and_checksum_mismatch_fail_verification(server, tmp_path):
    server.add("/a", b"abc")
    opts = FetchOptions(timeout=2.0, retries=1, backoff=0.01, max_backoff=0.02)
    bad_sha = fetch_file(RemoteFile(url=f"{server.url}/a", dest=tmp_path / "a", sha256="0" * 64), opts)
    assert not bad_sha.ok and "sha256 mismatch" in bad_sha.reason and not (tmp_path / "a").exists()
    good = hashlib.md5(b"abc").hexdigest()
    assert fetch_file(RemoteFile(url=f"{server.url}/a", dest=tmp_path / "a", md5=good, size=3), opts).ok


def test_concurrency_bound_is_respected(server, tmp_path):
    files = []
    for i in range(12):
        server.add(f"/c{i}", b"x" * 100, delay=0.15)
        files.append(RemoteFile(url=f"{server.url}/c{i}", dest=tmp_path / f"c{i}"))
    results = fetch_all(files, FAST, workers=3, progress=False)
    assert all(r.ok for r in results)
    assert 2 <= server.max_active <= 3
    assert [r.path for r in results] == [str(f.dest) for f in files]  # input order


# ----------------------------------------------------------------------------------------------------------------
# Images


def _items(server: Loopback) -> pl.DataFrame:
    cmyk = io.BytesIO()
    Image.new("CMYK", (16, 16), (0, 120, 200, 10)).save(cmyk, format="JPEG")
    good = jpeg()
    bodies = {
        "good": ("/img/good.jpg", good),
        "cmyk": ("/img/cmyk.jpg", cmyk.getvalue()),
        "gray_png_as_jpg": ("/img/gray.jpg", _png()),
        "corrupt": ("/img/corrupt.jpg", b"\xff\xd8\xff\xe0" + bytes(range(200)) * 3),
        "truncated": ("/img/trunc.jpg", jpeg(size=(256, 256))[:300]),
        "html": ("/img/error.jpg", b"<html><body>Service temporarily unavailable</body></html>"),
        "bomb": ("/img/bomb.png", _png_claiming(20_000, 20_000)),
        "gif": ("/img/anim.gif", _gif()),
    }
    for path, body in bodies.values():
        server.add(path, body)
    rows = [(item, server.url + path) for item, (path, _) in bodies.items()]
    rows += [("no_url", None), ("gone", server.url + "/img/gone.jpg")]
    return pl.DataFrame(rows, schema={"item_id": pl.String, "image_ref": pl.String}, orient="row")


def _gif() -> bytes:
    buf = io.BytesIO()
    Image.new("P", (10, 10), 3).save(buf, format="GIF")
    return buf.getvalue()


def test_images_verified_stored_by_item_id_and_manifested(server, tmp_path):
    items = _items(server)
    images = tmp_path / "images"
    summary = download_images(items, images, FAST, workers=4, progress=False)
    status = {Path(r.url).stem: (r.status, r.reason) for r in summary.results}
    assert summary.without_url == 1
    for name in ("good", "cmyk", "gray", "anim"):
        assert status[name][0] == "ok", status[name]
    for name in ("corrupt", "trunc", "error", "bomb"):
        assert status[name][0] == "failed" and "image" in status[name][1], status[name]
    assert status["gone"] == ("failed", "HTTP 404 Not Found")
    files = sorted(p.name for p in images.iterdir() if p.name != "manifest.json")
    # the extension follows the real format; GIF is converted to PNG; failed downloads leave nothing behind
    assert files == ["cmyk.jpg", "gif.png", "good.jpg", "gray_png_as_jpg.png"]
    manifest = json.loads((images / "manifest.json").read_text())
    assert manifest["ok"] == 4 and manifest["failed"] == 5 and len(manifest["files"]) == 9

    # a second run requests nothing for the images already stored
    hits = {p: r.hits for p, r in server.routes.items()}
    again = download_images(items, images, FAST, workers=4, progress=False)
    assert sum(r.ok for r in again.results) == 4
    assert server.routes["/img/good.jpg"].hits == hits["/img/good.jpg"]
    assert server.routes["/img/anim.gif"].hits == hits["/img/anim.gif"]
    assert server.routes["/img/corrupt.jpg"].hits == hits["/img/corrupt.jpg"] + 1  # failed ones are retried


def test_verify_image_modes(tmp_path):
    for name, data in {"rgb.jpg": jpeg(), "gray.png": _png("L"), "la.png": _png("LA")}.items():
        (tmp_path / name).write_bytes(data)
        assert verify_image(tmp_path / name) is None, name
    noisy = io.BytesIO()
    Image.effect_noise((256, 256), 60).convert("RGB").save(noisy, format="JPEG")
    for cut in (400, len(noisy.getvalue()) * 2 // 3):  # in the headers / in the pixel data
        (tmp_path / "t.jpg").write_bytes(noisy.getvalue()[:cut])
        assert "truncated" in (verify_image(tmp_path / "t.jpg") or "").lower(), cut


# ----------------------------------------------------------------------------------------------------------------
# Whole data sets (catalogue, manifest, resume, CLI)


def _serve_amazon2023(server: Loopback) -> dict[str, Route]:
    reviews = (FIXTURES / "amazon2023" / "All_Beauty.jsonl").read_bytes()
    meta = (FIXTURES / "amazon2023" / "meta_All_Beauty.jsonl").read_text(encoding="utf-8")
    meta = meta.replace("https://m.media-amazon.com/images/I/", f"{server.url}/images/I/")
    routes = {
        "reviews": server.add("/review_categories/All_Beauty.jsonl.gz", gzip.compress(reviews), fail_first=1),
        "meta": server.add("/meta_categories/meta_All_Beauty.jsonl.gz", gzip.compress(meta.encode("utf-8"))),
    }
    for i in range(24):
        item = f"B0000010{i:02d}"
        for suffix in (".jpg", "._SL1500_.jpg"):
            server.add(f"/images/I/{item}{suffix}", jpeg((i * 10, 50, 90)))
    return routes


def _config(server: Loopback, out: Path, **kw: object) -> DownloadConfig:
    base = {"dataset": "amazon2023", "category": "All_Beauty", "out": str(out), "images": False, "workers": 4,
            "retries": 0, "timeout": 2.0, "base_url": server.url}  # fmt: skip
    return DownloadConfig(**{**base, **kw})


def test_interrupted_download_resumes_without_refetching(server, tmp_path):
    routes = _serve_amazon2023(server)
    out = tmp_path / "raw"
    first = download_dataset(_config(server, out), progress=False)  # the reviews file fails once (503)
    manifest = json.loads((out / "manifest.json").read_text())
    assert not first.ok and manifest["ok"] == 1 and manifest["failed"] == 1
    failed = [f for f in manifest["files"] if f["status"] == "failed"]
    assert failed[0]["url"].endswith("All_Beauty.jsonl.gz") and "503" in failed[0]["reason"]

    second = download_dataset(_config(server, out, images=True), progress=False)
    assert second.ok
    assert routes["meta"].hits == 1  # finished in the first run: not requested again
    assert routes["reviews"].hits == 2
    manifest = json.loads((out / "manifest.json").read_text())
    assert [f["reason"] for f in manifest["files"]] == ["downloaded", "already present"]
    # images: one per item of the reader's items table (items with reviews); item 7 has no image in the meta
    assert second.images is not None and second.images.failed == 0
    stored = {p.stem for p in (out / "images").glob("*.jpg")}
    assert len(stored) == 23 and "B000001007" not in stored


def test_offline_fails_fast_naming_the_url(tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = DownloadConfig("amazon2023", "All_Beauty", str(tmp_path), False, 2, 3, 5.0, f"http://127.0.0.1:{port}")
    started = time.perf_counter()
    with pytest.raises(DownloadError) as info:
        download_dataset(cfg, progress=False)
    assert f"http://127.0.0.1:{port}/review_categories/All_Beauty.jsonl.gz" in str(info.value)
    assert "no network is reachable" in str(info.value)
    assert time.perf_counter() - started < 2.0


def test_manual_and_unknown_datasets_explain_what_to_do(tmp_path):
    with pytest.raises(DownloadError, match="kaggle competitions download"):
        download_dataset(DownloadConfig("hm", None, str(tmp_path), False, 1, 0, 1.0, None), progress=False)
    with pytest.raises(DownloadError, match="recsys.westlake.edu.cn"):
        download_dataset(DownloadConfig("microlens", None, str(tmp_path), False, 1, 0, 1.0, None), progress=False)
    with pytest.raises(DownloadError, match="must be one of"):
        download_dataset(DownloadConfig("amazon2023", "Beauty", str(tmp_path), False, 1, 0, 1.0, None))


def _ml100k_zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name in ("u.data", "u.item", "u.genre"):
            z.write(FIXTURES / "ml-100k" / name, f"ml-100k/{name}")
    return buf.getvalue()


def test_cli_downloads_verifies_md5_and_extracts(server, tmp_path):
    archive = _ml100k_zip()
    server.add("/ml-100k.zip", archive)
    server.add("/ml-100k.zip.md5", f"MD5 (ml-100k.zip) = {hashlib.md5(archive).hexdigest()}\n".encode())
    out = tmp_path / "ml"
    args = ["movielens100k", "--out", str(out), "--base-url", server.url, "--retries", "0", "--workers", "2"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert (out / "ml-100k" / "u.data").read_bytes() == (FIXTURES / "ml-100k" / "u.data").read_bytes()
    assert json.loads((out / "manifest.json").read_text())["files"][0]["status"] == "ok"

    server.routes["/ml-100k.zip.md5"].body = b"0123456789abcdef0123456789abcdef  ml-100k.zip\n"
    (out / "ml-100k.zip").unlink()
    failed = CliRunner().invoke(app, args)
    assert failed.exit_code == 1
    reason = json.loads((out / "manifest.json").read_text())["files"][0]["reason"]
    assert "md5 mismatch" in reason


def test_cli_reads_the_download_section_of_params(server, tmp_path):
    archive = _ml100k_zip()
    server.add("/ml-100k.zip", archive)  # no .md5 published here: size is still checked
    out = tmp_path / "from_params"
    params = tmp_path / "params.yaml"
    params.write_text(
        "download:\n  dataset: movielens100k\n  category: null\n"
        f"  out: {out}\n  images: false\n  workers: 2\n  retries: 0\n  timeout: 5\n  base_url: {server.url}\n"
        "  url_list: null\n"
    )
    result = CliRunner().invoke(app, ["--params", str(params)])
    assert result.exit_code == 0, result.output
    assert (out / "ml-100k" / "u.item").is_file()
    assert server.routes["/ml-100k.zip"].hits == 1
