"""The embed stage end to end: output files, masks, manifest, load_catalog validation and the typer stage."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml
from typer.testing import CliRunner

from pipeline.config import EmbedConfig, EncoderConfig
from pipeline.features.embed import embed_items
from pipeline.features.inputs import read_items
from pipeline.features.store import load_catalog
from stages.embed import app
from tests.helpers.data import write_dataset
from tests.helpers.encoders import make_tiny_bert

REPO = Path(__file__).resolve().parents[1]


def real_config(store_tokens: bool = True) -> EmbedConfig:
    return EmbedConfig(
        device="cpu",
        text=EncoderConfig("minilm", None, None, batch_size=4, max_tokens=16),
        image=EncoderConfig("efficientnet_lite0", None, None, batch_size=4, max_tokens=16),
        store_tokens=store_tokens,
    )


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    root = tmp_path_factory.mktemp("embed")
    prepared = write_dataset(root)
    features = root / "features"
    manifest = embed_items(prepared / "items.parquet", features, root / "cache", real_config())
    return prepared, features, manifest


def test_outputs_have_padding_row_dims_and_dtypes(embedded: tuple[Path, Path, dict]) -> None:
    _, features, _ = embedded
    text, image = np.load(features / "text.npy"), np.load(features / "image.npy")
    assert text.shape == (9, 384) and text.dtype == np.float32
    assert image.shape == (9, 1280) and image.dtype == np.float32
    text_tokens, image_tokens = np.load(features / "text_tokens.npy"), np.load(features / "image_tokens.npy")
    assert text_tokens.shape == (9, 16, 384) and text_tokens.dtype == np.float16
    assert image_tokens.shape == (9, 16, 1280) and image_tokens.dtype == np.float16
    assert np.load(features / "text_tokens_mask.npy").shape == (9, 16)
    for array in (text, image, text_tokens, image_tokens):
        assert not array[0].any()  # row 0 = padding
    assert not list(features.glob(".tmp-*"))


def test_masks_mark_empty_text_missing_and_corrupt_images(embedded: tuple[Path, Path, dict]) -> None:
    _, features, _ = embedded
    text_mask, image_mask = np.load(features / "text_mask.npy"), np.load(features / "image_mask.npy")
    assert text_mask.dtype == bool and image_mask.dtype == bool
    assert text_mask.tolist() == [False, True, False, True, True, True, True, False, True]
    assert image_mask.tolist() == [False, True, True, True, True, True, False, False, False]
    text, image = np.load(features / "text.npy"), np.load(features / "image.npy")
    assert not text[~text_mask].any() and np.all(np.linalg.norm(text[text_mask], axis=1) > 0.99)
    assert not image[~image_mask].any() and np.all(np.abs(image[image_mask]).sum(axis=1) > 0)
    token_mask = np.load(features / "text_tokens_mask.npy")
    assert not token_mask[~text_mask].any() and token_mask[text_mask, 0].all()


def test_manifest_records_encoders_counts_and_hashes(embedded: tuple[Path, Path, dict]) -> None:
    _, features, manifest = embedded
    assert json.loads((features / "manifest.json").read_text()) == json.loads(json.dumps(manifest))
    assert manifest["num_items"] == 8 and manifest["device"] == "cpu" and manifest["seconds"] > 0
    assert len(manifest["params_hash"]) == 64 and manifest["store_tokens"] is True
    text, image = manifest["modalities"]["text"], manifest["modalities"]["image"]
    assert text["encoder"] == "minilm" and text["checkpoint_source"] == "package"
    assert Path(text["checkpoint"], "config.json").is_file()
    assert (text["dim"], text["tokens_shape"], text["items"]) == (384, [16, 384], 8)
    assert (text["present"], text["missing"], text["corrupt"]) == (6, 2, 0)
    assert image["encoder"] == "efficientnet_lite0" and Path(image["checkpoint"]).is_file()
    assert image["representation"] == "embedding" and "image_words" not in image  # CLIP words are off by default
    assert not (features / "image_words.parquet").exists()
    assert (image["dim"], image["tokens_shape"]) == (1280, [16, 1280])
    assert (image["present"], image["missing"], image["corrupt"]) == (5, 2, 1)
    assert (image["missing_path"], image["missing_file"]) == (1, 1)
    assert image["examples"]["corrupt"][0]["item_id"] == "m6"
    assert image["cache_hits"] == 0 and image["encoded"] == 5 and text["encoded"] == 6
    assert len(text["inputs_hash"]) == 64 and text["inputs_hash"] != image["inputs_hash"]


def test_rerun_is_served_from_cache_and_counts_corrupt_again(embedded: tuple[Path, Path, dict], tmp_path: Path) -> None:
    prepared, features, _ = embedded
    cache = features.parent / "cache"
    again = embed_items(prepared / "items.parquet", tmp_path / "again", cache, real_config())
    image = again["modalities"]["image"]
    assert image["encoded"] == 0 and image["cache_hits"] == 6 and image["corrupt"] == 1
    assert again["modalities"]["text"]["encoded"] == 0
    for name in ("text.npy", "image.npy", "image_mask.npy", "image_tokens.npy"):
        np.testing.assert_array_equal(np.load(tmp_path / "again" / name), np.load(features / name))


def test_load_catalog_loads_features_and_training_popularity(embedded: tuple[Path, Path, dict]) -> None:
    prepared, features, _ = embedded
    bare = load_catalog(features, prepared, ())
    assert bare.num_items == 8 and not bare.features and not bare.tokens
    # training parts: [1, 2, 3], [1], [2, 1]
    assert bare.popularity.tolist() == [0, 3, 2, 1, 0, 0, 0, 0, 0]
    assert bare.max_seq_len == 4  # longest input: train + valid target of user 1

    catalog = load_catalog(features, prepared, ("text", "image_tokens"), max_seq_len=50)
    assert catalog.max_seq_len == 50
    assert catalog.features["text"].shape == (9, 384) and "image" not in catalog.features
    assert catalog.tokens["image"].shape == (9, 16, 1280) and catalog.token_masks["image"].shape == (9, 16)
    assert catalog.masks["image"].tolist()[6:] == [False, False, False]


def test_load_catalog_rejects_wrong_shapes_and_missing_files(embedded: tuple[Path, Path, dict], tmp_path: Path) -> None:
    prepared, features, _ = embedded
    broken = tmp_path / "features"
    broken.mkdir()
    for f in features.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    np.save(broken / "image.npy", np.zeros((8, 1280), dtype=np.float32))
    with pytest.raises(ValueError, match=r"features/image\.npy has 8 rows; expected 9 \(items \+ padding row\)\. "):
        load_catalog(broken, prepared, ("image",))
    (broken / "text_tokens.npy").unlink()
    with pytest.raises(FileNotFoundError, match=r"features/text_tokens\.npy not found\. .*embed\.store_tokens"):
        load_catalog(broken, prepared, ("text_tokens",))
    with pytest.raises(ValueError, match=r"unknown feature 'audio'"):
        load_catalog(broken, prepared, ("audio",))
    (broken / "manifest.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"manifest\.json not found .*dvc repro embed"):
        load_catalog(broken, prepared, ("text",))


def test_disabled_modality_writes_nothing_and_load_catalog_says_so(tmp_path: Path) -> None:
    prepared = write_dataset(tmp_path)
    features = tmp_path / "features"
    features.mkdir()
    (features / "image.npy").write_bytes(b"stale output of an earlier run")
    bert = make_tiny_bert(tmp_path / "bert")
    cfg = EmbedConfig(
        device="cpu",
        text=EncoderConfig("hf", str(bert), None, batch_size=4, max_tokens=8),
        image=EncoderConfig("none", None, None, batch_size=4, max_tokens=16),
        store_tokens=False,
    )
    manifest = embed_items(prepared / "items.parquet", features, tmp_path / "cache", cfg)
    assert manifest["modalities"]["image"] == {"enabled": False, "encoder": "none"}
    assert sorted(p.name for p in features.iterdir()) == ["manifest.json", "text.npy", "text_mask.npy"]
    with pytest.raises(ValueError, match=r"needs image features, but embed\.image\.name was 'none'"):
        load_catalog(features, prepared, ("image",))


def test_read_items_errors_name_file_row_and_fix(tmp_path: Path) -> None:
    path = tmp_path / "items.parquet"
    pl.DataFrame({"item_idx": [1, 3], "item_id": ["a", "b"], "text": ["x", "y"]}).write_parquet(path)
    with pytest.raises(ValueError, match=r"items\.parquet: row 1 has item_idx 3; .*expected 2"):
        read_items(path, need_images=False)
    pl.DataFrame({"item_idx": [1, 2], "item_id": ["a", "b"], "text": ["x", None]}).write_parquet(path)
    with pytest.raises(ValueError, match=r"row 1 \(item_id 'b'\) has a null `text`"):
        read_items(path, need_images=False)
    with pytest.raises(ValueError, match=r"missing column `image_path`"):
        read_items(path, need_images=True)


def test_stage_runs_through_typer(tmp_path: Path) -> None:
    prepared = write_dataset(tmp_path)
    bert = make_tiny_bert(tmp_path / "bert")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["embed"]["text"].update(name="hf", checkpoint=str(bert), max_tokens=8)
    params["embed"]["image"]["name"] = "none"
    params["embed"]["store_tokens"] = True
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    args = ["--params", str(tmp_path / "params.yaml"), "--items", str(prepared / "items.parquet")]
    args += ["--out", str(tmp_path / "features"), "--cache", str(tmp_path / "cache")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "text: hf dim 16, 6/8 present" in result.output and "image: disabled" in result.output
    assert np.load(tmp_path / "features" / "text_tokens.npy").shape == (9, 8, 16)

    params["embed"]["text"]["nmae"] = "typo"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)  # a clean exit, not a crash
    assert "error: " in result.output and "unknown key `embed.text.nmae`" in result.output
    assert "--cache" in CliRunner().invoke(app, ["--help"]).output
