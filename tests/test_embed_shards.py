"""Embedding in shards (issue 14): every finished shard is in the content cache at once, so an embed run killed
with SIGKILL resumes encoding only the items of unfinished shards, and ends with the same features; under torchrun
the processes split the shards between them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.features.batching import shard_batches
from pipeline.features.embed import embed_items
from pipeline.features.ranks import SINGLE, Ranks
from tests.fixtures import fake_encoder
from tests.helpers.data import write_items

REPO_ROOT = Path(__file__).resolve().parents[1]
ITEMS, BATCH, SHARD = 40, 4, 8  # 5 shards of 2 batches


def test_batches_never_span_two_shards() -> None:
    batches, shard_of = shard_batches(10, shard_size=4, batch_size=3)
    assert batches == [[0, 1, 2], [3], [4, 5, 6], [7], [8, 9]] and shard_of == [0, 0, 1, 1, 2]
    assert shard_batches(0, 4, 3) == ([], [])


def test_each_process_takes_every_world_th_shard_and_its_own_gpu() -> None:
    second = Ranks(rank=1, world=3, local_rank=1)
    assert [s for s in range(7) if second.owns(s)] == [1, 4] and not second.is_main and SINGLE.owns(5)
    assert second.device(torch.device("cuda")) == torch.device("cuda", 1)
    assert second.device(torch.device("cuda", 0)) == torch.device("cuda", 0)  # an explicit device is kept
    assert second.device(torch.device("cpu")) == torch.device("cpu")
    assert SINGLE.device(torch.device("cuda")) == torch.device("cuda")


def encoded_texts(log: Path) -> list[str]:
    return log.read_text(encoding="utf-8").splitlines() if log.exists() else []


def shards_in(cache: Path) -> list[Path]:
    return sorted(cache.glob("*/shard-*.npz"))


def wait_for(condition, timeout_s: float = 180.0) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("the embed subprocess did not get there in time")
        time.sleep(0.1)


@pytest.mark.slow
def test_sigkill_after_half_the_shards_resumes_with_only_the_rest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    texts = [f"movie {i}" for i in range(ITEMS)]
    items = write_items(tmp_path / "items.parquet", texts)
    out, cache, log = tmp_path / "features", tmp_path / "cache", tmp_path / "encoded.log"
    stall = 3 * SHARD + BATCH  # three shards flushed, the first batch of the fourth encoded but not yet flushed
    env = os.environ | {
        "PYTHONPATH": str(REPO_ROOT),
        "OMP_NUM_THREADS": "1",
        "FAKE_ENCODER_LOG": str(log),
        "FAKE_ENCODER_STALL_AFTER": str(stall),
    }
    args = [sys.executable, "-m", "tests.fixtures.fake_encoder", str(items), str(out), str(cache), str(SHARD)]
    proc = subprocess.Popen(args, env=env, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        # The fake encoder blocks once `stall` texts are encoded: the run is then inside the fourth shard.
        wait_for(lambda: proc.poll() is not None or len(encoded_texts(log)) >= stall)
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        assert len(shards_in(cache)) == 3  # polled cache state: the three finished shards are on disk
        os.kill(proc.pid, signal.SIGKILL)  # no finally, no atexit: only what was flushed survives
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert len(shards_in(cache)) == 3 and not (out / "manifest.json").exists()
    assert encoded_texts(log) == texts[:stall]

    fake_encoder.register_for(monkeypatch)
    log.unlink()
    monkeypatch.setenv("FAKE_ENCODER_LOG", str(log))
    entry = embed_items(items, out, cache, fake_encoder.config(SHARD, BATCH))["modalities"]["text"]
    assert encoded_texts(log) == texts[3 * SHARD :]  # only the unfinished shards, not a single item more
    assert entry["cache_hits"] == 3 * SHARD and entry["encoded"] == ITEMS - 3 * SHARD
    assert len(shards_in(cache)) == ITEMS // SHARD

    fresh = tmp_path / "fresh"
    embed_items(items, fresh, tmp_path / "fresh-cache", fake_encoder.config(SHARD, BATCH))
    for name in ("text.npy", "text_mask.npy", "text_tokens.npy", "text_tokens_mask.npy"):
        np.testing.assert_array_equal(np.load(out / name), np.load(fresh / name), err_msg=name)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["modalities"]["text"]["present"] == ITEMS and manifest["params"]["shard_size"] == SHARD


def test_each_shard_is_written_before_the_next_starts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process twin of the SIGKILL test: at every encoder call, all earlier shards are already on disk."""
    fake_encoder.register_for(monkeypatch)
    items = write_items(tmp_path / "items.parquet", [f"movie {i}" for i in range(20)] + [""])  # one item without text
    cache = tmp_path / "cache"
    seen: list[int] = []
    encode = fake_encoder.FakeTextEncoder.encode

    def spying(self, texts, want_tokens):  # noqa: ANN001, ANN202
        seen.append(len(shards_in(cache)))
        return encode(self, texts, want_tokens)

    monkeypatch.setattr(fake_encoder.FakeTextEncoder, "encode", spying)
    entry = embed_items(items, tmp_path / "out", cache, fake_encoder.config(shard_size=6, batch_size=4))
    assert seen == [0, 0, 1, 1, 2, 2, 3]  # shards of 6 = batches 4+2, 4+2, 4+2, 2
    assert len(shards_in(cache)) == 4 and entry["modalities"]["text"]["missing"] == 1


@pytest.mark.slow
def test_two_processes_under_torchrun_split_the_shards_and_match_one_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One process per device (CPU + gloo here): rank r encodes shards r, r+2, ...; rank 0 writes the outputs."""
    texts = [f"movie {i}" for i in range(ITEMS)]
    items = write_items(tmp_path / "items.parquet", texts)
    out, cache, log = tmp_path / "features", tmp_path / "cache", tmp_path / "encoded.log"
    env = os.environ | {"PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1", "FAKE_ENCODER_LOG": str(log)}
    env.pop("FAKE_ENCODER_STALL_AFTER", None)
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    script = ["-m", "tests.fixtures.fake_encoder", str(items), str(out), str(cache), str(SHARD)]
    done = subprocess.run(launcher + script, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    shards = [texts[s : s + SHARD] for s in range(0, ITEMS, SHARD)]
    assert encoded_texts(Path(f"{log}.rank0")) == shards[0] + shards[2] + shards[4]
    assert encoded_texts(Path(f"{log}.rank1")) == shards[1] + shards[3]
    assert len(shards_in(cache)) == len(shards)
    manifest = json.loads((out / "manifest.json").read_text())
    text = manifest["modalities"]["text"]
    assert manifest["device"].startswith("2 processes") and text["encoded"] == ITEMS and text["cache_hits"] == 0

    fresh = tmp_path / "fresh"
    fake_encoder.register_for(monkeypatch)
    embed_items(items, fresh, tmp_path / "fresh-cache", fake_encoder.config(SHARD, BATCH))
    for name in ("text.npy", "text_mask.npy", "text_tokens.npy", "text_tokens_mask.npy"):
        np.testing.assert_array_equal(np.load(out / name), np.load(fresh / name), err_msg=name)
