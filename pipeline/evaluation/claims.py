"""What a report may claim: paired comparisons with the controls (:mod:`pipeline.evaluation.controls`) and their
wording.

The rule (issue 21): a model claims *multimodal value* only where its paired 95% CI against the ID-only ensemble
(b) lies above 0. A gain over the single SASRec baseline alone can be an ensemble gain and claims nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pipeline.evaluation.controls import ID_ENSEMBLE, ControlResult
from pipeline.evaluation.ranking import EvaluationResult, paired_comparison

CLAIM_STAGE = "test"


def claim_metric(ks: Sequence[int]) -> str:
    """``NDCG@10`` when 10 is evaluated, else NDCG at the largest k."""
    return "NDCG@10" if 10 in ks else f"NDCG@{max(ks)}"


def control_comparisons(
    model: EvaluationResult,
    baseline: EvaluationResult,
    controls: Sequence[ControlResult],
    resamples: int,
    seed: int,
) -> dict[str, dict[str, dict[str, dict[str, float]]]]:
    """``{"<a> - <b>": {stage: {metric: difference}}}``: the model against each control, each control against the
    baseline, at :func:`claim_metric`."""
    keys = [claim_metric(model.ks)]
    out = {}
    for control in controls:
        c = control.result
        out[f"{model.name} - {c.name}"] = paired_comparison(model, c, resamples, seed, keys)
        out[f"{c.name} - {baseline.name}"] = paired_comparison(c, baseline, resamples, seed, keys)
    return out


def multimodal_claim(
    model: str, reads_content: bool, comparisons: Mapping[str, Any], metric: str, members: int, heads: int
) -> str:
    """One sentence: does ``model`` claim multimodal value, by the rule in the module docstring."""
    if not reads_content:
        return f"`{model}` reads item IDs only: it makes no multimodal claim."
    d = comparisons.get(f"{model} - {ID_ENSEMBLE}", {}).get(CLAIM_STAGE, {}).get(metric)
    if d is None:
        return (
            "**No multimodal value claimed**: no ID-only ensemble was evaluated (give the baseline's other seeds "
            "with `--ensemble-members`), and a gain over one SASRec alone can be an ensemble gain."
        )
    ci = f"{d['diff']:+.4f} [{d['ci_low']:+.4f}, {d['ci_high']:+.4f}]"
    what = f"`{model}` - `{ID_ENSEMBLE}` {CLAIM_STAGE} {metric} = {ci}"
    fair = (
        f" (note: {members} members for a model of {heads} heads; a fair (b) has {heads})" if members != heads else ""
    )
    if d["ci_low"] > 0:
        return f"**Multimodal value claimed**: {what}, 95% CI above 0{fair}."
    return f"**No multimodal value claimed**: {what}; the 95% CI does not lie above 0{fair}."


def controls_section(controls: Sequence[ControlResult], comparisons: Mapping[str, Any], metric: str, claim: str) -> str:
    """The "Controls" part of report.md: how each control row was built, the paired table and the claim."""
    if not controls:
        return "## Controls\n\nNo control rows (no ensemble members, no content features).\n\n" + claim + "\n"
    lines = [
        "## Controls\n",
        "Rows a multimodal gain must beat, fused with weights chosen on VALID NDCG@10 over the simplex grid "
        "(pipeline/evaluation/fusion.py; test targets are never read):\n",
    ]
    for control in controls:
        info = control.info
        parts = ", ".join(f"`{m}` {w:.2f}" for m, w in zip(info["members"], info["weights"], strict=True))
        how = (
            "raw scores summed (as ODMT fuses its heads)"
            if info.get("score_scales") is None
            else "each score divided by its std over the valid scores"
        )
        lines.append(f"- `{control.result.name}`: {how}; weights {parts}.")
    lines += ["", f"| comparison | stage | {metric} diff | 95% CI | p |", "|---|---|---:|---|---:|"]
    for name, stages in comparisons.items():
        for stage, per_metric in stages.items():
            d = per_metric[metric]
            ci = f"[{d['ci_low']:+.4f}, {d['ci_high']:+.4f}]"
            lines.append(f"| {name} | {stage} | {d['diff']:+.4f} | {ci} | {d['p_value']:.4f} |")
    return "\n".join(lines) + "\n\n" + claim + "\n"


def controls_report(
    model: EvaluationResult,
    baseline: EvaluationResult,
    controls: Sequence[ControlResult],
    *,
    reads_content: bool,
    heads: int,
    resamples: int,
    seed: int,
) -> tuple[dict[str, Any], str]:
    """``(record for metrics.json, markdown section)``: the controls' recipes, paired comparisons and the claim."""
    metric = claim_metric(model.ks)
    comparisons = control_comparisons(model, baseline, controls, resamples, seed)
    members = next((len(c.info["members"]) for c in controls if c.result.name == ID_ENSEMBLE), 0)
    claim = multimodal_claim(model.name, reads_content, comparisons, metric, members, heads)
    record = {"rows": {c.result.name: c.info for c in controls}, "paired": comparisons, "metric": metric}
    return record | {"claim": claim}, controls_section(controls, comparisons, metric, claim)
