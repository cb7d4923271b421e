"""Training speed and memory, model against model: ``python -m bench.train_speed --models sasrec,odmt --json FILE``.

Each model runs in its own subprocess (so ``ru_maxrss`` is that model's peak RSS), one after the other, on the
same split, and the parent writes ``{"sasrec": {"seconds_per_epoch", "peak_rss_mb", ...}, "odmt": {...},
"ratio": odmt / sasrec seconds per epoch}``.

Settings come from ``--params`` (default ``params.yaml``): its ``train`` section, ``data.max_seq_len`` and the
``model`` section (each model takes its own flat keys and its subsection ``model.<name>``; keys missing there take
the model's registered defaults; SASRec reads ``baseline.model``), then ``--set model.key=value`` /
``--set train.key=value`` overrides for every model (``--set model.hidden_dim=128`` widens every model alike), and
``--odmt-set`` / ``--sasrec-set`` for one. Data: ``--prepared`` / ``--features`` (read only).

- ``--max-steps N``: time the first N training steps of an epoch (after ``--warmup-steps``) and extrapolate to
  the epoch's step count; no validation. ``--max-steps 0``: ``--epochs`` full epochs through
  :func:`pipeline.training.fit.fit` (validation, early stopping and ODMT's validation-chosen head weights included),
  reporting valid NDCG@10 per epoch.
- ``--setting full`` (default: ``--prepared`` / ``--features``, params.yaml's sequence length) or ``--setting
  last15``: the ODMT authors' protocol (every user's last 15 interactions, ``max_seq_len`` 15, 60 epochs, patience
  6, as the ``odmt_last15`` suite); its data is prepared and embedded once into the ablation runner's shared
  folders (``runs/shared/``, the same ones the ``odmt_last15`` suite uses).
- ``--to-best``: train each model to its best valid epoch (early stopping on valid NDCG@10, the setting's epochs
  and patience) and report ``best_epoch``, ``seconds_to_best`` (training + validation of epochs 1..best) and the
  per-epoch split. SASRec runs first and its trained checkpoint is the one ODMT's ``init_from_baseline`` starts
  from, as in the pipeline; ``seconds_to_best_with_baseline`` adds SASRec's full training time to ODMT's.
- ``--profile`` (default on): each report has ``step_profile``, the CPU seconds of one training step split into
  phases (every model: forward, backward, optimizer; ODMT also: item side, user side and loss in the forward, and
  the item side's share of the backward), from :func:`step_profile`.
- ``--malloc-mmap-threshold BYTES`` sets glibc's ``MALLOC_MMAP_THRESHOLD_`` in the workers (allocator lever);
  ``--compile`` wraps the model's training forward in ``torch.compile(dynamic=True)``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import subprocess
import sys
import time
from copy import deepcopy
from pathlib import Path
from typing import Annotated, Any

import torch
import typer
import yaml

from bench.ablations import prepare_shared
from pipeline.config import TrainConfig, from_dict
from pipeline.data.dataset import NextItemDataset, collate
from pipeline.data.splits import load_split
from pipeline.features.store import load_catalog
from pipeline.models import contract, registry
from pipeline.models.odmt import ODMT
from pipeline.training.checkpoint import read_checkpoint

log = logging.getLogger("bench.train_speed")
app = typer.Typer(add_completion=False)

# TrainConfig's own defaults (keys a params file written before they existed may lack), not a hand-kept copy
TRAIN_DEFAULTS: dict[str, Any] = {
    f.name: f.default for f in dataclasses.fields(TrainConfig) if f.default is not dataclasses.MISSING
}
TRAIN_KEYS = {f.name for f in dataclasses.fields(TrainConfig)}


def _parse_sets(pairs: list[str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {"model": {}, "train": {}, "data": {}}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        section, dot, name = key.partition(".")
        if not sep or not dot or section not in out:
            raise typer.BadParameter(
                f"{pair!r}: expected model.<key>=<value>, train.<key>=<value> or data.max_seq_len="
            )
        out[section][name] = yaml.safe_load(value)
    return out


def _configs(params: Path, name: str, sets: list[str]) -> tuple[Any, TrainConfig, int]:
    raw = yaml.safe_load(params.read_text(encoding="utf-8"))
    over = _parse_sets(sets)
    spec = registry.spec(name, params)
    own = {f.name for f in dataclasses.fields(spec.config_cls)}
    model_section, train_section = raw["model"], raw["train"]
    baseline = raw.get("baseline")
    if name == "sasrec" and isinstance(baseline, dict):  # the baseline stage's own SASRec section, if any
        model_section = baseline.get("model", model_section)
        train_section = train_section | baseline.get("train", {})
    registered = registry.models()
    scoped = model_section.get(name) if isinstance(model_section.get(name), dict) else {}
    flat = {k: v for k, v in model_section.items() if k not in registered}
    model_raw = registry.registered_defaults(name) | flat | scoped | over["model"]
    model_cfg = from_dict(spec.config_cls, {k: v for k, v in model_raw.items() if k in own}, params, "model")
    train_raw = TRAIN_DEFAULTS | {k: v for k, v in train_section.items() if k in TRAIN_KEYS} | over["train"]
    train_cfg = from_dict(TrainConfig, train_raw, params, "train")
    max_seq_len = int(over["data"].get("max_seq_len", raw["data"]["max_seq_len"]))
    return model_cfg, train_cfg, max_seq_len


LAST15: dict[str, Any] = {"history_limit": 15, "max_seq_len": 15}  # the authors' protocol (data section)
LAST15_TRAIN: dict[str, Any] = {"epochs": 60, "patience": 6}  # the odmt_last15 suite's budget
BENCH_RUNS = Path("runs/bench")
PROFILE_STEPS = 3  # timed steps of the step profile (after one untimed step)


def setting_sets(setting: str) -> list[str]:
    """``--set`` pairs a setting implies (before the user's own, which win)."""
    if setting == "full":
        return []
    if setting == "last15":
        return [f"data.max_seq_len={LAST15['max_seq_len']}", *(f"train.{k}={v}" for k, v in LAST15_TRAIN.items())]
    raise typer.BadParameter(f"--setting {setting!r}: expected full or last15")


def setting_data(setting: str, params: Path, prepared: Path, features: Path) -> tuple[Path, Path]:
    """The (prepared, features) folders of a setting: the given ones for ``full``; for ``last15`` the prepare and
    embed outputs of ``params`` with the authors' history limit, in the ablation runner's shared folders (made
    once, and shared with the ``odmt_last15`` suite when the `data` / `embed` sections agree)."""
    if setting == "full":
        return prepared, features
    raw = yaml.safe_load(params.read_text(encoding="utf-8"))
    raw["data"] |= LAST15
    copy = BENCH_RUNS / setting / "params.yaml"  # the stages read their params from a file
    copy.parent.mkdir(parents=True, exist_ok=True)
    copy.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return prepare_shared(raw, copy, dict(os.environ))


def step_profile(
    model: torch.nn.Module, batches: list[dict], optimizer: torch.optim.Optimizer, cfg: TrainConfig
) -> dict:
    """CPU seconds per training step, by phase, averaged over ``batches`` (after one untimed step).

    Every model: ``forward``, ``backward``, ``optimizer``. A model with an item-side encoder (ODMT's
    ``item_table``) also: ``forward_item_side`` (item vectors for every candidate), ``forward_user_side`` (the user
    encoders), ``forward_loss`` (logits, softmax, KD and their closed-form gradients), and ``backward_item_side``
    (the backward from the item vectors' gradients on: the item-side transformer's share of ``backward``).
    Phases are timed by wrapping the model's methods (no change to what runs); CPU time, so other processes on the
    machine do not inflate it.
    """
    from pipeline.models import losses  # ODMT calls losses.head_losses: the name patched below

    clock = time.process_time
    sums: dict[str, float] = {}
    marks: dict[str, float] = {}

    def add(key: str, seconds: float) -> None:
        sums[key] = sums.get(key, 0.0) + seconds

    def timed(key: str, fn: Any) -> Any:
        def run(*a: Any, **k: Any) -> Any:
            start = clock()
            out = fn(*a, **k)
            add(key, clock() - start)
            if key == "forward_item_side" and torch.is_grad_enabled():
                for tensor in out.values():  # the last item-vector gradient marks where the item side's backward starts
                    if tensor.requires_grad:
                        tensor.register_hook(lambda g: marks.__setitem__("item_grads", clock()))
            return out

        return run

    patched = []
    if isinstance(model, ODMT):  # its item side, user side and fused loss, timed apart
        patched = [("item_table", "forward_item_side"), ("encode", "forward_user_side")]
    originals = {name: getattr(model, name) for name, _ in patched}
    loss_fn = losses.head_losses
    try:
        for name, key in patched:
            setattr(model, name, timed(key, originals[name]))
        if patched:
            losses.head_losses = timed("forward_loss", loss_fn)
        model.train()
        for i, batch in enumerate(batches):
            if i == 1:
                sums.clear()
            marks.clear()
            start = clock()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.precision == "bf16"):
                out = model(batch)
            middle = clock()
            optimizer.zero_grad(set_to_none=True)
            out["loss"].backward()
            end = clock()
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            add("forward", middle - start)
            add("backward", end - middle)
            add("optimizer", clock() - end)
            if "item_grads" in marks:
                add("backward_item_side", end - marks["item_grads"])
    finally:
        for name, _ in patched:
            delattr(model, name)  # back to the class's methods
        losses.head_losses = loss_fn
    steps = max(1, len(batches) - 1)
    profile = {key: round(value / steps, 4) for key, value in sums.items()}
    profile["step"] = round(sum(sums[k] for k in ("forward", "backward", "optimizer")) / steps, 4)
    return profile


