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
from tests.helpers.loopback import Loopback


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
    from tests.helpers.data import T0, table_cfg, write_table

    root = write_table(tmp_path / "raw", "uid,sku,ts\n")
    (root / "events").mkdir()
    (root / "events" / "part-0.csv").write_text(f"uid,sku,ts\nu1,A,{T0}\n", encoding="utf-8")
    outside = tmp_path / "elsewhere" / "secret.csv"
    outside.parent.mkdir()
    outside.write_text(f"uid,sku,ts\nspy,B,{T0}\n", encoding="utf-8")
    (root / "events" / "part-1.csv").symlink_to(outside)
    for spec in ("events", "events/part-*.csv"):
        raw = get_reader("table")(table_cfg(root, interactions=spec))
        assert raw.interactions.collect()["user_id"].to_list() == ["u1"]  # the secret's row is never read
        assert any("1 file(s) rejected_outside_root" in n and "part-1.csv" in n for n in raw.notes)


def test_files_checked_against_root_at_open_images_in_embed_and_gallery(tmp_path: Path) -> None:
    from PIL import Image

    from pipeline.data.images import attach_images, checked_image, image_root, resolve_image_path
    from pipeline.features.inputs import image_inputs
    from tests.helpers.data import image_ref_items

    images, prepared = tmp_path / "posters", tmp_path / "prepared"
    Image.new("RGB", (8, 8)).save(images.mkdir() or images / "a.png")
    Image.new("RGB", (8, 8)).save(images / "b.png")
    items, _ = attach_images(image_ref_items(["a", "b"], [None, None]), str(images), prepared)
    assert image_root(prepared) == images.resolve()
    secret = tmp_path / "secret.png"
    Image.new("RGB", (8, 8), (255, 0, 0)).save(secret)
    (images / "b.png").unlink()
    (images / "b.png").symlink_to(secret)  # replaced after prepare checked it: caught when opened
    paths = items["image_path"].to_list()
    inputs = image_inputs(["a", "b"], paths, image_root(prepared))
    assert inputs.counts["rejected_outside_root"] == 1 and inputs.digests[1] is None and inputs.digests[0]
    root = image_root(prepared)
    assert checked_image(resolve_image_path(paths[0], prepared, root), root) == (Path(paths[0]), "ok")
    assert checked_image(resolve_image_path(paths[1], prepared, root), root) == (None, "rejected_outside_root")


def test_files_checked_against_root_at_open_recbole_files(tmp_path: Path) -> None:
    from pipeline.data.readers import get_reader
    from pipeline.data.schema import DataFormatError
    from tests.helpers.data import RECBOLE_INTER, RECBOLE_ITEM, recbole_cfg, write_recbole

    elsewhere = write_recbole(tmp_path / "elsewhere", "x", RECBOLE_INTER, RECBOLE_ITEM)
    root = write_recbole(tmp_path / "Beauty", "Beauty", RECBOLE_INTER)
    (root / "Beauty.item").symlink_to(elsewhere / "x.item")
    raw = get_reader("recbole")(recbole_cfg(root))
    assert any("Beauty.item: 1 file rejected_outside_root" in n for n in raw.notes)
    assert set(raw.items["text"].to_list()) == {""}  # the outside file's text never arrives
    (root / "Beauty.inter").unlink()
    (root / "Beauty.inter").symlink_to(elsewhere / "x.inter")
    with pytest.raises(DataFormatError, match=r"Beauty.inter: rejected_outside_root: it resolves to .*x.inter"):
        get_reader("recbole")(recbole_cfg(root))


# ----------------------------------------------------------------------------------------------------------------
# 3. No two items share a derived file name; null-like ids are missing


def _table_with_images(tmp_path: Path, rows: list[tuple[str, str]]):  # noqa: ANN202 - a DataConfig
    from pipeline.config import TableItemColumns
    from tests.helpers.data import T0, table_cfg, write_table

    items = "sku,name,img\n" + "".join(f'"{sku}",Thing,{img}\n' for sku, img in rows)
    events = "uid,sku,ts\n" + "".join(f'u{u},"{s}",{T0 + i}\n' for u in range(3) for i, (s, _) in enumerate(rows))
    root = write_table(tmp_path / "raw", events, items=items)
    images = tmp_path / "images"
    images.mkdir(exist_ok=True)
    return table_cfg(root, images, item_columns=TableItemColumns(id="sku", text=["name"], image="img"))


