"""End to end on the tiny Llama: 8 clients, 2 sign-flippers; no defence, krum, geometric median."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedit.config import load_config
from fedit.experiment import run_experiment
from helpers import tiny_args

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "configs" / "quickstart.yaml"
SETTINGS = (
    "eval.generate=false",
    "data.synthetic.num_examples=96",
    "federation.num_clients=8",
    "federation.fraction_fit=1.0",
    "federation.rounds=3",
    "train.local_steps=2",
    "train.lr=3e-3",
)
ATTACK = ("attack.kind=sign_flip", "attack.clients=[2,5]", "attack.magnitude=4")


def _final_loss(model_dir: Path, out: Path, *extra: str) -> tuple[float, list[dict]]:
    cfg = load_config(QUICKSTART, tiny_args(model_dir, out, *SETTINGS, *extra))
    history = run_experiment(cfg).history
    return history[-1]["eval"]["loss"], [r for r in history if r["round"] > 0]


@pytest.fixture(scope="module")
def results(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("attack")
    runs = {
        "clean": (),
        "attacked": ATTACK,
        "krum": (*ATTACK, "robust.method=krum", "robust.num_byzantine=2"),
        "geometric_median": (*ATTACK, "robust.method=geometric_median"),
    }
    return {name: _final_loss(tiny_model_dir, out / name, *extra) for name, extra in runs.items()}


def test_without_a_defence_the_attack_degrades_the_held_out_loss(results):
    clean, attacked = results["clean"][0], results["attacked"][0]
    base = results["clean"][1][0]["eval"]["loss"]  # round 1 of the clean run
    assert attacked > clean + 0.1, (clean, attacked)
    assert attacked > base, (base, attacked)  # worse than where the clean run started
    for record in results["attacked"][1]:
        assert record["aggregation"]["attackers"] == [2, 5]
        assert record["client_metrics"]["2"]["attack"] == "sign_flip"


@pytest.mark.parametrize("method", ["krum", "geometric_median"])
def test_krum_and_geometric_median_reject_the_attackers_every_round(results, method):
    clean, attacked = results["clean"][0], results["attacked"][0]
    defended, rounds = results[method]
    for record in rounds:
        assert {2, 5} <= set(record["aggregation"]["robust"]["rejected"]), record["round"]
    assert abs(defended - clean) < 0.25 * (attacked - clean), (clean, defended, attacked)
