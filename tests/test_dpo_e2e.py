"""FedDPO end to end on the tiny Llama: from an SFT adapter (model.adapter), report, resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fedit.config import STRATEGIES, ConfigError, load_config
from fedit.experiment import run_experiment
from helpers import CrashInRound, tiny_args

ROOT = Path(__file__).resolve().parents[1]
DPO = ROOT / "configs" / "dpo.yaml"
QUICKSTART = ROOT / "configs" / "quickstart.yaml"
FAST = ("data.synthetic.num_examples=80", "eval.max_new_tokens=4", "lora.r=4", "lora.alpha=8")


def _adapter(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "adapter_model.safetensors"))


@pytest.fixture(scope="module")
def sft_adapter(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One round of instruction tuning: the adapter FedDPO starts from."""
    out = tmp_path_factory.mktemp("sft") / "run"
    args = tiny_args(tiny_model_dir, out, *FAST, "federation.rounds=1", "eval.generate=false")
    return run_experiment(load_config(QUICKSTART, args)).run_dir / "global_adapter"


def _dpo_args(model_dir: Path, out: Path, adapter: Path, *extra: str) -> list[str]:
    return tiny_args(model_dir, out, *FAST, f"model.adapter={adapter}", *extra)


def test_feddpo_two_rounds_from_an_adapter(tiny_model_dir, sft_adapter, tmp_path):
    cfg = load_config(DPO, _dpo_args(tiny_model_dir, tmp_path / "dpo", sft_adapter))
    outcome = run_experiment(cfg)
    history = outcome.history
    # Round 0 scores the starting adapter, not LoRA's fresh init.
    start = _adapter(sft_adapter)
    assert any(t.abs().sum() > 0 for k, t in start.items() if "lora_B" in k)
    assert [r["round"] for r in history] == [0, 1, 2]
    for record in history[1:]:
        for metrics in record["client_metrics"].values():
            assert {"dpo_loss", "reward_accuracy", "reward_margin"} <= set(metrics)
        evaluation = record["eval"]
        assert 0 <= evaluation["reward_accuracy"] <= 1
        assert set(evaluation["reward_accuracy_by_category"]) == set(
            evaluation["accuracy_by_category"]
        )
        assert "chosen_logp" in evaluation and "rejected_logp" in evaluation
    # The starting adapter already differs from the base model, the eval reference.
    assert history[0]["eval"]["reward_margin"] != 0
    final = _adapter(outcome.run_dir / "global_adapter")
    assert any(not torch.equal(final[k], start[k]) for k in start)
    report = (outcome.run_dir / "report.md").read_text()
    assert "Objective: `dpo`" in report and "reward accuracy" in report


def test_feddpo_resumes_bit_identically(tiny_model_dir, sft_adapter, tmp_path):
    extra = ("federation.rounds=3", "eval.generate=false", "strategy.name=fedadam")
    full = run_experiment(
        load_config(DPO, _dpo_args(tiny_model_dir, tmp_path / "full", sft_adapter, *extra))
    )
    crashed = _dpo_args(tiny_model_dir, tmp_path / "crashed", sft_adapter, *extra)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(load_config(DPO, crashed), CrashInRound(3))
    run_experiment(load_config(DPO, [*crashed, "resume=true"]))
    torch.testing.assert_close(
        _adapter(full.run_dir / "global_adapter"),
        _adapter(tmp_path / "crashed" / "global_adapter"),
        rtol=0,
        atol=0,
    )
    lines = (tmp_path / "crashed" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["round"] for line in lines] == [0, 1, 2, 3]


def test_start_adapter_of_another_shape_is_refused(tiny_model_dir, sft_adapter, tmp_path):
    args = _dpo_args(tiny_model_dir, tmp_path / "bad", sft_adapter, "lora.r=8")
    with pytest.raises(ConfigError, match=r"model.adapter: .* has r=4 but lora.r=8; set lora.r=4"):
        run_experiment(load_config(DPO, args))
    assert not (tmp_path / "bad").exists()


