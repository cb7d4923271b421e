"""Where a suite of `bench.ablations` stands, without running anything: ``python -m bench.suite_status --suite NAME``.

One line per row and seed: ``finished`` (a run with exactly these params is recorded or sits finished in its
folder, so the runner reuses it), ``running or interrupted`` with the epochs done (a rerun resumes after them) and
its best valid NDCG@10 so far (pipeline/training/resume.py), or ``not started``; a control row is ``ready`` once its
SASRec row has finished every seed it needs. Long suites run for days on a CPU box; this says what is left.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
import yaml

from bench.ablations import find_run, finished_run_dir
from bench.control_rows import control_kind
from bench.suite_spec import (
    RUNS,
    apply_overrides,
    params_key,
    pretrain_dir,
    reference_row,
    row_overrides,
    row_seeds,
    suite_rows,
)
from pipeline.training.resume import progress, state_path


def seed_status(suite: str, name: str, params: dict[str, Any], seed: int, results: Path) -> str:
    """``finished``, ``... running or interrupted ...`` or ``not started`` for one seed run of a trained row."""
    seeded = apply_overrides(params, {"train.seed": seed})
    if find_run(results, params_key(seeded)) or finished_run_dir(f"{suite}/{name}/seed{seed}", seeded):
        return "finished"
    train = progress(state_path(RUNS / suite / name / f"seed{seed}" / "models", "train"))
    if train is not None:
        return _interrupted("training", train)
    pre = pretrain_dir(seeded)
    pretraining = progress(state_path(pre, "pretrain")) if pre is not None else None
    if pretraining is not None:
        return _interrupted("pre-training", pretraining)
    if pre is not None and (pre / "pretrain.pt").exists():
        return "pre-trained, fine-tuning not started"
    return "not started"


def _interrupted(what: str, state: dict[str, Any]) -> str:
    best = state.get("best_valid_ndcg10")
    best_text = f", best valid NDCG@10 {best:.4f} at epoch {state['best_epoch']}" if best is not None else ""
    return f"{what} running or interrupted: {state['epoch']} epoch(s) done, a rerun resumes there{best_text}"


def suite_status(suite: str, spec: dict[str, Any], base_params: dict[str, Any], results: Path) -> list[str]:
    """The status lines of every row of ``suite`` (see the module docstring)."""
    variants, budget = suite_rows(spec, suite)
    base = apply_overrides(base_params, budget)
    lines: list[str] = []
    finished: dict[str, set[int]] = {}
    for name, row in variants.items():
        if control_kind(row) is not None:
            continue
        params = apply_overrides(base, row_overrides(row))
        for seed in row_seeds(row, params):
            status = seed_status(suite, name, params, seed, results)
            if status == "finished":
                finished.setdefault(name, set()).add(seed)
            lines.append(f"{name} seed {seed}: {status}")
    for name, row in variants.items():
        if control_kind(row) is None:
            continue
        ref = reference_row(variants, base, apply_overrides(base, row_overrides(row)))
        need = row_seeds(variants.get(ref), apply_overrides(base, row_overrides(variants.get(ref))))
        missing = sorted(set(need) - finished.get(ref, set()))
        lines.append(
            f"{name}: " + ("ready" if not missing else f"waits for {ref} seed(s) {', '.join(map(str, missing))}")
        )
    return lines


def main(
    suite: str = typer.Option(..., help="Suite name in bench/experiments.yaml."),
    experiments: Path = Path("bench/experiments.yaml"),
    params_file: Path = Path("params.yaml"),
    results: Path = Path("reports/experiments"),
) -> None:
    spec = yaml.safe_load(experiments.read_text())
    if suite not in spec["suites"]:
        raise typer.BadParameter(f"{experiments}: no suite {suite!r}; known: {', '.join(spec['suites'])}")
    for line in suite_status(suite, spec, yaml.safe_load(params_file.read_text()), results):
        typer.echo(line)


if __name__ == "__main__":
    typer.run(main)
