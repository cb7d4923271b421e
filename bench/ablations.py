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

Seeds: a variant may list `seeds: [42, 43, 44]` (or `--seeds 42,43,44` for the whole suite): each seed is a run of
its own (`train.seed`), and the result holds the mean and standard deviation over seeds. Every row is compared with
its suite's *reference*: the `sasrec` row on the same `data` section (cold-start rows with the cold-start SASRec
row), paired over users at each seed both share (each user's NDCG@10 averaged over those seeds), with a 95%
bootstrap CI and a randomization p-value. Its evaluate stage also gets that SASRec checkpoint as `--baseline`.

What a suite's rows are, the params each runs and the keys of runs and shared folders: `bench/suite_spec.py`.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import typer
import yaml

from bench.control_rows import control_kind, control_runs, paired_by_seed, paired_rows
from bench.run_stage import StageRun, run_measured
from bench.suite_spec import (
    RUNS,
    apply_overrides,
    check_rows,
    early_fusion_row,
    ensemble_row,
    params_key,
    pretrain_dir,
    reads_content,
    reference_row,
    row_overrides,
    row_seeds,
    shared_dirs,
    suite_rows,
)
from pipeline.config import ConfigError
from pipeline.io import write_json_atomic, write_text_atomic
from pipeline.reporting.experiments import experiments_markdown
from pipeline.reporting.images_plot import POSTERS_SUFFIX, plot_cards_vs_posters
from pipeline.reporting.report import RESERVED_KEYS

app = typer.Typer(add_completion=False)


# --- running a seed run ---------------------------------------------------------------------------------------------


def _stage(name: str, args: list[str], env: dict[str, str]) -> StageRun:
    run = run_measured(name, [sys.executable, "-m", f"stages.{name}", *args], env)
    if run.returncode != 0:
        raise typer.Exit(f"stage {name} failed ({run.returncode}) for args {args}")
    return run


def run_variant(name: str, params: dict[str, Any], env: dict[str, str], reference: Path | None) -> dict[str, Any]:
    """One seed of one variant under ``runs/<name>/``; ``reference``: the SASRec checkpoint to compare with (None:
    this run is the reference and compares with itself)."""
    out = RUNS / name
    out.mkdir(parents=True, exist_ok=True)
    params_path = out / "params.yaml"
    params_path.write_text(yaml.safe_dump(params, sort_keys=False))
    prepared, features = prepare_shared(params, params_path, env)
    common = ["--params", str(params_path)]
    runs = []
    model_dir = out / "models"
    train_args = [*common, "--prepared", str(prepared), "--features", str(features), "--out", str(model_dir)]
    pre = pretrain_dir(params)
    if pre is not None:
        if not (pre / "pretrain.pt").exists():  # variants differing in fine-tuning only share one pre-training
            pre_args = [*common, "--prepared", str(prepared), "--features", str(features), "--out", str(pre)]
            runs.append(_stage("pretrain", pre_args, env))
        else:
            typer.echo(f"== {name}: pre-training shared with an earlier variant ({pre})", err=True)
        train_args += ["--pretrained", str(pre / "pretrain.pt")]
    if reference is not None:  # e.g. ODMT's init_from_baseline starts from the suite's SASRec at the same seed
        train_args += ["--baseline", str(reference)]
    runs.append(_stage("train", train_args, env))
    eval_args = [*common, "--prepared", str(prepared), "--features", str(features), "--out", str(out / "reports")]
    eval_args += ["--model", str(model_dir / "model.pt"), "--baseline", str(reference or model_dir / "model.pt")]
    runs.append(_stage("evaluate", eval_args, env))
    stages = {r.name: {"seconds": round(r.seconds, 1), "peak_rss_mb": round(r.peak_rss_mb)} for r in runs}
    return _run_record(out, params, stages)


def prepare_shared(params: dict[str, Any], params_path: Path, env: dict[str, str]) -> tuple[Path, Path]:
    """Run the prepare and embed stages for ``params`` (written at ``params_path``) into :func:`shared_dirs`, unless
    a run with the same `data` / `embed` sections already did; returns those (prepared, features) folders."""
    prepared, features = shared_dirs(params)
    common = ["--params", str(params_path)]
    if not (prepared / "sequences.parquet").exists():
        _stage("prepare", [*common, "--out", str(prepared)], env)
    if not (features / "manifest.json").exists():
        _stage("embed", [*common, "--items", str(prepared / "items.parquet"), "--out", str(features)], env)
    return prepared, features


def _run_record(out: Path, params: dict[str, Any], stages: dict[str, Any]) -> dict[str, Any]:
    """One finished seed run under ``out``: its params identity, metrics and summaries, as stored in results."""
    pre = pretrain_dir(params)
    pretrain_summary = (pre or out / "pretrain") / "pretrain_summary.json"
    return {
        "seed": params["train"]["seed"],
        "params_key": params_key(params),
        "run_dir": str(out),
        "metrics": json.loads((out / "reports" / "metrics.json").read_text()),
        "train": json.loads((out / "models" / "train_summary.json").read_text()),
        "pretrain": json.loads(pretrain_summary.read_text()) if pretrain_summary.exists() else None,
        "stages": stages,
    }


def finished_run_dir(name: str, params: dict[str, Any]) -> dict[str, Any] | None:
    """A seed run whose working folder ``runs/<name>/`` holds finished outputs of exactly these params (a suite
    interrupted between seeds of a variant resumes from there)."""
    out = RUNS / name
    files = [out / "params.yaml", out / "models" / "train_summary.json", out / "reports" / "metrics.json"]
    if not all(f.exists() for f in files) or params_key(yaml.safe_load(files[0].read_text())) != params_key(params):
        return None
    return _run_record(out, params, {})  # stage costs are not measured again


def find_run(results: Path, key: str) -> dict[str, Any] | None:
    """A finished seed run (any suite, any variant; results written before seeds count as one run) with exactly
    these params."""
    for path in sorted(results.glob("*/*.json")):
        result = json.loads(path.read_text())
        for run in result.get("runs") or [result]:
            if run.get("params_key") == key:
                return run
    return None


def _seed_run(
    suite: str,
    name: str,
    ref_name: str | None,
    params: dict[str, Any],
    seed: int,
    results: Path,
    force: bool,
    env: dict[str, str],
) -> dict[str, Any]:
    """One seed of a trained row: a finished run with the same params is reused, else the stages run."""
    seeded = apply_overrides(params, {"train.seed": seed})
    earlier = None if force else find_run(results, params_key(seeded))
    if earlier is None and not force:
        earlier = finished_run_dir(f"{suite}/{name}/seed{seed}", seeded)
    if earlier is not None:
        typer.echo(f"== {name} seed {seed}: same params as a finished run, reused", err=True)
        return earlier
    reference = None
    if ref_name is not None and ref_name != name:
        reference = RUNS / suite / ref_name / f"seed{seed}" / "models" / "model.pt"
        if not reference.exists():
            raise typer.Exit(
                f"{name}: no checkpoint {reference} of reference row {ref_name}, seed {seed}; run "
                f"`python -m bench.ablations --suite {suite} --only {ref_name} --force` first"
            )
    typer.echo(f"== {name} seed {seed}: model {params['model']['name']}", err=True)
    return run_variant(f"{suite}/{name}/seed{seed}", seeded, env, reference)


# --- results: seeds aggregated, rows paired ---------------------------------------------------------------------------


def aggregate(name: str, model: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean (``metrics``) and standard deviation (``metrics_std``) over the seed runs; cost from the first run."""
    first = runs[0]
    seconds = [r["train"]["seconds_per_epoch"] for r in runs if r.get("train")]  # control runs train nothing
    mean: dict[str, Any] = {}
    std: dict[str, Any] = {}
    for run_name, stages in first["metrics"].items():
        if run_name in RESERVED_KEYS:
            continue
        mean[run_name], std[run_name] = {}, {}
        for stage, values in stages.items():
            table = np.array([[r["metrics"][run_name][stage][k] for k in values] for r in runs])  # (seeds, metrics)
            mean[run_name][stage] = dict(zip(values, table.mean(axis=0).tolist(), strict=True))
            std[run_name][stage] = dict(zip(values, table.std(axis=0).tolist(), strict=True))
    return {
        "name": name,
        "model": model,
        "seeds": [r["seed"] for r in runs],
        "metrics": mean,
        "metrics_std": std.get(model, {}),
        "train": first["train"] | {"seconds_per_epoch": float(np.mean(seconds))} if seconds else None,
        "pretrain": first["pretrain"],
        "stages": first["stages"],
        "runs": runs,
    }


REFERENCE_RUNS = ("popularity", "random_among_cold")  # plus every content_knn_* run (pipeline/evaluation/references.py)


def reference_results(row: dict[str, Any]) -> list[dict[str, Any]]:
    """The training-free rows in a SASRec row's evaluation (popularity; in the cold-start setting the content-kNN
    and random-among-cold references) as result rows of their own, named ``<run><suffix>`` where the SASRec row is
    ``sasrec<suffix>`` (e.g. ``content_knn_text_cold`` from ``sasrec_cold``; ``random_among_cold`` keeps its
    name); no training cost columns."""
    suffix = row["name"][len("sasrec") :] if row["name"].startswith("sasrec") else f"_{row['name']}"
    out = []
    for run_name in row["metrics"]:
        if run_name in REFERENCE_RUNS or run_name.startswith("content_knn_"):
            out.append(
                {
                    "name": run_name if run_name.endswith(suffix) else f"{run_name}{suffix}",
                    "model": run_name,
                    "seeds": row["seeds"][:1],
                    "metrics": {run_name: row["metrics"][run_name]},
                    "metrics_std": {},
                    "train": None,
                    "pretrain": None,
                    "stages": {},
                    "order": row.get("order", 0) + 0.5,
                    "overrides": row.get("overrides", {}),
                    "budget": row.get("budget", {}),
                    "reference": None,
                    "paired": None,
                    "evaluated_with": row["name"],
                }
            )
    return out


def paired_with_reference(result: dict[str, Any], reference: dict[str, Any] | None) -> dict[str, Any] | None:
    """Seed-averaged paired comparison with ``reference`` (:func:`bench.control_rows.paired_rows`); where the
    topk files are not here (runs reused from another checkout), what was computed there."""
    if reference is None:
        return None
    return paired_rows(result, reference) or result.get("paired")


def pair_with_ensembles(
    done: dict[str, dict[str, Any]], variants: dict[str, Any], base: dict[str, Any], suite_dir: Path
) -> None:
    """Every row of the suite gets ``paired_vs_ensemble`` and ``paired_vs_early_fusion``: the paired comparisons with
    the ID-only ensemble row and with the ``sasrec_fusion`` row on its data (rewritten in its result file); kept as
    they were where topk files are not here."""
    for name, row in done.items():
        if name not in variants:
            continue
        params = apply_overrides(base, row_overrides(variants[name]))
        controls = {"paired_vs_ensemble": ensemble_row, "paired_vs_early_fusion": early_fusion_row}
        paired = False
        for key, find in controls.items():
            other = find(variants, base, params)
            if other is not None and other != name and other in done:
                row[key] = paired_rows(row, done[other]) or row.get(key)
                paired = True
        if paired:
            write_json_atomic(suite_dir / f"{name}.json", row)


def pair_posters_with_cards(results: Path, suite: str) -> None:
    """Every content-reading row of the posters suite of a ``<suite>`` / ``<suite>_posters`` pair gets
    ``paired_vs_cards``: posters - title cards against the same row of the cards suite, paired over users at the
    seeds both ran (rewritten in its result file); kept as it was where a topk file is not here."""
    posters = suite if suite.endswith(POSTERS_SUFFIX) else suite + POSTERS_SUFFIX
    cards = posters.removesuffix(POSTERS_SUFFIX)
    for path in sorted((results / posters).glob("*.json")):
        row, twin = json.loads(path.read_text()), results / cards / path.name
        if not row.get("reads_content") or "runs" not in row or not twin.exists():
            continue
        paired = paired_by_seed(row, json.loads(twin.read_text()))
        if paired is not None:
            write_json_atomic(path, row | {"paired_vs_cards": paired})


# --- a suite --------------------------------------------------------------------------------------------------------


def _load_suite(
    suite: str, only: list[str], experiments: Path, params_file: Path
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Suite ``suite`` of ``experiments``: its rows, its budget and the params every row starts from (``params_file``
    + budget); exits naming the mistake where a suite or row does not exist or a trained row's params are invalid."""
    spec = yaml.safe_load(experiments.read_text())
    suites = spec["suites"]
    if suite not in suites:
        raise typer.BadParameter(f"{experiments}: no suite {suite!r}; known: {', '.join(suites)}")
    variants, budget = suite_rows(spec, suite)
    unknown = set(only) - set(variants)
    if unknown:
        raise typer.BadParameter(f"{experiments}: suite {suite!r} has no variant {', '.join(sorted(unknown))}")
    base = apply_overrides(yaml.safe_load(params_file.read_text()), budget)
    try:
        check_rows(suite, variants, base, experiments)
    except ConfigError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    return variants, budget, base


def _recorded_rows(suite_dir: Path) -> dict[str, dict[str, Any]]:
    """The rows already in ``suite_dir`` with their seed runs (not the training-free reference rows), by name."""
    done: dict[str, dict[str, Any]] = {}
    for path in sorted(suite_dir.glob("*.json")):
        earlier = json.loads(path.read_text())
        if "runs" in earlier:
            done[earlier["name"]] = earlier
    return done


def _run_order(variants: dict[str, Any], base: dict[str, Any], order: dict[str, int]) -> list[str]:
    """Reference (SASRec) rows first: every other row needs their checkpoints; then the controls built from them;
    then the rest, each group in ``order`` (the file's)."""

    def rank(n: str) -> int:
        if control_kind(variants[n]):
            return 1
        return 0 if apply_overrides(base, row_overrides(variants[n]))["model"]["name"] == "sasrec" else 2

    return sorted(variants, key=lambda n: (rank(n), order[n]))


def _control_result(
    suite: str, name: str, kind: str, row: dict[str, Any], params: dict[str, Any], reference: dict[str, Any]
) -> dict[str, Any]:
    """A control row (:mod:`bench.control_rows`), built from its SASRec row's finished result ``reference``."""
    runs = control_runs(kind, row, reference, RUNS / suite / name, shared_dirs(params))
    model = runs[0]["metrics"].keys() - set(RESERVED_KEYS)
    return aggregate(name, model.pop(), runs)


@app.command()
def main(
    suite: str = typer.Option(..., help="Suite name in bench/experiments.yaml."),
    only: list[str] = typer.Option([], help="Run only these variants."),  # noqa: B008
    force: bool = typer.Option(False, help="Rerun variants even when a result with the same params exists."),
    seeds: str = typer.Option("", help="Comma-separated seeds for every variant (overrides the file's)."),
    experiments: Path = Path("bench/experiments.yaml"),
    params_file: Path = Path("params.yaml"),
    results: Path = Path("reports/experiments"),
) -> None:
    variants, budget, base = _load_suite(suite, only, experiments, params_file)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    done = _recorded_rows(results / suite)
    order = {name: i for i, name in enumerate(variants)}
    for name in _run_order(variants, base, order):
        if only and name not in only:
            continue
        overrides = row_overrides(variants[name])
        params = apply_overrides(base, overrides)
        ref_name = reference_row(variants, base, params)
        kind = control_kind(variants[name])
        if kind is not None:
            if ref_name not in done:
                raise typer.Exit(f"{name}: no finished SASRec row on its data; run `--only {ref_name}` first")
            result = _control_result(suite, name, kind, variants[name], params, done[ref_name])
        else:
            run_seeds = [int(x) for x in seeds.split(",") if x] or row_seeds(variants[name], params)
            runs = [_seed_run(suite, name, ref_name, params, seed, results, force, env) for seed in run_seeds]
            result = aggregate(name, params["model"]["name"], runs)
        if result["runs"][0].get("members"):  # the ensemble: one run over several SASRec seeds
            result["seeds"] = result["runs"][0]["members"]
        result.update(order=order[name], overrides=overrides, budget=budget, reference=ref_name, control=kind)
        result["reads_content"] = reads_content(params["model"]["name"], kind)
        result["paired"] = None if ref_name == name else paired_with_reference(result, done.get(ref_name))
        done[name] = result
        write_json_atomic(results / suite / f"{name}.json", result)
        if ref_name == name:
            for row in reference_results(result):
                write_json_atomic(results / suite / f"{row['name']}.json", row)
    pair_with_ensembles(done, variants, base, results / suite)
    pair_posters_with_cards(results, suite)
    plot_cards_vs_posters(results)  # per-head NDCG@10, title cards against posters, where both suites ran
    markdown = experiments_markdown(results)
    write_text_atomic(results.parent / "experiments.md", markdown)
    typer.echo(markdown)


if __name__ == "__main__":
    app()
