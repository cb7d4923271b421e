"""More bad input a user hits (issue: bad-inputs): each is one line naming the file or option and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.config import ConfigError, load_params

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
