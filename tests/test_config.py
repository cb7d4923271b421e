"""Strict params loading: unknown, missing and mistyped keys are errors that name the key and the file."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pipeline.config import BaselineConfig, ConfigError, DataConfig, load_params, load_section

REPO = Path(__file__).resolve().parents[1]


def write_params(tmp_path: Path, edit) -> Path:  # noqa: ANN001
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    edit(raw)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_repository_params_load() -> None:
    params = load_params(REPO / "params.yaml")
    assert params.model.name == "odmt"  # the pipeline's model; the SASRec baseline has its own section
    assert params.data.max_seq_len == 200
    assert params.evaluate.ks == [5, 10, 20]
    assert params.model.build(REPO / "params.yaml").hidden_dim == 64
    assert params.embed.image_words.vocabulary is None and params.embed.image_words.top_k == 15  # CLIP words off


def test_image_words_keys_are_checked(tmp_path: Path) -> None:
    path = write_params(tmp_path, lambda r: r["embed"]["image_words"].update(top_k="15"))
    with pytest.raises(ConfigError, match=r"`embed\.image_words\.top_k` must be int"):
        load_params(path)
    path = write_params(tmp_path, lambda r: r["embed"].pop("image_words"))
    with pytest.raises(ConfigError, match=r"missing key `embed\.image_words`"):
        load_params(path)


def test_unknown_key_names_key_and_file(tmp_path: Path) -> None:
    path = write_params(tmp_path, lambda r: r["train"].update(learning_rate=0.1))
    with pytest.raises(ConfigError, match=r"params\.yaml: unknown key `train\.learning_rate`"):
        load_params(path)


def test_missing_key_is_an_error(tmp_path: Path) -> None:
    path = write_params(tmp_path, lambda r: r["data"].pop("user_core"))
    with pytest.raises(ConfigError, match=r"missing key `data\.user_core`"):
        load_params(path)


def test_wrong_type_is_an_error(tmp_path: Path) -> None:
    path = write_params(tmp_path, lambda r: r["train"].update(epochs="ten"))
    with pytest.raises(ConfigError, match=r"`train\.epochs` must be int"):
        load_params(path)


def test_bool_is_not_an_int_and_int_is_a_float(tmp_path: Path) -> None:
    path = write_params(tmp_path, lambda r: r["train"].update(epochs=True))
    with pytest.raises(ConfigError, match=r"train\.epochs"):
        load_params(path)
    path = write_params(tmp_path, lambda r: r["train"].update(lr=1))
    assert load_params(path).train.lr == 1.0


def test_literal_choices_are_listed(tmp_path: Path) -> None:
    path = write_params(tmp_path, lambda r: r["data"].update(dedupe="sometimes"))
    with pytest.raises(ConfigError, match=r"`data\.dedupe` = 'sometimes' must be one of 'user_item', 'exact'"):
        load_params(path)


def test_nested_section_errors_use_dotted_keys(tmp_path: Path) -> None:
    path = write_params(tmp_path, lambda r: r["embed"]["image"].update(colour="red"))
    with pytest.raises(ConfigError, match=r"unknown key `embed\.image\.colour`"):
        load_params(path)


def test_unknown_section_and_unknown_model(tmp_path: Path) -> None:
    path = write_params(tmp_path, lambda r: r.update(trian={"lr": 1}))
    with pytest.raises(ConfigError, match=r"unknown section `trian`"):
        load_params(path)
    path = write_params(tmp_path, lambda r: r["model"].update(name="gru5rec"))
    with pytest.raises(ConfigError, match=r"`model\.name` = 'gru5rec' must be one of: .*sasrec"):
        load_params(path)


def test_model_keys_must_belong_to_a_registered_model(tmp_path: Path) -> None:
    path = write_params(tmp_path, lambda r: r["model"].update(hiden_dim=8))
    with pytest.raises(ConfigError, match=r"unknown key `model\.hiden_dim`"):
        load_params(path)


def test_load_section_reads_one_section(tmp_path: Path) -> None:
    path = write_params(tmp_path, lambda r: r.pop("train"))
    data = load_section(DataConfig, "data", path)
    assert data.source == "ml1m_recbole"
    with pytest.raises(ConfigError, match=r"missing section `train`"):
        load_params(path)


def test_missing_params_file_says_where_to_run(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="params file not found"):
        load_params(tmp_path / "nope.yaml")


def test_a_changed_key_the_selected_model_does_not_read_is_an_error(tmp_path: Path) -> None:
    """`-S model.distill_weight=0.5` with model.name sasrec would be silently ignored: it must stop instead."""
    path = write_params(tmp_path, lambda r: r["model"].update(name="sasrec", distill_weight=0.5))
    with pytest.raises(ConfigError, match=r"`model\.distill_weight` = 0\.5 is read only by odmt.*'sasrec'.*1\.0"):
        load_params(path)
    path = write_params(tmp_path, lambda r: r["model"].update(name="odmt", cm_weight=0.5))
    with pytest.raises(ConfigError, match=r"`model\.cm_weight` = 0\.5 is read only by mp4sr.*model\.name: mp4sr"):
        load_params(path)


def test_switching_the_model_is_one_change(tmp_path: Path) -> None:
    """Keys of other models at their registered defaults pass: `-S model.name=...` alone switches the model."""
    for name in ("sasrec", "mp4sr", "odmt", "sasrec_fusion"):
        path = write_params(tmp_path, lambda r, n=name: r["model"].update(name=n))
        params = load_params(path)
        assert params.model.name == name
        assert params.model.build(path).hidden_dim == 64
    path = write_params(tmp_path, lambda r: r["model"].update(name="mp4sr", cm_weight=0.5))
    assert load_params(path).model.build(path).cm_weight == 0.5  # read by the selected model: fine


def test_each_model_runs_on_its_own_registered_settings(tmp_path: Path) -> None:
    """From the default params.yaml, `-S model.name=mp4sr` alone gives MP4SR its paper values, not ODMT's."""
    path = write_params(tmp_path, lambda r: r["model"].update(name="mp4sr"))
    mp4sr = load_params(path).model.build(path)
    assert (mp4sr.num_heads, mp4sr.dropout) == (2, 0.2)
    odmt = load_params(REPO / "params.yaml").model.build(REPO / "params.yaml")
    assert (odmt.num_heads, odmt.dropout) == (1, 0.1)
    # a model without a subsection (or a key left out of it) takes its registered default
    path = write_params(tmp_path, lambda r: (r["model"].update(name="mp4sr"), r["model"].pop("mp4sr")))
    assert load_params(path).model.build(path).num_heads == 2
    path = write_params(tmp_path, lambda r: r["model"].update(name="mp4sr", mp4sr={"hidden_dim": 32}))
    built = load_params(path).model.build(path)
    assert (built.hidden_dim, built.num_heads, built.dropout) == (32, 2, 0.2)


