"""Distributed data-parallel training (pipeline/training/distributed.py) on CPU with gloo: world size 2 equals world
size 1.

Two processes (torch.multiprocessing, the env variables torchrun would set) train SASRec and ODMT (full softmax)
for one epoch at the same global batch as one process: the same per-step losses and, within float tolerance, the
same weights. Only rank 0 writes the checkpoint and DVCLive; the `train` stage relaunches itself under torchrun
with `train.launcher: torchrun`. Dropout is 0, as every rank draws its own dropout masks (see the module's doc).
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
import yaml
from typer.testing import CliRunner

from pipeline.config import ConfigError, load_section
from pipeline.config import TrainConfig as Cfg
from pipeline.data.splits import UserSplit
from pipeline.models.sasrec import SASRec, SASRecConfig
from pipeline.training import distributed
from pipeline.training import fit as fit_module
from pipeline.training.fit import fit, seed_everything
from pipeline.training.job import train_to_dir
from stages.prepare import app as prepare_app
from stages.train import app as train_app
from tests.helpers import odmt as odmt_toys
from tests.helpers import training as toys

pytestmark = pytest.mark.usefixtures("restore_torch_threads")

REPO = Path(__file__).resolve().parents[1]
WORLD = 2
TOLERANCE = {"atol": 1e-5, "rtol": 1e-4}


def sasrec() -> SASRec:
    seed_everything(0)
    return SASRec(SASRecConfig(hidden_dim=16, num_layers=1, num_heads=2, dropout=0.0), toys.catalog())


def odmt() -> torch.nn.Module:  # full softmax, mutual KD, fusion weights chosen on validation (rank 0's)
    return odmt_toys.make_model(head_weights="validation", distill_weight=1.0)


def jobs() -> dict[str, tuple[Any, UserSplit, Cfg, int]]:
    """name -> (model factory, split, train config, max_seq_len). Users 161 = 5 x 32 + 1 and 40 = 3 x 13 + 1: the
    last global batch has one row, so rank 1 gets none there (it joins the all-reduce with a zero share)."""
    return {
        "sasrec": (sasrec, toys.cycle_split(num_users=161), toys.train_cfg(epochs=1), toys.MAX_LEN),
        "odmt": (odmt, odmt_toys.tiny_split(), toys.train_cfg(epochs=1, batch_size=13), odmt_toys.MAX_LEN),
    }


def _rank_main(rank: int, port: int, tmp: str) -> None:
    """One rank: the environment torchrun would set, then the library's own entry points."""
    os.environ |= {"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(WORLD)}
    os.environ |= {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    with distributed.session("cpu"):
        assert distributed.world_size() == WORLD and distributed.rank() == rank
        for name, (build, split, cfg, max_len) in jobs().items():
            model = build()
            result = fit(model, split, cfg, max_len, None)
            torch.save({"state": model.state_dict(), "result": dataclasses.asdict(result)}, f"{tmp}/{name}{rank}.pt")
        sasrec_cfg = SASRecConfig(hidden_dim=16, num_layers=1, num_heads=2, dropout=0.0)
        cfg = toys.train_cfg(epochs=2)
        out = Path(tmp) / f"out{rank}"  # a directory per rank: only rank 0's may appear
        train_to_dir("sasrec", sasrec_cfg, cfg, toys.MAX_LEN, Path(tmp) / "prepared", Path(tmp) / "features", out)
        _cut_off_and_resume(rank, Path(tmp))


def _cut_off_and_resume(rank: int, tmp: Path) -> None:
    """Under DDP: every rank dies while training epoch 3, then reruns; rank 0 wrote the state, every rank reads it."""
    cfg, split = toys.train_cfg(epochs=4, patience=4), toys.cycle_split(num_users=161)
    straight = fit(sasrec(), split, cfg, toys.MAX_LEN, None)
    state, real, calls = tmp / "resume" / "train.pt", fit_module._train_epoch, {"n": 0}

    def dying(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        calls["n"] += 1
        if calls["n"] == 3:
            raise InterruptedError("cut off during epoch 3")
        return real(*args, **kwargs)

    fit_module._train_epoch = dying
    try:
        fit(sasrec(), split, cfg, toys.MAX_LEN, None, resume_path=state)
    except InterruptedError:
        pass
    finally:
        fit_module._train_epoch = real
    resumed = fit(sasrec(), split, cfg, toys.MAX_LEN, None, resume_path=state)
    results = {"straight": dataclasses.asdict(straight), "resumed": dataclasses.asdict(resumed)}
    torch.save(results, tmp / f"resume{rank}.pt")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Run :func:`_rank_main` on 2 gloo ranks once for this module's tests; their outputs are in the directory."""
    tmp = tmp_path_factory.mktemp("ddp")
    toys.write_prepared(tmp / "prepared", toys.cycle_split(num_users=40), toys.NUM_ITEMS)
    mp.spawn(_rank_main, args=(free_port(), str(tmp)), nprocs=WORLD, join=True)
    return tmp


@pytest.mark.parametrize("name", ["sasrec", "odmt"])
def test_two_gloo_ranks_equal_one_process_at_the_same_global_batch(two_ranks: Path, name: str) -> None:
    build, split, cfg, max_len = jobs()[name]
    single = build()
    expected = fit(single, split, cfg, max_len, None)
    ranks = [torch.load(two_ranks / f"{name}{r}.pt", weights_only=False) for r in range(WORLD)]
    steps = expected.step_losses
    assert len(steps) == len(ranks[0]["result"]["step_losses"]) > 3  # the global batch count does not change
    for got in ranks:  # every rank reports the global batch's losses and rank 0's validation
        np.testing.assert_allclose(got["result"]["step_losses"], steps, **TOLERANCE)
        assert got["result"]["history"][0]["train/loss"] == pytest.approx(expected.history[0]["train/loss"], 1e-5)
        assert got["result"]["best_valid"] == pytest.approx(expected.best_valid, abs=1e-6)
        assert got["state"].keys() == single.state_dict().keys()
        for key, value in single.state_dict().items():
            torch.testing.assert_close(got["state"][key], value, **TOLERANCE, msg=f"{name} {key}")
    if name == "odmt":  # chosen on rank 0's validation, broadcast: every rank holds the same fusion weights
        assert ranks[1]["result"]["selected_on_validation"] == ranks[0]["result"]["selected_on_validation"]
        torch.testing.assert_close(ranks[1]["state"]["head_weight"], ranks[0]["state"]["head_weight"])


def test_only_rank_0_writes_the_checkpoint_summary_and_dvclive(two_ranks: Path) -> None:
    out = two_ranks / "out0"
    assert (out / "model.pt").exists() and (out / "train_summary.json").exists()
    assert json.loads((out / "dvclive" / "metrics.json").read_text())["step"] == 1  # 2 epochs, logged once each
    assert len((out / "dvclive" / "plots" / "metrics" / "train" / "loss.tsv").read_text().splitlines()) == 3
    assert not (two_ranks / "out1").exists()


def test_an_interrupted_ddp_run_resumes_on_every_rank_like_an_uninterrupted_one(two_ranks: Path) -> None:
    for rank in range(WORLD):
        got = torch.load(two_ranks / f"resume{rank}.pt", weights_only=False)
        straight, resumed = got["straight"], got["resumed"]
        assert resumed["resumed_after_epoch"] == 2 and resumed["epochs_run"] == straight["epochs_run"] == 4
        assert resumed["step_losses"] == straight["step_losses"]  # rank 0's state, restored on both ranks
        untimed = [[{k: v for k, v in row.items() if "second" not in k} for row in r["history"]] for r in got.values()]
        assert untimed[0] == untimed[1]  # straight, resumed
    assert not (two_ranks / "resume" / "train.pt").exists()  # removed by rank 0 when training ended


def test_shard_splits_rows_and_weights_each_rank_by_its_target_positions() -> None:
    targets = torch.tensor([[0, 0, 5], [0, 0, 4], [1, 2, 3]])  # 1, 1 and 3 target positions
    batch = {"input_ids": targets.clone(), "target_ids": targets}
    first, share0 = distributed.shard(batch, 0, 2)
    second, share1 = distributed.shard(batch, 1, 2)
    assert first["target_ids"].tolist() == [[5], [4]]  # rows 0 and 1, trimmed to their own longest row
    assert second["target_ids"].tolist() == [[1, 2, 3]]
    assert (share0, share1) == (2 / 5, 3 / 5)
    lone = {k: v[:1] for k, v in batch.items()}  # one row for two ranks: rank 1 repeats it and adds nothing
    assert distributed.shard(lone, 0, 2)[1] == 1.0 and distributed.shard(lone, 1, 2)[1] == 0.0
    assert distributed.shard(lone, 1, 2)[0]["target_ids"].tolist() == [[5]]


def test_torchrun_command_single_node_and_multi_node() -> None:
    cmd = distributed.torchrun_command("stages.train", ["--params", "p.yaml"], 4)
    assert cmd[1:] == [
        *("-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "4"),
        *("-m", "stages.train", "--params", "p.yaml"),
    ]
    rdzv = "--nnodes 2 --node-rank 1 --rdzv-backend c10d --rdzv-endpoint host0:29500"
    multi = distributed.torchrun_command("stages.train", [], 8, rdzv)
    assert "--standalone" not in multi and multi[3:11] == rdzv.split() and multi[-2:] == ["-m", "stages.train"]
    with pytest.raises(ValueError, match="train.nproc"):
        distributed.torchrun_command("stages.train", [], 8, "--nproc-per-node=2")


def test_launcher_params_are_checked(tmp_path: Path) -> None:
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    assert raw["train"]["launcher"] == raw["baseline"]["train"]["launcher"] == "none"
    raw["train"]["launcher"] = "mpirun"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match="train.launcher"):
        load_section(Cfg, "train", tmp_path / "params.yaml")
    cfg = toys.train_cfg(nproc=2)  # launcher none: nproc 2 would be ignored
    with pytest.raises(ValueError, match="train.nproc = 2 has no effect with train.launcher: none"):
        distributed.relaunch(cfg, "stages.train", [])
    assert distributed.relaunch(dataclasses.replace(cfg, nproc=1), "stages.train", []) is False  # train here
    with pytest.raises(ValueError, match="baseline.train.nproc = 0 must be >= 1"):
        distributed.check_launcher(dataclasses.replace(cfg, launcher="torchrun", nproc=0), "baseline.train")


@pytest.mark.slow
def test_train_stage_relaunches_itself_under_torchrun(
    tmp_path: Path, tiny_params: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`train.launcher: torchrun` + `train.nproc: 2` on the tiny ML-1M: the DVC stage's own command trains on 2 gloo
    ranks and writes what one process writes (the same loss curve and, at dropout 0, the same weights)."""
    _stage_under_torchrun_equals_one_process(tmp_path, tiny_params, monkeypatch, "cpu", WORLD, TOLERANCE)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_train_stage_under_torchrun_on_every_gpu(
    tmp_path: Path, tiny_params: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """NCCL, one rank per visible GPU (one GPU still exercises NCCL's collectives on CUDA tensors)."""
    gpus = torch.cuda.device_count()
    # CUDA's embedding backward sums with atomics (order not fixed): a looser tolerance than on CPU
    _stage_under_torchrun_equals_one_process(
        tmp_path, tiny_params, monkeypatch, "cuda", gpus, {"atol": 1e-4, "rtol": 1e-3}
    )


def _stage_under_torchrun_equals_one_process(
    tmp_path: Path, tiny_params: Path, monkeypatch: pytest.MonkeyPatch, device: str, nproc: int, tolerance: dict
) -> None:
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.delenv(distributed.EXTRA_ARGS_ENV, raising=False)
    prepared = tmp_path / "prepared"
    done = CliRunner().invoke(prepare_app, ["--params", str(tiny_params), "--out", str(prepared)])
    assert done.exit_code == 0, done.output
    raw = yaml.safe_load(tiny_params.read_text())
    raw["data"]["max_seq_len"] = 20
    raw["train"] |= {"epochs": 2, "device": device, "batch_size": 8, "num_threads": 1}
    raw["model"] |= {"name": "sasrec", "sasrec": {"hidden_dim": 16, "num_layers": 1, "num_heads": 2, "dropout": 0.0}}
    states, curves = {}, {}
    for launcher, n in (("none", 1), ("torchrun", nproc)):
        raw["train"] |= {"launcher": launcher, "nproc": n}
        params, out = tmp_path / f"{launcher}.yaml", tmp_path / launcher
        params.write_text(yaml.safe_dump(raw))
        args = ["--params", str(params), "--prepared", str(prepared), "--features", str(tmp_path / "features")]
        result = CliRunner().invoke(train_app, [*args, "--out", str(out)])
        assert result.exit_code == 0, result.output
        summary = json.loads((out / "train_summary.json").read_text())
        assert summary["epochs_run"] == 2 and summary["device"].startswith(device)
        curve = (out / "dvclive" / "plots" / "metrics" / "train" / "loss.tsv").read_text().splitlines()[1:]
        curves[launcher] = [float(line.split("\t")[-1]) for line in curve]  # step, loss
        states[launcher] = torch.load(out / "model.pt", map_location="cpu", weights_only=True)["state_dict"]
    assert len(curves["none"]) == 2
    np.testing.assert_allclose(curves["torchrun"], curves["none"], **tolerance)
    for key, value in states["none"].items():
        torch.testing.assert_close(states["torchrun"][key], value, **tolerance, msg=key)
