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
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import typer
import yaml

from bench.control_rows import ROW_KEYS, control_kind, control_runs, paired_by_seed, paired_rows
from bench.run_stage import StageRun, run_measured
from pipeline.config import ConfigError, check_params
from pipeline.io import write_json_atomic, write_text_atomic
from pipeline.models import registry
from pipeline.models.configs import PRETRAIN_KEYS
from pipeline.models.registry import spec as model_spec
from pipeline.reporting.experiments import experiments_markdown
from pipeline.reporting.images_plot import POSTERS_SUFFIX, plot_cards_vs_posters
from pipeline.reporting.report import RESERVED_KEYS
from pipeline.training.pretrain import PRETRAIN_MODELS

app = typer.Typer(add_completion=False)
RUNS = Path("runs")


def apply_overrides(params: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """`{"model.distill_weight": 0}` -> params with that key replaced; the key must already exist, except under
    `model` (every model key may be set there, and a model's subsection `model.<name>` is created when absent)."""
    out = copy.deepcopy(params)
    for dotted, value in overrides.items():
        *parents, leaf = dotted.split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {}) if parents[:1] == ["model"] else node[part]
        if leaf not in node and parents[:1] != ["model"]:
            raise KeyError(f"override `{dotted}`: no such key in params.yaml")
        node[leaf] = value
    return out


# Keys added to params.yaml after runs were recorded, with the value that reproduces the behaviour from before they
# existed: a run's identity leaves such a key out while it holds that value, so finished runs stay reusable.
NEUTRAL_LATER_KEYS: dict[str, Any] = {
    "train.lr_schedule": "constant",
    "train.warmup_epochs": 0,
    "baseline.train.lr_schedule": "constant",
    "baseline.train.warmup_epochs": 0,
}


def canonical_params(params: dict[str, Any]) -> dict[str, Any]:
    """``params`` without the :data:`NEUTRAL_LATER_KEYS` that hold their neutral value, and with
    ``model.content_max_seq_len`` at 0 where it has no effect (:func:`_content_window_without_effect`)."""
    out = copy.deepcopy(params)
    for dotted, neutral in NEUTRAL_LATER_KEYS.items():
        *parents, leaf = dotted.split(".")
        node = out
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and leaf in node and node[leaf] == neutral:
            del node[leaf]
    if _content_window_without_effect(out):
        out["model"]["content_max_seq_len"] = 0
    return out


def _content_window_without_effect(params: dict[str, Any]) -> bool:
    """ODMT's ``model.content_max_seq_len`` (default 0 until it moved to 50) changes nothing when the selected
    model is not ODMT (no other model reads it) or when it is >= ``data.max_seq_len`` (the content heads then read
    every item, as with 0): runs recorded with 0 stay reusable there."""
    model, data = params.get("model"), params.get("data")
    if not isinstance(model, dict) or "content_max_seq_len" not in model:
        return False
    if model.get("name") != "odmt":
        return True
    window, length = model["content_max_seq_len"], data.get("max_seq_len") if isinstance(data, dict) else None
    return isinstance(window, int) and isinstance(length, int) and window >= length


def params_key(params: dict[str, Any]) -> str:
    """Identity of a run: every param that reaches a stage (:func:`canonical_params`)."""
    return _key(canonical_params(params))


def _key(*sections: Any) -> str:
    return hashlib.sha256(json.dumps(sections, sort_keys=True).encode()).hexdigest()[:12]


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


def shared_dirs(params: dict[str, Any]) -> tuple[Path, Path]:
    """The prepare and embed outputs a variant shares with every variant of the same `data` / `embed` sections."""
    data_section = {k: v for k, v in params["data"].items() if k != "max_seq_len"}
    prepared = RUNS / "shared" / f"prepared-{_key(data_section)}"
    return prepared, RUNS / "shared" / f"features-{_key(data_section, params['embed'])}"


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


def pretrain_dir(params: dict[str, Any]) -> Path | None:
    """Where a variant's pre-training lives: one folder per everything the pretrain stage reads (data, embed,
    pretrain section, the model keys of ``PRETRAIN_KEYS``, seed, sequence length), shared by the variants that
    differ in fine-tuning only; None for a model without pre-training."""
    model = params["model"]
    if model["name"] not in PRETRAIN_MODELS:
        return None
    data_section = {k: v for k, v in params["data"].items() if k != "max_seq_len"}
    built = registry.model_config(model["name"], {k: v for k, v in model.items() if k != "name"})
    keys = {k: getattr(built, k) for k in PRETRAIN_KEYS}  # MP4SR's own values, from model.mp4sr and flat keys
    identity = [data_section, params["embed"], params["pretrain"], keys, model["name"], params["train"]["seed"]]
    return RUNS / "shared" / f"pretrain-{_key(*identity, params['data']['max_seq_len'])}"


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