def test_a_value_set_for_a_model_is_honoured_and_read_by_no_other(tmp_path: Path) -> None:
    def set_mp4sr_dropout(r: dict) -> None:
        r["model"]["mp4sr"]["dropout"] = 0.3

    path = write_params(tmp_path, lambda r: (set_mp4sr_dropout(r), r["model"].update(name="mp4sr")))
    assert load_params(path).model.build(path).dropout == 0.3
    # the same params with ODMT selected: MP4SR's value is not read by ODMT, and would be ignored: an error
    path = write_params(tmp_path, set_mp4sr_dropout)
    with pytest.raises(ConfigError, match=r"`model\.mp4sr\.dropout` = 0\.3 is read only by mp4sr, but model\.name is "
                       r"'odmt', so it would be ignored.*model\.name: mp4sr.*mp4sr: 0\.2"):  # fmt: skip
        load_params(path)


def test_a_key_several_models_read_cannot_be_set_for_all_of_them(tmp_path: Path) -> None:
    path = write_params(tmp_path, lambda r: r["model"].update(dropout=0.3))
    with pytest.raises(ConfigError, match=r"`model\.dropout` is read by several models "
                       r"\(mp4sr, odmt, sasrec, sasrec_fusion\), so a value here would be read by whichever model is "
                       r"selected\. Set it for one model: model\.odmt\.dropout"):  # fmt: skip
        load_params(path)


