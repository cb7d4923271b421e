"""Run named experiment variants (param overrides on top of params.yaml) and collect a results table.

    python -m bench.ablations --suite odmt          # variants listed in bench/experiments.yaml
    python -m bench.ablations --suite mp4sr --only mp4sr_no_mixup

Every variant = params.yaml + the file's `budget` overrides (the training budget shared by every row of every table)
+ its own overrides. Each variant runs the stage CLIs with its own params file. `prepare` and `embed` outputs are
shared between variants whose `data` / `embed` sections agree (keyed by a hash of those sections), so an ablation
reruns only training and evaluation — the same caching rule as `dvc repro`. Each variant's metrics, training time
per epoch and peak memory are written to `reports/experiments/<suite>/<variant>.json`; `reports/experiments.md`
holds one table per suite, which the evaluate stage also copies into `reports/report.md`. A variant whose full
params match an existing result (in any suite) is not run again: its result is reused (`--force` reruns it), so
an interrupted suite resumes where it stopped.
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
from pipeline.experiments import experiments_markdown
from pipeline.io import write_json_atomic, write_text_atomic

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


def params_key(params: dict[str, Any]) -> str:
    """Identity of a run: every param that reaches a stage."""
    return _key(params)


def find_result(results: Path, key: str) -> dict[str, Any] | None:
    """An earlier result (any suite) that ran with exactly these params."""
    for path in sorted(results.glob("*/*.json")):
        result = json.loads(path.read_text())
        if result.get("params_key") == key:
            return result
    return None


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
        "params_key": params_key(params),
        "model": params["model"]["name"],
        "metrics": json.loads((out / "reports" / "metrics.json").read_text()),
        "train": summary,
        "pretrain": json.loads(pretrain_summary.read_text()) if pretrain_summary.exists() else None,
        "stages": {r.name: {"seconds": round(r.seconds, 1), "peak_rss_mb": round(r.peak_rss_mb)} for r in runs},
    }


@app.command()
def main(
    suite: str = typer.Option(..., help="Suite name in bench/experiments.yaml."),
    only: list[str] = typer.Option([], help="Run only these variants."),  # noqa: B008
    force: bool = typer.Option(False, help="Rerun variants even when a result with the same params exists."),
    experiments: Path = Path("bench/experiments.yaml"),
    params_file: Path = Path("params.yaml"),
    results: Path = Path("reports/experiments"),
) -> None:
    spec = yaml.safe_load(experiments.read_text())
    suites, budget = spec["suites"], spec.get("budget") or {}
    if suite not in suites:
        raise typer.BadParameter(f"{experiments}: no suite {suite!r}; known: {', '.join(suites)}")
    unknown = set(only) - set(suites[suite])
    if unknown:
        raise typer.BadParameter(f"{experiments}: suite {suite!r} has no variant {', '.join(sorted(unknown))}")
    base = apply_overrides(yaml.safe_load(params_file.read_text()), budget)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    for order, (name, overrides) in enumerate(suites[suite].items()):
        if only and name not in only:
            continue
        params = apply_overrides(base, overrides or {})
        earlier = None if force else find_result(results, params_key(params))
        if earlier is not None:
            typer.echo(f"== variant {name}: same params as finished run {earlier['name']!r}, reused", err=True)
            result = earlier
        else:
            typer.echo(f"== variant {name}: {overrides}", err=True)
            result = run_variant(f"{suite}/{name}", params, env)
        result.update(name=name, order=order, overrides=overrides or {}, budget=budget)
        write_json_atomic(results / suite / f"{name}.json", result)
    markdown = experiments_markdown(results)
    write_text_atomic(results.parent / "experiments.md", markdown)
    typer.echo(markdown)


if __name__ == "__main__":
    app()
