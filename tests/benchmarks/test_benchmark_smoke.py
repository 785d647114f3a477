"""The GPU benchmarks' CPU smoke modes (tiny Llama, 2 steps), so the scripts cannot rot.

They measure nothing here; the checks are that every table is written and adds up.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture
def benchmarks_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # the scripts import their `common`


def test_step_profile_smoke_writes_split_step_syncs_and_profile(
    benchmarks_on_path, tiny_model_dir, tmp_path
):
    import step_profile

    out = tmp_path / "profile"
    body = step_profile.main(["--smoke", "--model", str(tiny_model_dir), "--output-dir", str(out)])

    figures = json.loads((out / "figures.json").read_text())
    clients = figures["clients"]
    assert len(clients) == 2  # one round, half of 4 clients
    for client in clients:
        assert len(client["step_starts"]) == len(client["step_ends"]) == 2
        split = client["split"]
        assert min(split.values()) > 0
        parts = split["setup"] + split["steps"] + split["teardown"]
        assert parts == pytest.approx(split["total"], rel=1e-9)
    # Measured independently: the transport's wall time around the same round trips.
    round_trips = sum(client["split"]["total"] for client in clients)
    assert round_trips == pytest.approx(figures["fit_seconds"], rel=0.05, abs=0.05)
    assert figures["step_seconds"]["fedit"] > 0 and figures["step_seconds"]["bare"] > 0
    per_step = figures["per_step"]
    assert per_step["fedit_syncs"] is None and per_step["bare_syncs"] is None  # no CUDA here
    assert per_step["fedit_reads"] > 0 and per_step["bare_reads"] > 0

    cpu_table = (out / "ops_cpu.txt").read_text()
    assert "aten::mm" in cpu_table and "Self CPU time total" in cpu_table
    assert (out / "ops_cuda.txt").read_text().startswith("n/a")
    trace = json.loads((out / "trace.json").read_text())
    assert trace["traceEvents"]
    assert (out / "summary.md").read_text().strip() == body.strip()
    assert "### Steady-state step" in body and "### Host-device syncs per step" in body
    assert not (out / "section.md").exists()  # a smoke run never reaches the docs


def test_gpu_scale_smoke_writes_its_table(benchmarks_on_path, tmp_path):
    import gpu_scale

    out = tmp_path / "scale"
    body = gpu_scale.main(["--smoke", "--output-dir", str(out)])

    assert (out / "table.md").read_text().strip() == body.strip()
    assert not (out / "section.md").exists()  # a smoke run never reaches the docs
    entries = json.loads((out / "figures.json").read_text())
    measured = {(e["base"], e["loop"]): e for e in entries if e["result"] is not None}
    for base in ("bf16", "4bit"):  # bf16 means fp32 on a CPU; the 4-bit base is bitsandbytes'
        assert {(base, gpu_scale.BARE), (base, gpu_scale.NO_LEVER + " (as shipped)")} <= set(
            measured
        )
    for entry in measured.values():
        result = entry["result"]
        assert result["micro_batch"] == 2 and result["tokens"] == 2 * 64  # 1 timed step
        assert result["seconds"] > 0 and 0 <= result["warmup_seconds"] < 60  # a duration
        assert abs(result["loss"] - math.log(512)) < 0.5  # random init: about ln V
    not_run = [e["note"] for e in entries if e["result"] is None]
    assert any("liger" in note or "CUDA" in note for note in not_run)
    assert "| tiny | bf16 | 64 | gradient checkpointing" in body
    assert "MFU counts F = 4·N_lin·s" in body


def test_mfu_formula_by_hand(benchmarks_on_path):
    from gpu_shapes import SHAPES, card_peak, flops_per_sequence

    d, inner, layers, vocab = 4096, 11008, 32, 32000  # 7b: no grouped KV heads
    linear = layers * (4 * d * d + 3 * d * inner)
    expected = (
        4 * linear * 2048 + 6 * 1000 * 2048 + 4 * d * vocab * 1024 + 12 * layers * 2048**2 * d
    )
    assert SHAPES["7b"]["num_key_value_heads"] == SHAPES["7b"]["num_attention_heads"]
    assert flops_per_sequence("7b", 2048, 1024, 1000) == expected
    # The frozen base dominates: about 4 FLOPs per base weight per token at this length.
    assert 4.0 < expected / (2048 * linear) < 5.0
    assert card_peak("NVIDIA H100 80GB HBM3") == ("H100 SXM", 989e12)
    assert card_peak("NVIDIA H200") == ("H200", 989e12)
    assert card_peak("NVIDIA H100 PCIe") is None


def test_systems_smoke_runs_every_method_and_does_not_judge_one_seed(
    benchmarks_on_path, tmp_path, monkeypatch, capsys
):
    import systems

    out = tmp_path / "systems"
    monkeypatch.setattr("sys.argv", ["systems.py", "--smoke", "--output-dir", str(out)])
    systems.main()
    body = capsys.readouterr().out
    for method in systems.METHODS:
        assert f"\n| {method} | 1/1 |" in body or f"\n| {method} | 0/1 |" in body, method
    assert "**Not judged yet**: one seed has no interval" in body  # no verdict without one
    saved = json.loads((Path(f"{out}_smoke") / "results.json").read_text())
    assert sorted(saved) == sorted(f"{m}/42" for m in systems.METHODS)
