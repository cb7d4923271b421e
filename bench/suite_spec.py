"""Ablation suites as data: a suite's rows, the params each row runs, and the keys that name its runs.

A suite of `bench/experiments.yaml` is a budget and rows (:func:`suite_rows`); a row is param overrides on top of
params.yaml plus the budget (:func:`apply_overrides`), and a few keys that describe the row instead (`seeds`,
`control`, ...: ``bench.control_rows.ROW_KEYS``). :func:`params_key` is a run's identity: a finished run with the
same key is reused, in any suite. :func:`shared_dirs` and :func:`pretrain_dir` are the folders under `runs/shared/`
shared by the runs that agree on what those stages read. Nothing here runs a stage: `bench.ablations` runs the
suites, and `bench.suite_status` says where one stands.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

from bench.control_rows import ROW_KEYS, control_kind
from pipeline.config import ConfigError, check_params
from pipeline.models import registry
from pipeline.models.configs import PRETRAIN_KEYS
from pipeline.models.registry import spec as model_spec
from pipeline.training.pretrain import PRETRAIN_MODELS

RUNS = Path("runs")


# --- rows and their params ------------------------------------------------------------------------------------------


def suite_rows(spec: dict[str, Any], suite: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Suite ``suite`` of an experiments file's ``spec``: its rows, and its budget (the file's shared budget plus
    the suite's own, which may add to it)."""
    variants = dict(spec["suites"][suite])
    budget = {**(spec.get("budget") or {}), **(variants.pop("budget", None) or {})}
    return variants, budget


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


def row_overrides(spec: dict[str, Any] | None) -> dict[str, Any]:
    """A row's param overrides: its keys other than the ones that describe the row (``ROW_KEYS``)."""
    return {k: v for k, v in (spec or {}).items() if k not in ROW_KEYS}


def check_rows(suite: str, variants: dict[str, Any], base: dict[str, Any], experiments: Path) -> None:
    """Every trained row's params validated before anything trains, as the stages would validate them: a mistyped
    key or value stops the suite at once, naming the row, instead of after hours of the rows before it."""
    for name, spec in variants.items():
        if control_kind(spec):
            continue
        where = Path(f"{experiments} (suite {suite}, row {name})")
        try:
            params = apply_overrides(base, row_overrides(spec))
        except KeyError as e:
            raise ConfigError(f"{where}: {e.args[0]}") from None
        check_params(params, where)


def row_seeds(row: dict[str, Any] | None, params: dict[str, Any]) -> list[int]:
    """The seeds a trained row runs at: its ``seeds`` list, else the one ``train.seed`` of its params."""
    return (row or {}).get("seeds") or [params["train"]["seed"]]


def reference_row(suite: dict[str, Any], base: dict[str, Any], params: dict[str, Any]) -> str | None:
    """The suite's SASRec row on the same `data` section as ``params`` (the row every other row is compared with)."""
    for name, spec in suite.items():
        candidate = apply_overrides(base, row_overrides(spec))
        if not control_kind(spec) and candidate["model"]["name"] == "sasrec" and candidate["data"] == params["data"]:
            return name
    return None


def ensemble_row(suite: dict[str, Any], base: dict[str, Any], params: dict[str, Any]) -> str | None:
    """The suite's ID-only ensemble row (``control: id_ensemble``) on the same `data` section as ``params``."""
    for name, spec in suite.items():
        if control_kind(spec) == "id_ensemble" and apply_overrides(base, row_overrides(spec))["data"] == params["data"]:
            return name
    return None


def early_fusion_row(suite: dict[str, Any], base: dict[str, Any], params: dict[str, Any]) -> str | None:
    """The suite's simplest multimodal row (``model.name: sasrec_fusion``, one seed per run) on the same `data`
    section as ``params``: a multimodal architecture claims value for its design only where it beats this row."""
    for name, spec in suite.items():
        row = apply_overrides(base, row_overrides(spec))
        if control_kind(spec) is None and row["model"]["name"] == "sasrec_fusion" and row["data"] == params["data"]:
            return name
    return None


def reads_content(model: str, kind: str | None) -> bool:
    """Whether a row uses item content (a multimodal model or the late-fusion control)."""
    return kind == "late_fusion" or (kind is None and bool(model_spec(model).needs_features))


# --- run keys and shared folders -------------------------------------------------------------------------------------


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


def shared_dirs(params: dict[str, Any]) -> tuple[Path, Path]:
    """The prepare and embed outputs a variant shares with every variant of the same `data` / `embed` sections."""
    data_section = {k: v for k, v in params["data"].items() if k != "max_seq_len"}
    prepared = RUNS / "shared" / f"prepared-{_key(data_section)}"
    return prepared, RUNS / "shared" / f"features-{_key(data_section, params['embed'])}"


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
