"""More bad input a user hits (issue: bad-inputs): each is one line naming the file or option and the fix."""

from __future__ import annotations

import dataclasses
import gzip
import re
import zipfile
from pathlib import Path

import polars as pl
import pytest
import torch
import yaml
from typer.testing import CliRunner

from pipeline.config import ConfigError, DataConfig, load_params
from pipeline.data.readers.table import read_table
from pipeline.data.schema import DataFormatError
from pipeline.io import check_disjoint
from pipeline.serving.inference import resolve_device
from tests.helpers.data import T0, table_cfg, write_table
from tests.helpers.projects import RECOMMEND, query_args, recommend_args, write_project

REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------------------------------------------
# The params file itself


def test_params_saved_as_utf16_names_the_file_and_the_encoding(tmp_path: Path) -> None:
    # Windows PowerShell 5's `>` and Notepad's "Unicode" write UTF-16 with a byte order mark; this used to be
    # "error: 'utf-8' codec can't decode byte 0xff in position 0: invalid start byte", naming no file
    path = tmp_path / "params.yaml"
    path.write_bytes((REPO / "params.yaml").read_text(encoding="utf-8").encode("utf-16"))
    with pytest.raises(ConfigError) as info:
        load_params(path)
    assert str(info.value) == f"{path}: UTF-16 text; a params file must be UTF-8. Fix: save it as UTF-8"


def test_params_with_a_latin1_byte_names_the_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    text = (REPO / "params.yaml").read_text(encoding="utf-8").replace("data:\n", "data:  # donn\xe9es\n", 1)
    path.write_bytes(text.encode("latin-1"))
    line = text.splitlines().index("data:  # donn\xe9es") + 1
    with pytest.raises(ConfigError, match=rf"^{path}: not UTF-8 \(byte 0xe9 on line {line}\); .* save it as UTF-8$"):
        load_params(path)


def test_params_path_that_is_a_folder_says_so(tmp_path: Path) -> None:
    # was "error: [Errno 21] Is a directory: '<path>'" with no fix
    with pytest.raises(ConfigError, match=rf"^{tmp_path} is a folder, not a params file. Fix: pass the YAML file"):
        load_params(tmp_path)


# ----------------------------------------------------------------------------------------------------------------
# A table file that is not UTF-8 delimited text


def _table_project(tmp_path: Path) -> tuple[Path, DataConfig]:
    events = "".join(f"u{u},{sku},{T0 + 60 * k}\n" for u in range(3) for k, sku in enumerate("ABC"))
    root = write_table(tmp_path / "shop", "uid,sku,ts\n" + events)
    return root, dataclasses.replace(table_cfg(root), user_core=1, item_core=1)


def test_utf16_csv_is_named_as_utf16_not_a_ragged_last_line(tmp_path: Path) -> None:
    # Excel's "Unicode Text" and PowerShell write UTF-16: this used to be "events.csv:331: expected 4 fields
    # separated by ',' (as in the header), found 1: '\x00'. Fix: quote a field ..."
    root, cfg = _table_project(tmp_path)
    csv = root / "events.csv"
    csv.write_bytes(csv.read_text(encoding="utf-8").encode("utf-16"))
    with pytest.raises(DataFormatError) as info:
        read_table(cfg)
    message = str(info.value)
    assert message.startswith(f"{csv}: UTF-16 text, not delimited UTF-8 text. Fix: save it as UTF-8")
    assert "\n" not in message and "fields" not in message
    csv.write_bytes(csv.read_text(encoding="utf-16").encode("utf-16-le"))  # no byte order mark: the NULs tell
    with pytest.raises(DataFormatError, match=r"events.csv: holds NUL bytes \(UTF-16 text without a byte order mark"):
        read_table(cfg)


