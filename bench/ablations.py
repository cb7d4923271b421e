"""Run named experiment variants (param overrides on top of params.yaml) and collect a results table.

    python -m bench.ablations --suite odmt          # variants listed in bench/experiments.yaml
    python -m bench.ablations --suite mp4sr --only mp4sr_no_mixup

Each variant runs the stage CLIs with its own params file. `prepare` and `embed` outputs are shared between variants
whose `data` / `embed` sections agree (keyed by a hash of those sections), so an ablation reruns only training and
evaluation — the same caching rule as `dvc repro`. Each variant's metrics, training time per epoch and peak memory are
written to `reports/experiments/<variant>.json`; `reports/experiments.md` holds the table, which the evaluate stage
also copies into `reports/report.md`.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

import typer
import yaml

from bench.run_stage import StageRun, run_measured
from pipeline.experiments import experiments_table
from pipeline.io import write_json_atomic

app = typer.Typer(add_completion=False)
RUNS = Path("runs")


def apply_overrides(params: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """`{"model.distill_weight": 0}` -> params with that key replaced; the key must already exist."""
    out = copy.deepcopy(params)
    for dotted, value in overrides.items():
        *parents, leaf = dotted.split(".")
        node = out
        for part in parents:
            node = node[part]
        if leaf not in node and parents[:1] != ["model"]:
            raise KeyError(f"override `{dotted}`: no such key in params.yaml")
        node[leaf] = value
    return out


def _key(*sections: Any) -> str:
    return hashlib.sha256(json.dumps(sections, sort_keys=True).encode()).hexdigest()[:12]


def _stage(name: str, args: list[str], env: dict[str, str]) -> StageRun:
    run = run_measured(name, [sys.executable, "-m", f"stages.{name}", *args], env)
    if run.returncode != 0:
        raise typer.Exit(f"stage {name} failed ({run.returncode}) for args {args}")
    return run


def run_variant(name: str, params: dict[str, Any], env: dict[str, str]) -> dict[str, Any]:
    out = RUNS / name
    out.mkdir(parents=True, exist_ok=True)
    params_path = out / "params.yaml"
    params_path.write_text(yaml.safe_dump(params, sort_keys=False))
    data_section = {k: v for k, v in params["data"].items() if k != "max_seq_len"}
    prepared = RUNS / "shared" / f"prepared-{_key(data_section)}"
    features = RUNS / "shared" / f"features-{_key(data_section, params['embed'])}"
    common = ["--params", str(params_path)]
    if not (prepared / "sequences.parquet").exists():
        _stage("prepare", [*common, "--out", str(prepared)], env)
    if not (features / "manifest.json").exists():
        _stage("embed", [*common, "--items", str(prepared / "items.parquet"), "--out", str(features)], env)
    runs = []
    model_dir = out / "models"
    train_args = [*common, "--prepared", str(prepared), "--features", str(features), "--out", str(model_dir)]
    if params["model"]["name"] == "mp4sr":
        pre = out / "pretrain"
        pre_args = [*common, "--prepared", str(prepared), "--features", str(features), "--out", str(pre)]
        runs.append(_stage("pretrain", pre_args, env))
        train_args += ["--pretrained", str(pre / "pretrain.pt")]
    runs.append(_stage("train", train_args, env))
    eval_args = [*common, "--prepared", str(prepared), "--features", str(features)]
    runs.append(
        _stage("evaluate", [*eval_args, "--model", str(model_dir / "model.pt"), "--out", str(out / "reports")], env)
    )
    summary = json.loads((model_dir / "train_summary.json").read_text())
    pretrain_summary = out / "pretrain" / "pretrain_summary.json"
    return {
        "name": name,
        "model": params["model"]["name"],
        "metrics": json.loads((out / "reports" / "metrics.json").read_text()),
        "train": summary,
        "pretrain": json.loads(pretrain_summary.read_text()) if pretrain_summary.exists() else None,
        "stages": {r.name: {"seconds": round(r.seconds, 1), "peak_rss_mb": round(r.peak_rss_mb)} for r in runs},
        "overrides": params.get("_overrides", {}),
    }


@app.command()
def main(
    suite: str = typer.Option(..., help="Suite name in bench/experiments.yaml."),
    only: list[str] = typer.Option([], help="Run only these variants."),  # noqa: B008
    experiments: Path = Path("bench/experiments.yaml"),
    params_file: Path = Path("params.yaml"),
    results: Path = Path("reports/experiments"),
) -> None:
    suites = yaml.safe_load(experiments.read_text())
    if suite not in suites:
        raise typer.BadParameter(f"{experiments}: no suite {suite!r}; known: {', '.join(suites)}")
    base = yaml.safe_load(params_file.read_text())
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    for name, overrides in suites[suite].items():
        if only and name not in only:
            continue
        typer.echo(f"== variant {name}: {overrides}", err=True)
        params = apply_overrides(base, overrides or {})
        result = run_variant(name, params, env)
        result["overrides"] = overrides or {}
        write_json_atomic(results / f"{name}.json", result)
    table = experiments_table(sorted(results.glob("*.json")))
    (results.parent / "experiments.md").write_text(table)
    typer.echo(table)


if __name__ == "__main__":
    app()