def test_no_two_items_share_a_file_name_in_download_and_prepare(tmp_path: Path, server: Loopback) -> None:
    import json

    import polars as pl

    from pipeline.data.paths import file_stems
    from pipeline.data.prepare import prepare
    from pipeline.download.http import FetchOptions
    from pipeline.download.run import download_table_images
    from tests.helpers.loopback import jpeg

    long_id = "x" * 300
    server.add("/1.jpg", jpeg((200, 0, 0)))
    server.add("/2.jpg", jpeg((0, 0, 200)))
    server.add("/3.jpg", jpeg((0, 200, 0)))
    rows = [("a/b", f"{server.url}/1.jpg"), ("a_b", f"{server.url}/2.jpg"), (long_id, f"{server.url}/3.jpg")]
    cfg = _table_with_images(tmp_path, rows)
    summary = download_table_images(cfg, FetchOptions(timeout=5, retries=0), 2, progress=False)
    assert summary.failed == 0 and summary.renamed == 2  # a/b and the 300-character id
    assert [r.reason for r in summary.results] == ["downloaded"] * 3  # never "ok, already present"
    manifest = json.loads((Path(cfg.images_dir) / "manifest.json").read_text())
    assert manifest["renamed_file_names"] == 2 and len({r["path"] for r in manifest["files"]}) == 3
    stems, _ = file_stems(["a/b", "a_b", long_id])
    assert stems[1] == "a_b" and stems[0].startswith("a_b~") and len(stems[2].encode()) <= 200

    stats = prepare(cfg, tmp_path / "prepared")
    assert stats["images"]["present"] == 3 and stats["images"]["renamed_file_names"] == 2
    items = pl.read_parquet(tmp_path / "prepared" / "items.parquet").sort("item_id")
    paths = dict(zip(items["item_id"], items["image_path"], strict=True))
    assert len(set(paths.values())) == 3 and paths["a_b"].endswith("/a_b.jpg")


def test_no_two_items_share_a_file_name_null_like_ids_are_missing(tmp_path: Path) -> None:
    import polars as pl

    from pipeline.config import TableColumns, TableItemColumns
    from pipeline.data.readers import get_reader
    from tests.helpers.data import T0, table_cfg

    root = tmp_path / "raw"
    root.mkdir()
    pl.DataFrame(
        {"uid": [1.0, float("nan"), 2.0, 3.0], "sku": [10.0, 10.0, float("nan"), float("inf")], "ts": [T0] * 4}
    ).write_parquet(root / "events.parquet")
    pl.DataFrame({"sku": [10.0, float("nan")], "name": ["ten", "nan item"]}).write_parquet(root / "items.parquet")
    cfg = table_cfg(
        root, interactions="events.parquet", items="items.parquet", columns=TableColumns("uid", "sku", "ts"),
        item_columns=TableItemColumns(id="sku", text=["name"]),
    )  # fmt: skip
    raw = get_reader("table")(cfg)
    assert raw.interactions.collect()["item_id"].to_list() == ["10"]  # never a user or item called "NaN"
    assert raw.drops["missing_user"] == 1 and raw.drops["missing_item"] == 2
    assert raw.items["item_id"].to_list() == ["10"]
    assert any("items.parquet: 1 record(s) without an item id" in n for n in raw.notes)


# ----------------------------------------------------------------------------------------------------------------
# 4. The features' manifest fingerprints the content it encoded


