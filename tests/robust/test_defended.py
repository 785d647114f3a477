"""Defences composed with the strategies: which path each takes, what reaches metrics, refusals."""

from __future__ import annotations

import dataclasses
import logging

import pytest
import torch

from fedit.client.attacks import ATTACK_METRIC
from fedit.config import DEFENCES, ConfigError, load_config
from fedit.robust.combine import combine_products
from fedit.robust.defended import Defended, defend
from fedit.robust.verdicts import JUDGES
from fedit.strategy import build_strategy
from fedit.types import ClientUpdate

A, B = "m.q.lora_A.weight", "m.q.lora_B.weight"
RANK, D_OUT, D_IN = 2, 6, 5


def _cfg(*overrides: str):
    return load_config(
        None,
        ["federation.num_clients=8", "federation.fraction_fit=1", f"lora.r={RANK}", *overrides],
    )


def _global():
    generator = torch.Generator().manual_seed(0)
    return {
        A: torch.randn(RANK, D_IN, generator=generator),
        B: torch.randn(D_OUT, RANK, generator=generator) * 0.1,
    }


def _round(global_state, num_attackers: int = 2, keep_a: bool = False):
    """8 replies: honest ones close to global + 0.05·noise; attackers flipped far away."""
    generator = torch.Generator().manual_seed(1)
    direction = {
        k: torch.randn(t.shape, generator=generator) * 0.05 for k, t in global_state.items()
    }
    updates = []
    for client_id in range(8):
        noise = {
            k: torch.randn(t.shape, generator=generator) * 0.01 for k, t in global_state.items()
        }
        sign = -5.0 if client_id < num_attackers else 1.0
        state = {k: global_state[k] + sign * (direction[k] + noise[k]) for k in global_state}
        if keep_a:
            state[A] = global_state[A].clone()
        update = ClientUpdate(
            client_id, state, num_examples=10 + client_id, train_loss=1.0, num_steps=1
        )
        if client_id < num_attackers:
            update.metrics[ATTACK_METRIC] = "sign_flip"
        updates.append(update)
    return updates


def test_every_defence_has_a_judge():
    assert set(JUDGES) == set(DEFENCES) - {"none"}


@pytest.mark.parametrize("method", ["krum", "multi_krum", "geometric_median"])
@pytest.mark.parametrize(
    "strategy", ["fedavg", "fedavgm", "fedadam", "fedyogi", "fedadagrad", "exact", "ffa_lora"]
)
def test_product_defences_reject_both_attackers_with_every_strategy(method, strategy, caplog):
    cfg = _cfg(f"strategy.name={strategy}", f"robust.method={method}", "robust.num_byzantine=2")
    defended = defend(cfg, build_strategy(cfg))
    global_state = _global()
    with caplog.at_level(logging.WARNING):
        state, metrics = defended.aggregate_fit(
            1, global_state, _round(global_state, keep_a=strategy == "ffa_lora")
        )
    report = metrics["robust"]
    assert set(report["rejected"]) >= {0, 1}
    assert metrics["attackers"] == [0, 1]
    assert report["detection"]["false_negatives"] == 0
    assert {k: v.shape for k, v in state.items()} == {k: v.shape for k, v in global_state.items()}
    assert sum("rejected client 0" in r.message for r in caplog.records) == 1
    expected_path = {"krum": "selection", "multi_krum": "selection"}.get(
        method, "combination_in_b" if strategy == "ffa_lora" else "combination_exact"
    )
    assert report["path"] == expected_path


def test_selection_hands_the_kept_clients_to_the_strategy_with_equal_weights():
    cfg = _cfg("robust.method=multi_krum", "robust.num_byzantine=2")
    global_state = _global()
    updates = _round(global_state)  # kept clients report 12 to 17 examples
    state, metrics = defend(cfg, build_strategy(cfg)).aggregate_fit(1, global_state, updates)
    equal = [dataclasses.replace(u, num_examples=1) for u in updates[2:]]
    plain, _ = build_strategy(cfg).aggregate_fit(1, global_state, equal)
    assert metrics["robust"]["rejected"] == [0, 1]
    for key in state:
        torch.testing.assert_close(state[key], plain[key])
    assert [u.num_examples for u in updates] == [10 + i for i in range(8)]  # records unchanged


