"""FedDPO end to end on the tiny Llama: from an SFT adapter (model.adapter), report, resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fedit.config import ConfigError, load_config
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