def test_features_fingerprint_content_stale_text_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import polars as pl

    from pipeline.features.embed import embed_items
    from pipeline.features.store import load_catalog
    from tests.fixtures import fake_encoder
    from tests.helpers.data import write_dataset

    fake_encoder.register_for(monkeypatch)
    prepared = write_dataset(tmp_path)
    embed_items(prepared / "items.parquet", tmp_path / "features", tmp_path / "cache", fake_encoder.config(4))
    assert load_catalog(tmp_path / "features", prepared, ("text",)).features["text"].shape == (9, fake_encoder.DIM)
    items = pl.read_parquet(prepared / "items.parquet")
    items.with_columns(pl.col("text") + " (retitled)").write_parquet(prepared / "items.parquet")  # same ids
    with pytest.raises(ValueError, match=r"features/manifest.json: the text features were encoded from other texts "
                       r"than .*items.parquet holds now \(stale features\). Run `dvc repro embed`"):  # fmt: skip
        load_catalog(tmp_path / "features", prepared, ("text",))


def test_features_fingerprint_content_changed_image_bytes_are_refused(tmp_path: Path) -> None:
    import os

    import polars as pl
    from PIL import Image

    from pipeline.features.inputs import content_fingerprint, files_hash
    from pipeline.features.store import check_content

    prepared = tmp_path / "prepared"
    (prepared / "images").mkdir(parents=True)
    paths = []
    for i in (1, 2):
        Image.new("RGB", (8, 8), (i, 0, 0)).save(prepared / "images" / f"{i}.png")
        paths.append(str(prepared / "images" / f"{i}.png"))
    items = pl.DataFrame({"item_idx": [1, 2], "item_id": ["a", "b"], "text": ["", ""], "image_path": paths})
    items.write_parquet(prepared / "items.parquet")
    entry = {"inputs_hash": content_fingerprint("image", items, prepared), "files_hash": files_hash(paths)}
    check_content(tmp_path / "features", prepared, "image", entry)
    os.utime(paths[0], ns=(1, 1))  # touched, same bytes: still accepted (re-hashed once)
    check_content(tmp_path / "features", prepared, "image", entry)
    Image.new("RGB", (8, 8), (0, 0, 99)).save(paths[1])  # a new picture under the same name
    with pytest.raises(ValueError, match=r"the image features were encoded from other images"):
        check_content(tmp_path / "features", prepared, "image", entry)


# ----------------------------------------------------------------------------------------------------------------
# 5. Every section is range-checked at load; every user-controlled size is capped


@pytest.mark.parametrize(
    ("section", "key", "value", "message"),
    [
        ("baseline", "model.hidden_dim", 0, r"`baseline.model.hidden_dim` = 0 must be >= 1"),
        ("baseline", "model.num_heads", 3, r"`baseline.model.num_heads` = 3 must divide `baseline.model.hidden_dim`"),
        ("baseline", "train.epochs", -1, r"`baseline.train.epochs` = -1 must be >= 1"),
        ("train", "seed", 4294967296, r"`train.seed` = 4294967296 must be in \[0, 4294967295\]"),
        ("evaluate", "bootstrap_seed", -1, r"`evaluate.bootstrap_seed` = -1 must be in \[0, 4294967295\]"),
        ("evaluate", "bootstrap_resamples", 0, r"`evaluate.bootstrap_resamples` = 0 must be >= 1"),
        ("data", "max_seq_len", 10**15, r"`data.max_seq_len` = 1000000000000000 must be in \[1, 100000\]"),
        ("recommend", "gallery_seed", 2**40, r"`recommend.gallery_seed` = 1099511627776 must be in \[0, 4294967295\]"),
    ],
)
def test_every_section_range_checked_at_load_naming_key_and_file(
    tmp_path: Path, section: str, key: str, value: object, message: str
) -> None:
    from pipeline.config import (
        BaselineConfig,
        ConfigError,
        DataConfig,
        EvaluateConfig,
        RecommendConfig,
        TrainConfig,
        load_section,
    )
    from tests.helpers.dvc_project import params_with

    classes = {"baseline": BaselineConfig, "train": TrainConfig, "evaluate": EvaluateConfig, "data": DataConfig}
    path = params_with(tmp_path, section, key, value, name="mine.yaml")
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))}: {message}"):
        load_section(classes.get(section, RecommendConfig), section, path)


