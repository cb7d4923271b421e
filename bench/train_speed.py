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
  :func:`pipeline.train.fit` (validation, early stopping and ODMT's validation-chosen head weights included),
  reporting valid NDCG@10 per epoch.
- ``--malloc-mmap-threshold BYTES`` sets glibc's ``MALLOC_MMAP_THRESHOLD_`` in the workers (allocator lever);
  ``--compile`` wraps the model's training forward in ``torch.compile(dynamic=True)``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import torch
import typer
import yaml

from pipeline.config import TrainConfig, from_dict
from pipeline.data.dataset import NextItemDataset, collate
from pipeline.data.splits import load_split
from pipeline.features.store import load_catalog
from pipeline.models import registry

log = logging.getLogger("bench.train_speed")
app = typer.Typer(add_completion=False)

TRAIN_DEFAULTS: dict[str, Any] = {"precision": "fp32"}
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


def _worker(name: str, args: dict[str, Any]) -> dict[str, Any]:
    from pipeline.train import _train_epoch, fit, peak_rss_mb, resolve_device, seed_everything

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
    model = registry.build_model(name, model_cfg, catalog)
    if args["padded_items"] and hasattr(model, "item_encoder"):  # the reference layout, to measure packing
        model.item_encoder.packed = False
    if args["compile"]:
        model.forward = torch.compile(model.forward, dynamic=True)
    report: dict[str, Any] = {
        "model_config": model_cfg.__dict__,
        "train_precision": train_cfg.precision,
        "batch_size": train_cfg.batch_size,
        "max_seq_len": max_seq_len,
        "torch_threads": torch.get_num_threads(),
        "malloc_mmap_threshold": os.environ.get("MALLOC_MMAP_THRESHOLD_"),
    }
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
        if hasattr(model, "on_epoch_start"):
            model.on_epoch_start(1)
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
        result = fit(model, split, train_cfg, max_seq_len, None)
        report |= {
            "seconds_per_epoch": round(result.seconds_per_epoch, 2),
            "epochs_run": result.epochs_run,
            "best_epoch": result.best_epoch,
            "valid_ndcg10_per_epoch": [round(row["valid/NDCG@10"], 4) for row in result.history],
            "best_valid": {k: round(v, 4) for k, v in result.best_valid.items()},
            "selected_on_validation": result.selected_on_validation,
        }
    report["peak_rss_mb"] = round(peak_rss_mb(), 1)
    return report


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
    worker: Annotated[str, typer.Option(hidden=True)] = "",
) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    args = {
        "params": str(params),
        "prepared": str(prepared),
        "features": str(features),
        "max_steps": max_steps,
        "warmup_steps": warmup_steps,
        "num_threads": num_threads,
        "compile": compile_,
        "padded_items": padded_items,
    }
    per_model = {"odmt": odmt_set or [], "sasrec": sasrec_set or []}
    if worker:
        sets = [*(set_ or []), *per_model.get(worker, []), f"train.epochs={epochs}"]
        print("RESULT " + json.dumps(_worker(worker, args | {"sets": sets})), flush=True)
        return
    report: dict[str, Any] = {}
    env = os.environ | ({"MALLOC_MMAP_THRESHOLD_": str(malloc_mmap_threshold)} if malloc_mmap_threshold else {})
    for name in [m.strip() for m in models.split(",") if m.strip()]:
        cmd = [sys.executable, "-m", "bench.train_speed", "--worker", name, "--params", str(params)]
        cmd += ["--prepared", str(prepared), "--features", str(features), "--epochs", str(epochs)]
        cmd += ["--max-steps", str(max_steps), "--warmup-steps", str(warmup_steps), "--num-threads", str(num_threads)]
        cmd += ["--compile"] * compile_ + ["--padded-items"] * padded_items
        for flag, values in (("--set", set_ or []), ("--odmt-set", odmt_set or []), ("--sasrec-set", sasrec_set or [])):
            for value in values:
                cmd += [flag, value]
        log.info("running %s", name)
        done = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True, check=True)
        lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
        report[name] = json.loads(lines[-1][len("RESULT ") :])
        log.info(
            "%s: %.2f s/epoch, peak RSS %.0f MB", name, report[name]["seconds_per_epoch"], report[name]["peak_rss_mb"]
        )
    if "sasrec" in report and "odmt" in report:
        report["ratio"] = round(report["odmt"]["seconds_per_epoch"] / report["sasrec"]["seconds_per_epoch"], 2)
        if "cpu_seconds_per_epoch" in report["sasrec"]:
            cpu = report["odmt"]["cpu_seconds_per_epoch"] / report["sasrec"]["cpu_seconds_per_epoch"]
            report["cpu_ratio"] = round(cpu, 2)
    text = json.dumps(report, indent=2)
    print(text)
    if json_path is not None:
        json_path.write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    app()