def test_compare_on_a_dpo_config(tiny_model_dir, sft_adapter, tmp_path, capsys):
    from fedit.cli.main import main

    out = tmp_path / "cmp"
    args = _dpo_args(tiny_model_dir, out, sft_adapter, "compare.num_local=1")
    assert main(["compare", str(DPO), *args]) == 0
    stored = json.loads((out / "compare" / "results.json").read_text())
    names = [m["name"] for m in stored["models"]]
    assert names[:2] == ["base", "start"] and "fedit" in names and "centralized" in names
    assert any(name.startswith("local-") for name in names)
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    for name in names:
        result = stored["results"][name]["preference"]
        assert {"reward_accuracy", "reward_margin", "accuracy", "chosen_logp"} <= set(result)
        assert set(result["reward_accuracy_by_category"]) == set(result["accuracy_by_category"])
    results = stored["results"]
    assert results["base"]["preference"]["reward_margin"] == 0  # the reference itself
    # The suite's held-out pairs are the run's: the same scores as the run's own evaluation.
    for name, record in (("start", history[0]), ("fedit", history[-1])):
        for metric in ("reward_accuracy", "reward_margin", "accuracy"):
            assert results[name]["preference"][metric] == pytest.approx(
                record["eval"][metric], rel=1e-4, abs=1e-6
            )
    report = (out / "compare" / "report.md").read_text()
    assert "reward accuracy" in report and "| start |" in report
    code = main(["eval", "--adapter", str(out / "global_adapter"), "--suite", "preference"])
    assert code == 0
    scored = json.loads((out / "eval" / "preference.json").read_text())
    assert scored["reward_accuracy"] == pytest.approx(history[-1]["eval"]["reward_accuracy"])
    capsys.readouterr()


def test_a_flower_site_trains_the_same_dpo_update_as_in_process(
    tiny_model_dir, sft_adapter, tmp_path
):
    from fedit.client.fit import fit_client
    from fedit.data.prepare import prepare_data
    from fedit.engines.flower_site import train_site
    from fedit.experiment import load_setup
    from fedit.types import FitConfig, FitInstruction

    cfg = load_config(DPO, _dpo_args(tiny_model_dir, tmp_path / "x", sft_adapter))
    setup = load_setup(cfg, prepare_data(cfg))
    start = setup.server.initial_state()
    instruction = FitInstruction(1, start, FitConfig(lr=1e-3, rank=cfg.lora.r, seed=7))
    local = fit_client(setup.server.model, setup.client_data[1], cfg, instruction)
    node = {"partition-id": 1, "num-partitions": cfg.federation.num_clients}
    remote = train_site(cfg, node, instruction)
    torch.testing.assert_close(remote.state, local.state)
    assert remote.metrics["reward_accuracy"] == local.metrics["reward_accuracy"]
    assert remote.train_loss == pytest.approx(local.train_loss)


def test_dpo_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="train.train_on_inputs: DPO compares"):
        load_config(DPO, ["train.train_on_inputs=true"])
    with pytest.raises(ConfigError) as info:
        load_config(DPO, ["dpo.reference=policy", "dpo.loss=hinge", "dpo.beta=0"])
    message = str(info.value)
    assert "dpo.reference: unknown value 'policy'" in message
    assert "dpo.loss: unknown value 'hinge'" in message and "dpo.beta: must be > 0" in message


@pytest.mark.slow
@pytest.mark.parametrize("name", STRATEGIES)
def test_feddpo_with_every_strategy_and_int8_uploads(name, tiny_model_dir, sft_adapter, tmp_path):
    args = _dpo_args(
        tiny_model_dir,
        tmp_path / name,
        sft_adapter,
        f"strategy.name={name}",
        *(("federation.system.profiles=sampled",) if name == "fedbuff" else ()),
        "federation.upload_compression=int8",
        "eval.generate=false",
    )
    outcome = run_experiment(load_config(DPO, args))
    final = _adapter(outcome.run_dir / "global_adapter")
    assert all(torch.isfinite(t).all() for t in final.values())
    for record in outcome.history[1:]:
        assert record["eval"]["reward_accuracy"] is not None
        for metrics in record["client_metrics"].values():
            assert "reward_accuracy" in metrics and metrics["bytes_up"] > 0