def test_every_section_range_checked_yaml_merge_keys_and_aliases(tmp_path: Path) -> None:
    from pipeline.config import ConfigError, load_raw

    path = tmp_path / "p.yaml"
    path.write_text("base: &b\n  seed: 1\ntrain:\n  <<: *b\n  epochs: 2\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"p.yaml:\d+: YAML (merge keys \(`<<:`\)|aliases).* not supported"):
        load_raw(path)
    path.write_text("train:\n  <<: {seed: 1}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"p.yaml:2: YAML merge keys \(`<<:`\) are not supported in a params file"):
        load_raw(path)
    laughs = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 9)}]\n" for i in range(8)
    )
    path.write_text(laughs, encoding="utf-8")
    with pytest.raises(
        ConfigError, match=r"YAML aliases \(`\*name`, also as merge keys `<<: \*name`\) are not supported"
    ):
        load_raw(path)


def test_every_user_controlled_size_capped_k_by_item_count(tmp_path: Path) -> None:
    import numpy as np

    from pipeline.evaluation import retrieval

    vectors = np.vstack([np.zeros((1, 4)), np.eye(4, dtype=np.float32)[[0, 1, 2, 3, 0, 1, 2]]]).astype(np.float32)
    items, scores = retrieval.top_k(np.ones((2, 4), np.float32), vectors, [np.array([1]), np.array([])], 10**9)
    assert items.shape == (2, 7) and (items[0] == -1).sum() == 1 and set(items[1]) == set(range(1, 8))


def test_every_user_controlled_size_capped_title_card_is_linear(tmp_path: Path) -> None:
    from pipeline.data.images import _font, _wrap

    calls = []
    font = _font(20)

    class Counting:
        def getlength(self, text: str) -> float:
            calls.append(len(text))
            return font.getlength(text)

    for n in (2_000, 200_000):
        calls.clear()
        lines = _wrap("x" * n, Counting(), 196, 6)  # type: ignore[arg-type]
        assert len(lines) == 6 and lines[-1].endswith("...")
        assert sum(calls) < 50_000  # measured work does not grow with the title (was quadratic: 74 s for 18k)


class _Endless:
    """A loopback server whose body never ends (and one that announces a huge Content-Length)."""

    def __init__(self) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server API
                self.send_response(200)
                if self.path == "/announced.jpg":
                    self.send_header("Content-Length", str(10**12))
                self.end_headers()
                try:
                    while True:
                        self.wfile.write(b"\xff" * 65536)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def test_every_user_controlled_size_capped_endless_download_stops_and_leaves_nothing(tmp_path: Path) -> None:
    import polars as pl

    from pipeline.download.http import FetchOptions, RemoteFile, fetch_file
    from pipeline.download.images import download_images

    server = _Endless()
    try:
        opts = FetchOptions(timeout=5, retries=2, max_bytes=3 << 20, max_image_bytes=1 << 20)
        result = fetch_file(RemoteFile(url=f"{server.url}/stream.bin", dest=tmp_path / "f.bin"), opts)
        assert result.status == "failed" and "exceeds the limit of 3,145,728 bytes" in result.reason
        assert result.attempts == 1  # never retried
        items = pl.DataFrame(
            {"item_id": ["a", "b"], "image_ref": [f"{server.url}/x.jpg", f"{server.url}/announced.jpg"]}
        )
        summary = download_images(items, tmp_path / "images", opts, 2, progress=False)
    finally:
        server.close()
    assert summary.failed == 2 and all("limit of 1,048,576 bytes" in r.reason for r in summary.results)
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["manifest.json"]


def test_every_user_controlled_size_capped_evaluate_ks_by_item_count() -> None:
    import numpy as np

    from pipeline.evaluation.ranking import evaluate_vectors

    vectors = np.vstack([np.zeros((1, 4)), np.eye(4)[[0, 1, 2, 3, 0, 1, 2]]]).astype(np.float32)  # 7 items
    with pytest.raises(ValueError, match=r"`evaluate.ks` = \[10, 1000000000\]: K = 1000000000 is more than the 7 "):
        evaluate_vectors("m", None, vectors, lambda stage: np.ones((1, 4), np.float32), [10**9, 10])  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------------------------------------
# 6. Training stages publish their outputs together


