"""Who gains, over seeds: per-client intervals and the worst-client verdict, by hand."""

from __future__ import annotations

import pytest

from fedit.evaluation.per_client_study import summarize_clients
from fedit.evaluation.study_report import per_client_lines, worst_client_findings


def _seed(fedit, own, method, steady=None):
    """One seed's per_client: FedIT, each client's own Local model, and two methods."""
    per_client = {
        "fedit": {str(c): {"accuracy": a, "loss": 1 - a} for c, a in enumerate(fedit)},
        "finetune": {str(c): {"accuracy": a, "loss": 1 - a} for c, a in enumerate(method)},
    }
    if steady is not None:
        per_client["fedsa"] = {str(c): {"accuracy": a, "loss": 1 - a} for c, a in enumerate(steady)}
    for c, a in enumerate(own):
        # local-c on its own client, and something worse on the others
        per_client[f"local-{c}"] = {
            str(k): {"accuracy": a if k == c else 0.0, "loss": 1 - a if k == c else 1.0}
            for k in range(len(own))
        }
    return {"per_client": per_client}


def test_a_method_lifts_the_worst_client_only_when_both_intervals_clear_zero():
    per_seed = {
        # finetune's worst client beats FedIT's and Local's by 0.2 and 0.1 in every seed;
        # fedsa beats them in one seed and loses in the other
        1: _seed([0.5, 0.3, 0.7], [0.6, 0.4, 0.4], [0.6, 0.5, 0.7], steady=[0.6, 0.1, 0.9]),
        2: _seed([0.4, 0.2, 0.8], [0.5, 0.3, 0.6], [0.5, 0.4, 0.8], steady=[0.9, 0.8, 0.7]),
    }
    block = summarize_clients(per_seed)
    assert block is not None and block["seeds"] == [1, 2]
    assert block["lifts_worst"]["accuracy"] == ["finetune"]
    assert block["lifts_worst"]["loss"] == ["finetune"]  # the same clients, loss = 1 - acc
    worst = {
        (r["model"], r["vs"]): r
        for r in block["paired"]
        if r["metric"] == "accuracy" and r["stat"] == "worst"
    }
    # seed 1: finetune's worst 0.5, FedIT's 0.3, Local's 0.4; seed 2: 0.4, 0.2, 0.3
    assert worst[("finetune", "fedit")]["per_seed"] == pytest.approx([0.2, 0.2])
    assert worst[("finetune", "local")]["per_seed"] == pytest.approx([0.1, 0.1])
    assert worst[("fedsa", "fedit")]["per_seed"] == pytest.approx([-0.2, 0.5])
    assert worst[("fedsa", "fedit")]["verdict"] == "no significant difference"
    # the model rows: FedIT's mean over clients is 0.5 in seed 1 and 1.4 / 3 in seed 2
    fedit = block["models"]["fedit"]["accuracy"]
    assert fedit["mean"]["mean"] == pytest.approx((0.5 + 1.4 / 3) / 2)
    assert block["models"]["local"]["accuracy"]["worst"]["mean"] == pytest.approx(0.35)
    mean = next(
        r
        for r in block["paired"]
        if r["model"] == "finetune" and r["vs"] == "fedit" and r["stat"] == "mean"
    )
    # per-client differences 0.1, 0.2, 0 and 0.1, 0.2, 0: mean 0.1 over seeds x clients
    assert mean["mean"] == pytest.approx(0.1) and mean["method"].endswith("clients")
    findings = worst_client_findings(block)
    assert any("finetune lifts the worst client on accuracy" in f for f in findings)
    assert any("fedsa does not lift" in f for f in findings)
    assert "| finetune | fedit | worst | +0.200 |" in "\n".join(per_client_lines(block))


def test_no_per_client_scores_no_block():
    assert summarize_clients({1: {"per_client": None}, 2: {}}) is None
