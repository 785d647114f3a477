"""Config loading, dotted overrides, validation messages, and every shipped config."""

from pathlib import Path

import pytest

from fedit.config import ConfigError, load_config, parse_overrides, save_config

ROOT = Path(__file__).resolve().parents[1]


def test_defaults_follow_shepherd():
    cfg = load_config()
    assert (cfg.lora.r, cfg.lora.alpha, cfg.lora.dropout) == (16, 16, 0.05)
    assert cfg.lora.target_modules == ["q_proj", "v_proj"]
    assert (cfg.train.lr, cfg.train.cutoff_len, cfg.data.template) == (3e-4, 512, "alpaca")
    assert not cfg.train.train_on_inputs


def test_dotted_overrides_types():
    cfg = load_config(
        None,
        [
            "train.lr=1e-3",
            "federation.rounds=3",
            "lora.target_modules=[q_proj,k_proj]",
            "data.columns.output=answer",
            "train.train_on_inputs=true",
            "data.partition.alpha=0.1",
            "seed=7",
        ],
    )
    assert cfg.train.lr == pytest.approx(1e-3)
    assert cfg.federation.rounds == 3
    assert cfg.lora.target_modules == ["q_proj", "k_proj"]
    assert cfg.data.columns.output == "answer"
    assert cfg.train.train_on_inputs is True
    assert cfg.data.partition.alpha == pytest.approx(0.1)
    assert cfg.seed == 7


def test_all_linear_and_comma_list():
    assert load_config(None, ["lora.target_modules=all-linear"]).lora.target_modules == "all-linear"
    cfg = load_config(None, ["lora.target_modules=q_proj,v_proj,o_proj"])
    assert cfg.lora.target_modules == ["q_proj", "v_proj", "o_proj"]


def test_unknown_key_named():
    with pytest.raises(ConfigError, match=r"train\.lrr: unknown key"):
        load_config(None, ["train.lrr=1"])
    with pytest.raises(ConfigError, match=r"bogus: unknown key"):
        load_config(None, ["bogus=1"])


def test_every_problem_listed_at_once():
    with pytest.raises(ConfigError) as info:
        load_config(None, ["data.partition.alpha=0", "model.dtype=fp8", "train.lr=-1"])
    message = str(info.value)
    assert "data.partition.alpha" in message and "model.dtype" in message and "train.lr" in message
    assert len(info.value.problems) == 3


def test_type_errors_name_key():
    with pytest.raises(ConfigError, match=r"federation.rounds: got 'many', expected an integer"):
        load_config(None, ["federation.rounds=many"])


def test_override_syntax_error():
    with pytest.raises(ConfigError, match="expected key=value"):
        parse_overrides(["train.lr"])


def test_yaml_file_and_round_trip(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("federation:\n  rounds: 4\ntrain:\n  lr: 2.0e-4\n")
    cfg = load_config(path, ["federation.rounds=6"])
    assert cfg.federation.rounds == 6 and cfg.train.lr == pytest.approx(2e-4)
    saved = tmp_path / "saved.yaml"
    saved.write_text(save_config(cfg))
    assert load_config(saved) == cfg


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: invalid YAML \(line"):
        load_config(bad)


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_load(path):
    cfg = load_config(path)
    assert cfg.output_dir.startswith("runs/")


def test_shipped_configs_exist():
    names = {p.name for p in (ROOT / "configs").glob("*.yaml")}
    assert {"quickstart.yaml", "shepherd_dolly.yaml", "shakespeare.yaml"} <= names


def test_mixed_ranks_need_exact():
    with pytest.raises(ConfigError, match=r"lora.client_ranks: .*strategy.name=exact"):
        load_config(None, ["lora.r=8", "lora.client_ranks=[4,8]"])
    cfg = load_config(None, ["lora.r=8", "lora.client_ranks=[4,8]", "strategy.name=exact"])
    assert [cfg.lora.rank_of(c) for c in range(4)] == [4, 8, 4, 8]
    with pytest.raises(ConfigError, match=r"lora.client_ranks: 16 is not in \[1, lora.r=8\]"):
        load_config(None, ["lora.r=8", "lora.client_ranks=[16]", "strategy.name=exact"])


def test_strategy_and_federation_choices_are_checked():
    with pytest.raises(ConfigError) as info:
        load_config(
            None,
            [
                "strategy.name=fedsgd",
                "federation.upload_compression=zip",
                "federation.selection=lottery",
                "federation.availability=0",
                "strategy.beta1=1.5",
                "strategy.server_lr=-1",
            ],
        )
    text = str(info.value)
    for key in (
        "strategy.name: unknown value 'fedsgd'",
        "federation.upload_compression: unknown value 'zip'",
        "federation.selection: unknown value 'lottery'",
        "federation.availability",
        "strategy.beta1",
        "strategy.server_lr",
    ):
        assert key in text