def test_training_outputs_published_together_a_failed_run_keeps_the_previous_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pipeline.training.job
    from stages.train import app
    from tests.helpers.training import write_stage_project

    argv = [*write_stage_project(tmp_path), "--out", str(tmp_path / "models")]
    assert CliRunner().invoke(app, argv).exit_code == 0
    before = _tree(tmp_path / "models")
    assert {"model.pt", "train_summary.json", "dvclive/metrics.json"} <= set(before)
    real_fit = pipeline.training.job.fit

    def failing_fit(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        real_fit(*args, **kwargs)  # dvclive has logged this run's epochs (into the staging folder)
        raise RuntimeError("disk full")

    monkeypatch.setattr(pipeline.training.job, "fit", failing_fit)
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 1 and "disk full" in result.output
    assert _tree(tmp_path / "models") == before  # model.pt, train_summary.json and dvclive/ all from the first run
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".models.")]  # no staging folder left


def test_training_outputs_published_together_sigterm_keeps_the_previous_set(tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    from stages.train import app
    from tests.helpers.training import write_stage_project

    argv = [*write_stage_project(tmp_path), "--out", str(tmp_path / "models")]
    assert CliRunner().invoke(app, argv).exit_code == 0
    before = _tree(tmp_path / "models")
    script = (
        "import sys, time, pipeline.training.job as j\n"
        "real = j.fit\n"
        "def slow(*a, **k):\n"
        "    r = real(*a, **k)\n"
        "    open(sys.argv[1], 'w').close()\n"
        "    time.sleep(120)\n"
        "    return r\n"
        "j.fit = slow\n"
        "from stages.train import app\n"
        "app(sys.argv[2:])\n"
    )
    flag = tmp_path / "trained"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen(
        [sys.executable, "-c", script, str(flag), *argv], env=env, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 120
    while not flag.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert flag.exists(), proc.stderr.read() if proc.poll() is not None else "training never finished"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM and "terminated by SIGTERM" in err
    assert _tree(tmp_path / "models") == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".models.")]


def test_training_outputs_published_together_staged_folders_of_killed_runs_are_removed(tmp_path: Path) -> None:
    import os

    from pipeline.io import staged_outputs

    dead = tmp_path / ".models.staged.999999999.abc123"  # no such process
    legacy = tmp_path / ".models.staged.k2j4h5"  # written before staging folders carried a pid
    mine = tmp_path / f".models.staged.{os.getpid()}.live"  # a running process's: kept
    for folder in (dead, legacy, mine):
        (folder / "dvclive").mkdir(parents=True)
    with staged_outputs(tmp_path / "models", ["a"]) as stage:
        (stage / "a").write_text("new")
    assert not dead.exists() and not legacy.exists() and mine.exists()
    assert (tmp_path / "models" / "a").read_text() == "new"


# ----------------------------------------------------------------------------------------------------------------
# 7. A corrupt cache shard is named, skipped and re-encoded; one bad item never stops a download


def _flip_inside(npz: Path, member: str) -> None:
    """Flip one byte of ``member``'s stored data: the zip's CRC check fails when (and only when) it is read."""
    import zipfile

    with zipfile.ZipFile(npz) as z:
        info = z.getinfo(member)
    data = bytearray(npz.read_bytes())
    name_len, extra_len = (
        int.from_bytes(data[info.header_offset + 26 : info.header_offset + 28], "little"),
        int.from_bytes(data[info.header_offset + 28 : info.header_offset + 30], "little"),
    )
    start = info.header_offset + 30 + name_len + extra_len
    data[start + info.compress_size - 1] ^= 0xFF  # the last byte of the array data, past the .npy header
    npz.write_bytes(bytes(data))