@pytest.mark.parametrize(
    ("content", "what"),
    [
        ("parquet", r"a Parquet file, not delimited UTF-8 text. Fix: read it as Parquet \(data.table.format: auto"),
        ("gzip", r"gzip-compressed, not delimited UTF-8 text. Fix: decompress it \(gunzip\)"),
        ("xlsx", r"a zip archive \(or an Excel .xlsx workbook\), not delimited UTF-8 text. Fix: unzip it, or save"),
    ],
)
def test_binary_file_read_as_csv_says_what_it_is(tmp_path: Path, content: str, what: str) -> None:
    # data.table.format: csv on a Parquet shard (or a .csv that is really gzip/xlsx) used to print a 600-character
    # "expected 1 fields ... found 2: '\x00\x0e\x00...'" line of binary garbage
    root, cfg = _table_project(tmp_path)
    csv = root / "events.csv"
    data = csv.read_bytes()
    if content == "parquet":
        pl.read_csv(csv).write_parquet(csv)
    elif content == "gzip":
        csv.write_bytes(gzip.compress(data))
    else:
        with zipfile.ZipFile(csv, "w") as z:
            z.writestr("sheet1.xml", data)
    with pytest.raises(DataFormatError) as info:
        read_table(cfg)
    assert re.match(rf"^{re.escape(str(csv))}: {what}", str(info.value)), str(info.value)
    assert "\\x00" not in str(info.value) and len(str(info.value)) < 400


# ----------------------------------------------------------------------------------------------------------------
# Options of evaluate and recommend


@pytest.mark.parametrize("stage", ["evaluate", "query", "export"])
def test_a_bad_device_option_names_the_option_not_train_device(tmp_path: Path, stage: str) -> None:
    # `--device gpu` used to answer "train.device = 'gpu' is not a device": a key the user never set
    params, prepared, models = write_project(tmp_path)
    params.write_text(yaml.safe_dump(yaml.safe_load(params.read_text()) | {"recommend": dict(RECOMMEND)}))
    p = {"params": params, "prepared": prepared, "models": models, "features": tmp_path / "features"}
    p["out"] = tmp_path / "recommendations"
    if stage == "evaluate":
        from stages.evaluate import app

        args = [*("--params", str(params), "--prepared", str(prepared), "--features", str(p["features"])), "--model"]
        args += [str(models / "model.pt"), "--baseline", str(models / "baseline" / "model.pt")]
        args += ["--out", str(tmp_path / "reports"), "--device", "gpu"]
    else:
        from stages.recommend import app

        argv = query_args(p) + ["--history", "m3"] if stage == "query" else recommend_args(p)
        args = [*argv[: argv.index("--device")], "--device", "gpu", *argv[argv.index("--device") + 2 :]]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1 and result.stderr.strip().splitlines() == [
        "error: --device = 'gpu' is not a device; use auto, cpu, cuda or cuda:N"
    ]


def test_resolve_device_names_the_key_it_was_given() -> None:
    with pytest.raises(ValueError, match=r"^train.device = 'tpu' is not a device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match=r"^--device = 'cuda:0' but no CUDA device is visible; set --device to"):
            resolve_device("cuda:0", "--device")


def test_out_that_is_a_file_is_refused_before_any_work(tmp_path: Path) -> None:
    # `--out` naming an existing file used to fail with "error: [Errno 17] File exists: '<path>'" only when the
    # outputs were published, after the index (or, for train, the whole training run) was built
    from stages.recommend import app

    params, prepared, models = write_project(tmp_path)
    params.write_text(yaml.safe_dump(yaml.safe_load(params.read_text()) | {"recommend": dict(RECOMMEND)}))
    out = tmp_path / "recommendations"
    out.write_text("not a folder")
    p = {"params": params, "prepared": prepared, "models": models, "features": tmp_path / "features", "out": out}
    result = CliRunner().invoke(app, recommend_args(p))
    assert result.exit_code == 1 and result.stderr.strip().splitlines() == [
        f"error: --out {out} is a file; the stage writes a folder there (nothing was written or deleted). "
        "Fix: choose another --out or remove that file"
    ]
    assert sorted(x.name for x in tmp_path.iterdir()) == ["models", "params.yaml", "prepared", "recommendations"]


def test_output_file_that_is_a_folder_or_under_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "reports").mkdir()
    (tmp_path / "plain").write_text("x")
    with pytest.raises(ValueError, match=r"^--gallery .*reports is a folder; it names the file to write"):
        check_disjoint({"--gallery": tmp_path / "reports"}, {}, file_outputs=["--gallery"])
    with pytest.raises(ValueError, match=r"^--out .*plain/a/b: .*plain is a file, so nothing can be written under"):
        check_disjoint({"--out": tmp_path / "plain" / "a" / "b"}, {})
    check_disjoint({"--out": tmp_path / "new" / "folder", "--gallery": tmp_path / "reports" / "g.html"}, {})
