"""Every strategy, heterogeneous ranks and upload compression, end to end on the tiny Llama."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fedit.config import STRATEGIES, load_config
from fedit.experiment import run_experiment
from fedit.server.checkpoint import STRATEGY_FILE
from helpers import CrashInRound, tiny_args

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "configs" / "quickstart.yaml"
FAST = ("eval.generate=false", "data.synthetic.num_examples=80")


def _run(model_dir: Path, out: Path, *extra: str):
    cfg = load_config(QUICKSTART, tiny_args(model_dir, out, *FAST, *extra))
    return run_experiment(cfg)


def _adapter(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "adapter_model.safetensors"))


@pytest.mark.parametrize("name", STRATEGIES)
def test_strategy_runs_two_rounds(name, tiny_model_dir, tmp_path):
    clock = ("federation.system.profiles=sampled",) if name == "fedbuff" else ()  # it needs one
    outcome = _run(tiny_model_dir, tmp_path / name, f"strategy.name={name}", *clock)
    rounds = [r for r in outcome.history if r["round"] > 0]
    assert len(rounds) == 2
    for record in rounds:
        assert record["communication"]["bytes_down"] > 0
        assert record["communication"]["bytes_up"] > 0
        for metrics in record["client_metrics"].values():
            assert metrics["bytes_up"] > 0 and metrics["bytes_down"] > 0
    first, last = (
        _adapter(outcome.run_dir / "checkpoints" / "round_001"),
        _adapter(outcome.run_dir / "global_adapter"),
    )
    assert any(not torch.equal(first[k], last[k]) for k in first)  # round 2 changed something
    assert all(torch.isfinite(t).all() for t in last.values())
    report = (outcome.run_dir / "report.md").read_text()
    assert "## Communication" in report and "MB" in report


def test_ffa_lora_keeps_a_at_its_init_and_halves_uploads(tiny_model_dir, tmp_path):
    ffa = _run(tiny_model_dir, tmp_path / "ffa", "strategy.name=ffa_lora")
    avg = _run(tiny_model_dir, tmp_path / "avg", "strategy.name=fedavg")
    ffa_state, avg_round1 = (
        _adapter(ffa.run_dir / "global_adapter"),
        _adapter(avg.run_dir / "checkpoints" / "round_001"),
    )
    for key, value in ffa_state.items():
        if ".lora_A." in key:
            # Same seed, same init: FedAvg's round-1 A moved away from it; FFA-LoRA's never did.
            init = _adapter(ffa.run_dir / "checkpoints" / "round_001")[key]
            assert torch.equal(value, init)
            assert not torch.equal(avg_round1[key], init)
    up_ffa = ffa.history[1]["communication"]["bytes_up"]
    up_avg = avg.history[1]["communication"]["bytes_up"]
    assert up_ffa < 0.6 * up_avg


def test_heterogeneous_ranks_end_to_end(tiny_model_dir, tmp_path):
    outcome = _run(
        tiny_model_dir,
        tmp_path / "hetero",
        "strategy.name=exact",
        "lora.r=8",
        "lora.client_ranks=[2,8]",
        "federation.fraction_fit=1.0",
    )
    record = outcome.history[-1]
    assert record["selected_clients"] == [0, 1, 2, 3]
    # Rank-2 clients download and upload a quarter of what rank-8 clients do.
    metrics = record["client_metrics"]
    assert metrics["0"]["bytes_up"] < 0.4 * metrics["1"]["bytes_up"]
    assert record["aggregation"]["truncation_error"] > 0  # 2 + 8 + 2 + 8 > 8
    state = _adapter(outcome.run_dir / "global_adapter")
    assert all(t.shape[0] == 8 for k, t in state.items() if ".lora_A." in k)


def test_compressed_uploads_record_error(tiny_model_dir, tmp_path):
    outcome = _run(tiny_model_dir, tmp_path / "int8", "federation.upload_compression=int8")
    plain = _run(tiny_model_dir, tmp_path / "none")
    for metrics in outcome.history[-1]["client_metrics"].values():
        assert 0 < metrics["compression_error"]["relative_error"] < 0.05
    assert (
        outcome.history[-1]["communication"]["bytes_up"]
        < 0.4 * plain.history[-1]["communication"]["bytes_up"]
    )


def test_availability_records_dropouts(tiny_model_dir, tmp_path):
    outcome = _run(
        tiny_model_dir,
        tmp_path / "avail",
        "federation.selection=availability",
        "federation.availability=0.5",
        "federation.fraction_fit=1.0",
        "federation.rounds=3",
    )
    rounds = [r for r in outcome.history if r["round"] > 0]
    assert sum(len(r["dropped_clients"]) for r in rounds) > 0
    for record in rounds:
        answered = set(record["train_loss"])
        assert answered == {str(c) for c in record["selected_clients"]} - {
            str(c) for c in record["dropped_clients"]
        }


@pytest.mark.parametrize("name", ["scaffold", "fedadam"])
def test_stateful_strategy_resumes_bit_identically(name, tiny_model_dir, tmp_path):
    extra = (f"strategy.name={name}", "federation.rounds=3")
    full = _run(tiny_model_dir, tmp_path / "full", *extra)
    crashed_args = tiny_args(tiny_model_dir, tmp_path / "crashed", *FAST, *extra)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(load_config(QUICKSTART, crashed_args), CrashInRound(3))
    assert (tmp_path / "crashed" / "checkpoints" / "round_002" / STRATEGY_FILE).is_file()
    run_experiment(load_config(QUICKSTART, [*crashed_args, "resume=true"]))
    torch.testing.assert_close(
        _adapter(full.run_dir / "global_adapter"),
        _adapter(tmp_path / "crashed" / "global_adapter"),
        rtol=0,
        atol=0,
    )
    marker = json.loads(
        (tmp_path / "crashed" / "checkpoints" / "round_003" / "round.json").read_text()
    )
    assert marker["strategy_tensors"] > 0
