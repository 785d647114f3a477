"""The GPU benchmarks' CPU smoke modes (tiny Llama, 2 steps), so the scripts cannot rot.

They measure nothing here; the checks are that every table is written and adds up.
"""

from __future__ import annotations

import json
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