def _worker(name: str, args: dict[str, Any]) -> dict[str, Any]:
    from pipeline.training.fit import _train_epoch, fit, peak_rss_mb, resolve_device, seed_everything

    model_cfg, train_cfg, max_seq_len = _configs(Path(args["params"]), name, args["sets"])
    if args["num_threads"] > 0:
        train_cfg = dataclasses.replace(train_cfg, num_threads=args["num_threads"])
    spec = registry.spec(name)
    catalog = load_catalog(
        Path(args["features"]), Path(args["prepared"]), spec.needs_features, max_seq_len, spec.all_modalities_required
    )
    split = load_split(Path(args["prepared"]))
    if train_cfg.num_threads > 0:
        torch.set_num_threads(train_cfg.num_threads)
    seed_everything(train_cfg.seed)
    model = registry.build_model(name, model_cfg, catalog, max_seq_len)
    if contract.starts_from_baseline(model) and args["baseline"]:  # as the train stage does
        checkpoint = read_checkpoint(Path(args["baseline"]))
        model.init_id_head_from_sasrec(checkpoint["state_dict"], args["baseline"])
    elif contract.starts_from_baseline(model) and args["to_best"]:
        raise typer.BadParameter(f"{name}: model.init_from_baseline needs SASRec trained first: --models sasrec,{name}")
    if args["padded_items"] and isinstance(model, ODMT):  # the reference layout, to measure packing
        model.item_encoder.packed = False
    if args["compile"]:
        model.forward = torch.compile(model.forward, dynamic=True)
    report: dict[str, Any] = {
        "model_config": model_cfg.__dict__,
        "initialised_from": args["baseline"] or None,  # ODMT's ID head: the SASRec checkpoint it starts from
        "train_precision": train_cfg.precision,
        "batch_size": train_cfg.batch_size,
        "max_seq_len": max_seq_len,
        "torch_threads": torch.get_num_threads(),
        "malloc_mmap_threshold": os.environ.get("MALLOC_MMAP_THRESHOLD_"),
    }
    if args["profile"]:
        report["step_profile"] = _profile(model, split, train_cfg, max_seq_len)
    if args["max_steps"] > 0:
        device = resolve_device(train_cfg.device)
        model.to(device)
        dataset = NextItemDataset(split, max_seq_len)
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_size=train_cfg.batch_size,
            shuffle=True,
            collate_fn=collate,
            generator=torch.Generator().manual_seed(train_cfg.seed),
        )
        steps_per_epoch = math.ceil(len(dataset) / train_cfg.batch_size)
        warmup, steps = args["warmup_steps"], min(args["max_steps"], steps_per_epoch)
        batches = []
        for i, batch in enumerate(loader):
            if i >= warmup + steps:
                break
            batches.append(batch)
        optimizer = torch.optim.AdamW(model.parameters(), lr=train_cfg.lr, weight_decay=train_cfg.weight_decay)
        contract.start_epoch(model, 1)
        start = time.perf_counter()
        if warmup:  # includes torch.compile's one-off compilation (compile_loss)
            _train_epoch(model, batches[:warmup], optimizer, train_cfg, device, "warm-up")
        warmup_seconds = time.perf_counter() - start
        start, cpu_start = time.perf_counter(), time.process_time()
        losses = _train_epoch(model, batches[warmup:], optimizer, train_cfg, device, "timed")
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
        report |= {
            "seconds_per_epoch": round(seconds / steps * steps_per_epoch, 2),
            # CPU time is robust to other processes on a shared machine (wall time is not); with 1 thread the
            # two agree on an idle machine
            "cpu_seconds_per_epoch": round(cpu_seconds / steps * steps_per_epoch, 2),
            "seconds_per_step": round(seconds / steps, 4),
            "warmup_seconds": round(warmup_seconds, 1),
            "timed_steps": steps,
            "steps_per_epoch": steps_per_epoch,
            "train_loss": round(losses["loss"], 4),
        }
    else:
        save_to = Path(args["save"]) if args["save"] else None
        result = fit(model, split, train_cfg, max_seq_len, save_to)
        epochs = result.history
        to_best = epochs[: result.best_epoch]
        report |= {
            "seconds_per_epoch": round(result.seconds_per_epoch, 2),
            "cpu_seconds_per_epoch": round(sum(r["epoch_cpu_seconds"] for r in epochs) / len(epochs), 2),
            "valid_seconds_per_epoch": round(sum(r["valid_seconds"] for r in epochs) / len(epochs), 2),
            "seconds_to_best": round(sum(r["epoch_seconds"] + r["valid_seconds"] for r in to_best), 1),
            "seconds_total": round(sum(r["epoch_seconds"] + r["valid_seconds"] for r in epochs), 1),
            "epochs_run": result.epochs_run,
            "best_epoch": result.best_epoch,
            "valid_ndcg10_per_epoch": [round(row["valid/NDCG@10"], 4) for row in result.history],
            "best_valid": {k: round(v, 4) for k, v in result.best_valid.items()},
            "selected_on_validation": result.selected_on_validation,
        }
    report["peak_rss_mb"] = round(peak_rss_mb(), 1)
    return report