def test_combination_reproduces_the_weighted_product():
    global_state = _global()
    updates = _round(global_state)
    coefficients = torch.tensor([0.0, 0.0, 0.1, 0.2, 0.1, 0.2, 0.2, 0.1], dtype=torch.float64)
    state, metrics = combine_products(
        global_state, [u.state for u in updates], coefficients, RANK * 8, torch.Generator()
    )
    product = global_state[B] @ global_state[A]
    expected = product + sum(
        float(c) * (u.state[B] @ u.state[A] - product)
        for c, u in zip(coefficients, updates, strict=True)
    )
    torch.testing.assert_close(state[B] @ state[A], expected, atol=1e-5, rtol=0)
    assert metrics["truncation_error"] < 1e-5


def test_combination_keeps_a_shared_a_and_combines_b_exactly():
    global_state = _global()
    updates = _round(global_state, keep_a=True)
    coefficients = torch.full((8,), 1 / 8, dtype=torch.float64)
    state, metrics = combine_products(
        global_state, [u.state for u in updates], coefficients, RANK, torch.Generator()
    )
    assert metrics == {"combine_exact_in_b": 1.0}
    assert torch.equal(state[A], global_state[A])
    torch.testing.assert_close(state[B], sum(u.state[B] for u in updates) / 8)


def test_norm_bound_clips_the_scaled_attackers_only():
    cfg = _cfg("robust.method=norm_bound")
    global_state = _global()
    state, metrics = defend(cfg, build_strategy(cfg)).aggregate_fit(
        1, global_state, _round(global_state)
    )
    assert metrics["robust"]["rejected"] == [0, 1]
    assert metrics["robust"]["path"] == "combination_exact"


@pytest.mark.parametrize("method", ["trimmed_mean", "median"])
def test_coordinate_wise_defences_return_a_state_and_reject_nobody(method):
    cfg = _cfg(f"robust.method={method}")
    global_state = _global()
    updates = _round(global_state, num_attackers=1)
    state, metrics = defend(cfg, build_strategy(cfg)).aggregate_fit(1, global_state, updates)
    assert metrics["robust"]["path"] == "coordinate_wise"
    assert metrics["robust"]["rejected"] == []
    stacked = torch.stack([u.state[A] for u in updates])
    if method == "median":
        torch.testing.assert_close(
            state[A], (stacked.sort(0).values[3] + stacked.sort(0).values[4]) / 2
        )


def test_no_attack_and_no_defence_leaves_the_strategy_alone():
    cfg = _cfg()
    strategy = build_strategy(cfg)
    assert defend(cfg, strategy) is strategy
    assert isinstance(defend(_cfg("attack.kind=scale", "attack.clients=[1]"), strategy), Defended)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["robust.method=krum", "strategy.name=scaffold"], "cannot feed strategy.name=scaffold"),
        (
            ["robust.method=median", "strategy.name=exact", "lora.r=4", "lora.client_ranks=[2,4]"],
            "needs one rank",
        ),
        (["robust.method=krum", "robust.num_byzantine=3"], "needs at least 9 clients per round"),
        (["attack.kind=sign_flip"], "name attack.clients or attack.fraction"),
        (["attack.kind=sign_flip", "attack.clients=[9]"], "attack.clients: 9 is not in"),
        (["robust.method=bulyan"], "robust.method: unknown value 'bulyan'"),
        (
            ["attack.kind=scale", "attack.fraction=0.2", "engine=flower", "flower.insecure=true"],
            "node config (malicious=true)",
        ),
    ],
)
def test_impossible_combinations_are_refused_by_name(overrides, message):
    with pytest.raises(
        ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")
    ):
        _cfg(*overrides)