def reference_row(suite: dict[str, Any], base: dict[str, Any], params: dict[str, Any]) -> str | None:
    """The suite's SASRec row on the same `data` section as ``params`` (the row every other row is compared with)."""
    for name, spec in suite.items():
        candidate = apply_overrides(base, _overrides(spec))
        if not control_kind(spec) and candidate["model"]["name"] == "sasrec" and candidate["data"] == params["data"]:
            return name
    return None


def ensemble_row(suite: dict[str, Any], base: dict[str, Any], params: dict[str, Any]) -> str | None:
    """The suite's ID-only ensemble row (``control: id_ensemble``) on the same `data` section as ``params``."""
    for name, spec in suite.items():
        if control_kind(spec) == "id_ensemble" and apply_overrides(base, _overrides(spec))["data"] == params["data"]:
            return name
    return None


def early_fusion_row(suite: dict[str, Any], base: dict[str, Any], params: dict[str, Any]) -> str | None:
    """The suite's simplest multimodal row (``model.name: sasrec_fusion``, one seed per run) on the same `data`
    section as ``params``: a multimodal architecture claims value for its design only where it beats this row."""
    for name, spec in suite.items():
        row = apply_overrides(base, _overrides(spec))
        if control_kind(spec) is None and row["model"]["name"] == "sasrec_fusion" and row["data"] == params["data"]:
            return name
    return None


def reads_content(model: str, kind: str | None) -> bool:
    """Whether a row uses item content (a multimodal model or the late-fusion control)."""
    return kind == "late_fusion" or (kind is None and bool(model_spec(model).needs_features))


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
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    done: dict[str, dict[str, Any]] = {}
    for path in sorted((results / suite).glob("*.json")):
        earlier = json.loads(path.read_text())
        if "runs" in earlier:
            done[earlier["name"]] = earlier
    # Reference (SASRec) rows first: every other row needs their checkpoints; then the controls built from them.
    order = {name: i for i, name in enumerate(variants)}

    def rank(n: str) -> int:
        if control_kind(variants[n]):
            return 1
        return 0 if apply_overrides(base, _overrides(variants[n]))["model"]["name"] == "sasrec" else 2

    for name in sorted(variants, key=lambda n: (rank(n), order[n])):
        if only and name not in only:
            continue
        overrides = _overrides(variants[name])
        params = apply_overrides(base, overrides)
        ref_name = reference_row(variants, base, params)
        kind = control_kind(variants[name])
        if kind is not None:
            if ref_name not in done:
                raise typer.Exit(f"{name}: no finished SASRec row on its data; run `--only {ref_name}` first")
            out = RUNS / suite / name
            runs = control_runs(kind, variants[name], done[ref_name], out, shared_dirs(params))
            model = runs[0]["metrics"].keys() - set(RESERVED_KEYS)
            result = aggregate(name, model.pop(), runs)
        else:
            run_seeds = [int(x) for x in seeds.split(",") if x] or row_seeds(variants[name], params)
            runs = [_seed_run(suite, name, ref_name, params, seed, results, force, env) for seed in run_seeds]
            result = aggregate(name, params["model"]["name"], runs)
        if runs[0].get("members"):  # the ensemble: one run over several SASRec seeds
            result["seeds"] = runs[0]["members"]
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


def row_seeds(row: dict[str, Any] | None, params: dict[str, Any]) -> list[int]:
    """The seeds a trained row runs at: its ``seeds`` list, else the one ``train.seed`` of its params."""
    return (row or {}).get("seeds") or [params["train"]["seed"]]


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


def pair_with_ensembles(
    done: dict[str, dict[str, Any]], variants: dict[str, Any], base: dict[str, Any], suite_dir: Path
) -> None:
    """Every row of the suite gets ``paired_vs_ensemble`` and ``paired_vs_early_fusion``: the paired comparisons with
    the ID-only ensemble row and with the ``sasrec_fusion`` row on its data (rewritten in its result file); kept as
    they were where topk files are not here."""
    for name, row in done.items():
        if name not in variants:
            continue
        params = apply_overrides(base, _overrides(variants[name]))
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


def suite_rows(spec: dict[str, Any], suite: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Suite ``suite`` of an experiments file's ``spec``: its rows, and its budget (the file's shared budget plus
    the suite's own, which may add to it)."""
    variants = dict(spec["suites"][suite])
    budget = {**(spec.get("budget") or {}), **(variants.pop("budget", None) or {})}
    return variants, budget


def check_rows(suite: str, variants: dict[str, Any], base: dict[str, Any], experiments: Path) -> None:
    """Every trained row's params validated before anything trains, as the stages would validate them: a mistyped
    key or value stops the suite at once, naming the row, instead of after hours of the rows before it."""
    for name, spec in variants.items():
        if control_kind(spec):
            continue
        where = Path(f"{experiments} (suite {suite}, row {name})")
        try:
            params = apply_overrides(base, _overrides(spec))
        except KeyError as e:
            raise ConfigError(f"{where}: {e.args[0]}") from None
        check_params(params, where)


def _overrides(spec: dict[str, Any] | None) -> dict[str, Any]:
    return {k: v for k, v in (spec or {}).items() if k not in ROW_KEYS}


if __name__ == "__main__":
    app()
