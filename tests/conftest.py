"""Shared pytest fixtures: keep them small and general (shared plain helpers live in tests/helpers/)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import yaml

from tests.fixtures.make_tiny_ml1m import write_tiny_ml1m
from tests.helpers.loopback import Loopback

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def tiny_ml1m_dir(tmp_path: Path) -> Path:
    """A GroupLens-format ML-1M with 30 users and 40 movies (see tests/fixtures/make_tiny_ml1m.py)."""
    return write_tiny_ml1m(tmp_path / "ml-1m")


@pytest.fixture
def tiny_params(tmp_path: Path, tiny_ml1m_dir: Path) -> Path:
    """The repository's params.yaml with `data` pointed at ``tiny_ml1m_dir`` (cores 3/3), written to tmp_path."""
    raw = yaml.safe_load((REPO_ROOT / "params.yaml").read_text(encoding="utf-8"))
    raw["data"].update(source="movielens", path=str(tiny_ml1m_dir), images_dir=None, user_core=3, item_core=3)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return path


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Tiny tensors: one intra-op thread is fastest and immune to oversubscribed CI machines; restored afterwards.

    Modules of tiny-model tests apply it to every test with ``pytestmark = pytest.mark.usefixtures("one_thread")``.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def restore_torch_threads() -> Iterator[None]:
    """``fit`` applies ``train.num_threads`` process-wide; give other tests their thread count back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def server() -> Iterator[Loopback]:
    """A loopback HTTP server (127.0.0.1, a free port; no internet) for one test, closed afterwards."""
    s = Loopback()
    yield s
    s.close()