def test_corrupt_cache_shard_is_named_skipped_and_reencoded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    import numpy as np

    from pipeline.features.embed import embed_items
    from tests.fixtures import fake_encoder
    from tests.helpers.data import write_items
    from tests.helpers.encoders import titles

    fake_encoder.register_for(monkeypatch)
    items = write_items(tmp_path / "items.parquet", titles(12))
    cache = tmp_path / "cache"
    embed_items(items, tmp_path / "first", cache, fake_encoder.config(4))
    shards = sorted(cache.rglob("shard-*.npz"))
    assert len(shards) == 3
    _flip_inside(shards[1], "pooled.npy")
    with caplog.at_level(logging.WARNING):
        manifest = embed_items(items, tmp_path / "second", cache, fake_encoder.config(4))
    assert f"{shards[1]} is corrupt" in caplog.text
    assert manifest["modalities"]["text"]["encoded"] == 4  # the bad shard's four inputs, nothing else
    assert np.array_equal(np.load(tmp_path / "first" / "text.npy"), np.load(tmp_path / "second" / "text.npy"))
    assert (shards[1].parent / f".corrupt-{shards[1].name}").exists() and not shards[1].exists()
    third = embed_items(items, tmp_path / "third", cache, fake_encoder.config(4))
    assert third["modalities"]["text"]["encoded"] == 0  # the replacement shard serves the next run


def test_one_bad_item_never_stops_a_download_run(tmp_path: Path, server: Loopback) -> None:
    import json

    import polars as pl

    from pipeline.download.http import FetchOptions
    from pipeline.download.images import download_images
    from tests.helpers.loopback import jpeg

    images = tmp_path / "images"
    (images / "b.jpg.part").mkdir(parents=True)  # b's download cannot be written here: a local failure for b alone
    for name in ("a", "b", "c"):
        server.add(f"/{name}.jpg", jpeg())
    ids = ["a", "b", "c", "y" * 300]
    urls = [f"{server.url}/{i}.jpg" for i in ("a", "b", "c", "a")]
    summary = download_images(pl.DataFrame({"item_id": ids, "image_ref": urls}), images, FetchOptions(5, 0), 2,
                              progress=False)  # fmt: skip
    assert [r.status for r in summary.results] == ["ok", "failed", "ok", "ok"]
    assert summary.results[1].reason.startswith("IsADirectoryError: ")
    assert len(json.loads((images / "manifest.json").read_text())["files"]) == 4


# ----------------------------------------------------------------------------------------------------------------
# 8. Every error that comes from a file names the file


@pytest.fixture
def embedded_fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    from pipeline.features.embed import embed_items
    from tests.fixtures import fake_encoder
    from tests.helpers.data import write_dataset

    fake_encoder.register_for(monkeypatch)
    prepared = write_dataset(tmp_path)
    embed_items(prepared / "items.parquet", tmp_path / "features", tmp_path / "cache", fake_encoder.config(4))
    return prepared, tmp_path / "features"


@pytest.mark.parametrize(
    ("file", "damage", "message"),
    [
        (
            "prepared/items.parquet",
            "truncate",
            r"items.parquet: not a readable Parquet file \(.*\). Run `dvc repro prepare`",
        ),
        (
            "prepared/sequences.parquet",
            "random",
            r"sequences.parquet: not a readable Parquet file .* Run `dvc repro prepare`",
        ),
        ("features/text.npy", "truncate", r"text.npy: not a readable .npy array \(.*\). Run `dvc repro embed`"),
        ("features/text_mask.npy", "random", r"text_mask.npy: not a readable .npy array \(.*\). Run `dvc repro embed`"),
        ("features/manifest.json", "truncate", r"manifest.json:\d+:\d+: not valid JSON \(.*\). Run `dvc repro embed`"),
        ("features/manifest.json", "list", r"manifest.json: not a features manifest \(a JSON object\)"),
    ],
)
def test_every_error_from_a_file_names_the_file(
    embedded_fake: tuple[Path, Path], file: str, damage: str, message: str
) -> None:
    import os

    from pipeline.features.store import load_catalog

    prepared, features = embedded_fake
    path = prepared.parent / file
    data = path.read_bytes()
    path.write_bytes({"truncate": data[: len(data) // 2], "random": os.urandom(len(data)), "list": b"[1, 2]"}[damage])
    with pytest.raises(ValueError, match=message) as info:
        load_catalog(features, prepared, ("text",))
    assert str(path) in str(info.value) and "\n" not in str(info.value)
