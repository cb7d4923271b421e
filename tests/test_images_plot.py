"""The cards-vs-posters per-head plot written by the ablation runner, and its link in the experiments section."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from pipeline.reporting.experiments import experiments_markdown
from pipeline.reporting.images_plot import PLOT_NAME, head_scores, plot_cards_vs_posters


def _result(folder: Path, name: str, model: str, fused: float, heads: dict[str, float], seeds: list[int]) -> None:
    metrics = {model: {"valid": {"NDCG@10": fused}, "test": {"NDCG@10": fused}}}
    metrics |= {f"{model}[{h}]": {"test": {"NDCG@10": v}} for h, v in heads.items()}
    folder.mkdir(parents=True, exist_ok=True)
    row = {"name": name, "model": model, "seeds": seeds, "metrics": metrics, "order": 0}
    (folder / f"{name}.json").write_text(json.dumps(row))


def test_per_head_scores_of_multi_head_rows_only(tmp_path: Path) -> None:
    _result(tmp_path / "s", "odmt", "odmt", 0.12, {"id": 0.09, "text": 0.10, "image": 0.11}, [42, 43])
    _result(tmp_path / "s", "sasrec", "sasrec", 0.10, {}, [42])  # one head: no per-head rows, not plotted
    scores = head_scores(tmp_path / "s")
    assert scores == {"odmt": ({"fused": 0.12, "id": 0.09, "text": 0.10, "image": 0.11}, [42, 43])}


def test_plot_written_for_a_cards_and_posters_pair_and_linked(tmp_path: Path) -> None:
    results = tmp_path / "experiments"
    _result(results / "odmt_last15", "odmt", "odmt", 0.12, {"id": 0.09, "text": 0.10, "image": 0.11}, [42])
    assert plot_cards_vs_posters(results) is None and not (results / PLOT_NAME).exists()  # no posters suite yet
    assert "heads_cards_vs_posters" not in experiments_markdown(results)
    _result(results / "odmt_last15_posters", "odmt", "odmt", 0.13, {"id": 0.09, "text": 0.10, "image": 0.12}, [42])
    path = plot_cards_vs_posters(results)
    assert path == results / PLOT_NAME
    with Image.open(path) as image:
        assert image.format == "PNG" and image.width > 300
    assert f"![per-head test NDCG@10](experiments/{PLOT_NAME})" in experiments_markdown(results)
    (results / "odmt_last15_posters" / "odmt.json").unlink()  # the pair is gone: so is the plot
    assert plot_cards_vs_posters(results) is None and not path.exists()
