"""A fresh git + DVC project holding this repository's pipeline and a tiny data set, for ``dvc repro`` end to end."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from tests.fixtures.make_tiny_ml1m import write_tiny_ml1m

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def run(cmd: list[str], cwd: Path) -> str:
    """Run ``cmd`` in ``cwd`` with this interpreter's bin/ first on PATH; a failure shows its whole output."""
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "PYTHONPATH": str(cwd)}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout + proc.stderr


def tiny_params(raw_dir: Path, model: dict | None = None, data: dict | None = None) -> dict:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"].update(source="movielens", path=str(raw_dir), user_core=3, item_core=2)
    params["data"].update(data or {})
    params["embed"]["text"]["batch_size"] = 16
    params["embed"]["image"]["batch_size"] = 16
    params["train"].update(epochs=3, batch_size=8, patience=2, num_threads=1)
    params["model"].update(model or {})
    name = params["model"]["name"]  # small widths for the selected model (keys several models read: model.<name>)
    params["model"][name] = params["model"].get(name, {}) | {"hidden_dim": 16, "num_layers": 1, "num_heads": 1}
    if params["model"]["name"] == "odmt":  # tiny tensors: compiling the loss would cost more than it saves
        params["model"].update({"compile_loss": False, **({"fusion_layers": 1} | (model or {}))})
    params["baseline"]["train"].update(epochs=3, batch_size=8, patience=2, num_threads=1)
    params["baseline"]["model"].update(hidden_dim=16, num_layers=1, num_heads=1)
    params["evaluate"]["batch_size"] = 16
    return params


def params_with(tmp_path: Path, section: str, key: str, value: object, name: str = "other.yaml") -> Path:
    """This repository's params.yaml with ``section``'s dotted ``key`` set to ``value``, written to tmp_path/name."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    node = raw[section]
    *parents, last = key.split(".")
    for part in parents:
        node = node[part]
    node[last] = value
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return path


def make_project(tmp_path: Path, model: dict | None = None, data: dict | None = None) -> Path:
    """A fresh git + DVC project holding this repository's pipeline, pointed at a tiny data set.

    By default the data set is a generated GroupLens ML-1M-format one; ``data`` overrides `data:` params (e.g. to
    point at another source's fixture).
    """
    project = tmp_path / "project"
    project.mkdir()
    for name in ("pipeline", "stages"):
        shutil.copytree(REPO / name, project / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", ".dvcignore"):
        if (REPO / name).exists():
            shutil.copy(REPO / name, project / name)
    experiments = project / "reports/experiments"  # a dep of evaluate; this project has no results of its own
    experiments.mkdir(parents=True)
    shutil.copy(REPO / "reports/experiments/README.md", experiments / "README.md")
    raw = write_tiny_ml1m(tmp_path / "raw")
    (project / "params.yaml").write_text(yaml.safe_dump(tiny_params(raw, model, data), sort_keys=False))
    (project / ".gitignore").write_text("data/cache/\n")
    run(["git", "init", "-q"], project)
    run(["dvc", "init", "-q"], project)
    run(["dvc", "config", "core.analytics", "false"], project)
    run(["git", "add", "-A"], project)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"], project)
    return project
