"""Atomic writes: one file (temp file + rename) or a stage's whole output set (temp folder + swap).

An interrupted or failing stage therefore never leaves a half-written file, nor a mix of new and old outputs, that
DVC would cache. Files and folders get the mode the umask gives (``mkstemp``/``mkdtemp`` alone would make them
private: 0600 / 0700).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary path next to ``target``; on success it replaces ``target``, on error it is removed."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    tmp_path.chmod(0o666 & ~current_umask())
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    finally:
        tmp_path.unlink(missing_ok=True)


def current_umask() -> int:
    """The process umask (read by setting it and putting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextmanager
def staged_outputs(out_dir: Path, names: Sequence[str]) -> Iterator[Path]:
    """Yield an empty staging folder next to ``out_dir``; the caller writes each of ``names`` (files or folders) there.

    Only when the block succeeds and every name exists in the staging folder are they moved into ``out_dir``
    together (the old ones are moved aside first, then removed); on any error the staging folder is deleted and
    ``out_dir`` keeps its previous outputs untouched. Other entries of ``out_dir`` are left alone. Staging folders
    carry their process id: those of processes no longer running (a killed run) are removed here.
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(out_dir)
    stage = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.staged.{os.getpid()}.", dir=out_dir.parent))
    stage.chmod(0o777 & ~current_umask())
    try:
        yield stage
        absent = [n for n in names if not (stage / n).exists()]
        if absent:
            raise RuntimeError(f"{out_dir}: outputs not written, nothing replaced: {', '.join(absent)}")
        _swap_in(stage, out_dir, names)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def remove_stale_staging(out_dir: Path) -> list[Path]:
    """Remove ``.<out>.staged.<pid>.*`` / ``.<out>.old.<pid>.*`` folders whose process is gone; returns them."""
    removed = []
    for kind in ("staged", "old"):
        for folder in Path(out_dir).parent.glob(f".{Path(out_dir).name}.{kind}.*"):
            pid = folder.name.removeprefix(f".{Path(out_dir).name}.{kind}.").split(".", 1)[0]
            if folder.is_dir() and not (pid.isdigit() and _alive(int(pid))):
                shutil.rmtree(folder, ignore_errors=True)
                removed.append(folder)
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # it exists, owned by someone else
        return True
    return True


def _swap_in(stage: Path, out_dir: Path, names: Sequence[str]) -> None:
    """Move ``stage/<name>`` to ``out_dir/<name>`` for every name; the replaced ones go to a trash folder first."""
    out_dir.mkdir(parents=True, exist_ok=True)
    trash = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old.{os.getpid()}.", dir=out_dir.parent))
    try:
        for name in names:
            if (out_dir / name).exists() or (out_dir / name).is_symlink():
                os.replace(out_dir / name, trash / name)
        for name in names:
            os.replace(stage / name, out_dir / name)
    except BaseException:  # put the old outputs back: better the old set than a mix
        for name in names:
            if (trash / name).exists():
                if (out_dir / name).is_dir() and not (out_dir / name).is_symlink():
                    shutil.rmtree(out_dir / name)
                else:
                    (out_dir / name).unlink(missing_ok=True)
                os.replace(trash / name, out_dir / name)
        raise
    finally:
        shutil.rmtree(trash, ignore_errors=True)


def write_text_atomic(target: Path, text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(target: Path, data: Any) -> None:
    write_text_atomic(target, json.dumps(data, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy / torch scalars
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot serialise {type(value).__name__} to JSON")


# ----------------------------------------------------------------------------------------------------------------
# Outputs never overlap inputs (checked before a stage deletes or replaces anything).


def check_disjoint(
    outputs: Mapping[str, Path | str | None],
    folders: Mapping[str, Path | str | None],
    files: Mapping[str, Path | str | None] | None = None,
    published: Sequence[str] | None = None,
    file_outputs: Sequence[str] = (),
) -> None:
    """Refuse an output that equals, contains or lies inside an input folder, or that would replace an input file.

    Every output is a folder except the keys in ``file_outputs`` (``--gallery``); an output folder that is an
    existing file, an output file that is an existing folder, or an output under an existing file is refused too,
    here rather than when the results are published after the work.

    ``outputs`` and ``folders`` map the option or key that names each path (``--out``, ``data.path``) to it; paths
    are compared resolved (symlinks followed), so a link to the input folder is caught too. ``files`` are input
    files that may sit beside the outputs (``models/baseline/model.pt`` next to ``models/model.pt``): each must not
    be, or lie inside, one of the ``published`` entries of an output folder (anywhere in it when None). Raises one
    ``ValueError`` line naming both paths; call it before anything is deleted.
    """
    for out_key, out in outputs.items():
        if out is None:
            continue
        _check_output_kind(out_key, Path(out), out_key in file_outputs)
        o = _resolved(out)
        for in_key, given in folders.items():
            if given is None:
                continue
            i = _resolved(given)
            relation = (
                "is" if o == i else "lies inside" if o.is_relative_to(i) else "contains" if i.is_relative_to(o) else ""
            )
            if relation:
                _refuse(out_key, out, relation, in_key, given)
        for in_key, given in (files or {}).items():
            if given is None:
                continue
            i = _resolved(given)
            targets = [o] if published is None else [o / name for name in published]
            if any(i == t or i.is_relative_to(t) for t in targets):
                _refuse(out_key, out, "would replace", in_key, given)


def _check_output_kind(key: str, out: Path, is_file: bool) -> None:
    """``out`` can be written as a file (``is_file``) or a folder: nothing on its way is a file, and ``out`` itself
    is not a file where a folder goes (or a folder where a file goes)."""
    blocker = next((p for p in out.parents if p.exists() or p.is_symlink()), None)
    if blocker is not None and not blocker.is_dir():
        raise ValueError(
            f"{key} {out}: {blocker} is a file, so nothing can be written under it. Fix: choose another {key}"
        )
    if is_file and out.is_dir():
        raise ValueError(
            f"{key} {out} is a folder; it names the file to write. Fix: give a file path, e.g. {out / 'x'}"
        )
    if not is_file and out.exists() and not out.is_dir():
        raise ValueError(
            f"{key} {out} is a file; the stage writes a folder there (nothing was written or deleted). "
            f"Fix: choose another {key} or remove that file"
        )


def _resolved(path: Path | str) -> Path:
    try:
        return Path(path).expanduser().resolve(strict=False)
    except (OSError, RuntimeError):  # a symlink loop: compare the path as written
        return Path(os.path.abspath(path))


def _refuse(out_key: str, out: Path | str, relation: str, in_key: str, given: Path | str) -> None:
    raise ValueError(
        f"{out_key} {out} {relation} the input {in_key} {given}; a stage's outputs must lie outside its inputs "
        f"(nothing was written or deleted). Fix: choose another {out_key}"
    )


# ----------------------------------------------------------------------------------------------------------------
# Reading the pipeline's own files: every failure names the file and the fix.


def read_parquet(path: Path, hint: str, **kwargs: Any) -> Any:
    """``polars.read_parquet(path, **kwargs)``; a damaged or foreign file is a ``ValueError`` naming it and ``hint``."""
    import polars as pl

    try:
        return pl.read_parquet(path, **kwargs)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} not found. {hint}") from None
    except (OSError, pl.exceptions.PolarsError) as e:
        raise ValueError(f"{path}: not a readable Parquet file ({_first_line(e)}). {hint}") from None


def load_npy(path: Path, hint: str) -> Any:
    """``numpy.load(path)`` of a ``.npy`` array (no pickles); a truncated or random file names itself and ``hint``."""
    import numpy as np

    try:
        return np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} not found. {hint}") from None
    except (OSError, ValueError, EOFError) as e:
        raise ValueError(f"{path}: not a readable .npy array ({_first_line(e)}). {hint}") from None


def read_json(path: Path, hint: str) -> Any:
    """The JSON document in ``path``; a broken one is a ``ValueError`` naming the file, the line and ``hint``."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} not found. {hint}") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e.reason}). {hint}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{e.lineno}:{e.colno}: not valid JSON ({e.msg}). {hint}") from None


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return (lines[0] if lines else type(error).__name__)[:200]