def _profile(model: torch.nn.Module, split: Any, train_cfg: TrainConfig, max_seq_len: int) -> dict[str, float]:
    """:func:`step_profile` of a copy of ``model`` (its own optimizer) on the first 4 batches of a seeded epoch."""
    loader = torch.utils.data.DataLoader(
        NextItemDataset(split, max_seq_len),
        batch_size=train_cfg.batch_size,
        shuffle=True,
        collate_fn=collate,
        generator=torch.Generator().manual_seed(train_cfg.seed),
    )
    batches = [batch for _, batch in zip(range(PROFILE_STEPS + 1), loader, strict=False)]
    copy = deepcopy(model)
    if isinstance(copy, ODMT):  # the KD weight at the end of its ramp (the full cost of KD)
        copy.on_epoch_start(max(1, copy.config.distill_ramp_epochs))
    optimizer = torch.optim.AdamW(copy.parameters(), lr=train_cfg.lr, weight_decay=train_cfg.weight_decay)
    return step_profile(copy, batches, optimizer, train_cfg)


@app.command()
def main(
    models: Annotated[str, typer.Option(help="comma-separated registered model names")] = "sasrec,odmt",
    json_path: Annotated[Path | None, typer.Option("--json", help="write the report here")] = None,
    params: Annotated[Path, typer.Option(help="params file: train, model, data.max_seq_len")] = Path("params.yaml"),
    prepared: Annotated[Path, typer.Option(help="prepare stage output (read only)")] = Path("data/prepared"),
    features: Annotated[Path, typer.Option(help="embed stage output (read only)")] = Path("data/features"),
    set_: Annotated[list[str] | None, typer.Option("--set", help="section.key=value, every model")] = None,
    odmt_set: Annotated[list[str] | None, typer.Option(help="section.key=value, ODMT only")] = None,
    sasrec_set: Annotated[list[str] | None, typer.Option(help="section.key=value, SASRec only")] = None,
    max_steps: Annotated[int, typer.Option(help="time this many steps and extrapolate; 0 = full epochs")] = 0,
    warmup_steps: Annotated[int, typer.Option(help="untimed steps first (with --max-steps)")] = 1,
    epochs: Annotated[int, typer.Option(help="epochs with --max-steps 0")] = 1,
    num_threads: Annotated[int, typer.Option(help="torch threads; 0 = train.num_threads")] = 0,
    malloc_mmap_threshold: Annotated[int, typer.Option(help="MALLOC_MMAP_THRESHOLD_ for the workers; 0 = unset")] = 0,
    compile_: Annotated[bool, typer.Option("--compile", help="torch.compile(dynamic=True) the forward")] = False,
    padded_items: Annotated[bool, typer.Option(help="ODMT: item transformer over padded token slots")] = False,
    setting: Annotated[str, typer.Option(help="full (params.yaml's data) | last15 (the authors' protocol)")] = "full",
    to_best: Annotated[bool, typer.Option("--to-best", help="train to the best valid epoch (early stopping)")] = False,
    profile: Annotated[bool, typer.Option(help="add the per-phase step profile")] = True,
    baseline: Annotated[str, typer.Option(hidden=True)] = "",
    save: Annotated[str, typer.Option(hidden=True)] = "",
    worker: Annotated[str, typer.Option(hidden=True)] = "",
) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    if to_best and max_steps:
        raise typer.BadParameter("--to-best trains whole epochs: leave --max-steps at 0")
    if not worker:
        prepared, features = setting_data(setting, params, prepared, features)
    args = {
        "params": str(params),
        "prepared": str(prepared),
        "features": str(features),
        "max_steps": max_steps,
        "warmup_steps": warmup_steps,
        "num_threads": num_threads,
        "compile": compile_,
        "padded_items": padded_items,
        "profile": profile,
        "baseline": baseline,
        "save": save,
        "to_best": to_best,
    }
    per_model = {"odmt": odmt_set or [], "sasrec": sasrec_set or []}
    if worker:
        budget = [] if to_best else [f"train.epochs={epochs}"]  # --to-best: the setting's epochs and patience
        sets = [*setting_sets(setting), *budget, *(set_ or []), *per_model.get(worker, [])]
        print("RESULT " + json.dumps(_worker(worker, args | {"sets": sets})), flush=True)
        return
    report: dict[str, Any] = {"setting": setting, "to_best": to_best}
    env = os.environ | ({"MALLOC_MMAP_THRESHOLD_": str(malloc_mmap_threshold)} if malloc_mmap_threshold else {})
    # the SASRec that ODMT starts from, one folder per everything that defines it: a --to-best SASRec run with the
    # same params, setting, sets and threads is reused (its report too) instead of trained again
    identity = [params.read_text(encoding="utf-8"), setting, set_, sasrec_set, num_threads, epochs]
    baseline_dir = BENCH_RUNS / setting / f"sasrec-{hashlib.sha256(repr(identity).encode()).hexdigest()[:12]}"
    names = [m.strip() for m in models.split(",") if m.strip()]
    if "sasrec" in names:  # SASRec first: with --to-best its checkpoint is where ODMT's ID head starts
        names = ["sasrec", *(n for n in names if n != "sasrec")]
    for name in names:
        cmd = [sys.executable, "-m", "bench.train_speed", "--worker", name, "--params", str(params)]
        cmd += ["--prepared", str(prepared), "--features", str(features), "--epochs", str(epochs)]
        cmd += ["--max-steps", str(max_steps), "--warmup-steps", str(warmup_steps), "--num-threads", str(num_threads)]
        cmd += ["--compile"] * compile_ + ["--padded-items"] * padded_items + ["--to-best"] * to_best
        cmd += ["--setting", setting, "--profile" if profile else "--no-profile"]
        if name == "sasrec" and to_best:
            cmd += ["--save", str(baseline_dir)]
        elif (baseline_dir / "model.pt").exists() and to_best:
            cmd += ["--baseline", str(baseline_dir / "model.pt")]
        for flag, values in (("--set", set_ or []), ("--odmt-set", odmt_set or []), ("--sasrec-set", sasrec_set or [])):
            for value in values:
                cmd += [flag, value]
        saved = baseline_dir / "report.json"
        if name == "sasrec" and to_best and saved.exists() and (baseline_dir / "model.pt").exists():
            log.info("sasrec: reusing the finished run in %s", baseline_dir)
            report[name] = json.loads(saved.read_text(encoding="utf-8"))
            continue
        log.info("running %s", name)
        done = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True, check=True)
        lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
        report[name] = json.loads(lines[-1][len("RESULT ") :])
        if name == "sasrec" and to_best:
            saved.write_text(json.dumps(report[name], indent=2) + "\n", encoding="utf-8")
        log.info(
            "%s: %.2f s/epoch, peak RSS %.0f MB", name, report[name]["seconds_per_epoch"], report[name]["peak_rss_mb"]
        )
    if "sasrec" in report and "odmt" in report:
        sasrec, odmt = report["sasrec"], report["odmt"]
        report["ratio"] = round(odmt["seconds_per_epoch"] / sasrec["seconds_per_epoch"], 2)
        report["cpu_ratio"] = round(odmt["cpu_seconds_per_epoch"] / sasrec["cpu_seconds_per_epoch"], 2)
        if to_best:
            report["ratio_to_best"] = round(odmt["seconds_to_best"] / sasrec["seconds_to_best"], 2)
            if odmt["model_config"].get("init_from_baseline"):  # ODMT needs the trained SASRec first
                odmt["seconds_to_best_with_baseline"] = round(odmt["seconds_to_best"] + sasrec["seconds_total"], 1)
    text = json.dumps(report, indent=2)
    print(text)
    if json_path is not None:
        json_path.write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    app()