def test_model_subsections_are_strict(tmp_path: Path) -> None:
    path = write_params(tmp_path, lambda r: r["model"]["odmt"].update(distill_weight=0.5))
    with pytest.raises(ConfigError, match=r"unknown key `model\.odmt\.distill_weight`.*set model\.distill_weight"):
        load_params(path)
    path = write_params(tmp_path, lambda r: r["model"]["odmt"].update(dropout="high"))
    with pytest.raises(ConfigError, match=r"`model\.odmt\.dropout` must be float, got 'high'"):
        load_params(path)
    path = write_params(tmp_path, lambda r: r["model"].update(mp4sr=[2]))
    with pytest.raises(ConfigError, match=r"`model\.mp4sr` must be a mapping of mp4sr's keys \(dropout, hidden_dim"):
        load_params(path)


def test_baseline_section_is_sasrec_only_and_strict(tmp_path: Path) -> None:
    cfg = load_section(BaselineConfig, "baseline", REPO / "params.yaml")
    assert cfg.build().num_heads >= 1 and cfg.train.epochs >= 1
    path = write_params(tmp_path, lambda r: r["baseline"]["model"].update(distill_weight=1.0))
    with pytest.raises(ConfigError, match=r"unknown key `baseline\.model\.distill_weight`"):
        load_section(BaselineConfig, "baseline", path)
    path = write_params(tmp_path, lambda r: r["baseline"]["train"].pop("patience"))
    with pytest.raises(ConfigError, match=r"missing key `baseline\.train\.patience`"):
        load_section(BaselineConfig, "baseline", path)


def test_a_config_built_in_python_is_checked_with_the_same_one_line_messages() -> None:
    import dataclasses

    from pipeline.config import check
    from pipeline.models.configs import MP4SRConfig, ODMTConfig

    with pytest.raises(ConfigError, match=r"^`model\.num_heads` = 3 must divide `model\.hidden_dim` = 64$"):
        check(ODMTConfig(num_heads=3))
    with pytest.raises(ConfigError, match=r"^`baseline\.model\.dropout` = 1\.5 must be in \[0, 1\)$"):
        check(dataclasses.replace(MP4SRConfig(), dropout=1.5), prefix="baseline.model")
    checked = dataclasses.asdict(check(ODMTConfig(distill_weight=2)))  # an int given for a float becomes a float
    assert checked == dataclasses.asdict(ODMTConfig()) | {"distill_weight": 2.0}
    assert type(checked["distill_weight"]) is float


def test_config_imports_no_model_code_and_the_registry_only_the_model_it_builds() -> None:
    import subprocess
    import sys

    def loaded(code: str) -> str:
        run = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
        return run.stdout.strip()

    no_models = (
        "import sys, pipeline.config, pipeline.models.configs; print(sorted(m for m in sys.modules "
        "if m.split('.')[0] == 'torch' or m.startswith('pipeline.models.') and m != 'pipeline.models.configs'))"
    )
    assert loaded(no_models) == "[]"
    one_model = (
        "import sys; from pipeline.models import registry; registry.spec('sasrec'); "
        "print(sorted(m for m in sys.modules if m in registry.MODEL_MODULES))"
    )
    assert loaded(one_model) == "['pipeline.models.sasrec']"


def test_lr_schedule_keys_are_checked_in_train_and_baseline(tmp_path: Path) -> None:
    path = write_params(tmp_path, lambda p: p["train"].update(warmup_epochs=12, epochs=12))
    with pytest.raises(ConfigError, match=r"`train.warmup_epochs` = 12 must be less than `train.epochs` = 12"):
        load_params(path)
    path = write_params(tmp_path, lambda p: p["baseline"]["train"].update(lr_schedule="step"))
    with pytest.raises(ConfigError, match=r"`baseline.train.lr_schedule` = 'step' must be one of 'constant', 'cosine'"):
        load_section(BaselineConfig, "baseline", path)
    path = write_params(tmp_path, lambda p: p["train"].update(lr_schedule="cosine", warmup_epochs=1))
    assert (load_params(path).train.lr_schedule, load_params(path).train.warmup_epochs) == ("cosine", 1)
