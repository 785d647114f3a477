"""End to end on the tiny Llama: an attacker claims 10⁹ examples against the geometric median."""

from __future__ import annotations

import json
from pathlib import Path

from fedit.config import load_config
from fedit.experiment import run_experiment
from helpers import tiny_args

ROOT = Path(__file__).resolve().parents[2]
ATTACKER = "1"


def test_inflated_count_is_recorded_and_weighs_as_one_client(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    extra = (
        "federation.fraction_fit=1.0",
        "eval.generate=false",
        "attack.kind=inflate_count",
        f"attack.clients=[{ATTACKER}]",
        "robust.method=geometric_median",
    )
    cfg = load_config(ROOT / "configs" / "quickstart.yaml", tiny_args(tiny_model_dir, out, *extra))
    run_experiment(cfg)
    lines = (out / "metrics.jsonl").read_text().splitlines()
    rounds = [r for r in map(json.loads, lines) if r["round"] > 0]
    assert [r["round"] for r in rounds] == [1, 2]
    for record in rounds:
        assert record["num_examples"][ATTACKER] == 10**9  # what it claimed, on record
        assert all(n < 100 for c, n in record["num_examples"].items() if c != ATTACKER)
        assert record["client_metrics"][ATTACKER]["attack"] == "inflate_count"
        assert record["aggregation"]["attackers"] == [int(ATTACKER)]
        weights = record["aggregation"]["robust"]["weights"]
        honest = [w for client, w in weights.items() if client != ATTACKER]
        assert weights[ATTACKER] <= max(honest), weights  # with counts it was ≈ 1
