"""Under a defence, a client claiming 10⁹ examples weighs no more than an honest client (issue 28).

One attacker in ten reports 10⁹ examples with a deviant update. Each test measures the attacker's
weight and how far it moves the aggregate product from the honest clients' mean, with the
defences' uniform weights, and shows that the old weighting by reported counts let it dominate.
"""

from __future__ import annotations

import pytest
import torch

from fedit.client.attacks import ATTACK_METRIC
from fedit.config import load_config
from fedit.robust.defended import Defended
from fedit.robust.verdicts import JUDGES, Weighting, client_weights
from fedit.strategy import build_strategy
from fedit.types import AdapterState, ClientUpdate

MODULES = ("m.q", "m.v")
RANK, D_OUT, D_IN = 4, 16, 12
CLAIMED = 10**9
ATTACKER = 3


def _cfg(*overrides: str):
    return load_config(
        None,
        ["federation.num_clients=10", "federation.fraction_fit=1", f"lora.r={RANK}", *overrides],
    )


def _global() -> AdapterState:
    generator = torch.Generator().manual_seed(0)
    state = {}
    for module in MODULES:
        state[f"{module}.lora_A.weight"] = torch.randn(RANK, D_IN, generator=generator)
        state[f"{module}.lora_B.weight"] = torch.randn(D_OUT, RANK, generator=generator) * 0.1
    return state


def _round(global_state: AdapterState, magnitude: float) -> list[ClientUpdate]:
    """10 replies, global + a shared direction + noise; client 3 sends global + λ·(its own
    honest Δ), as ``attack.kind=inflate_count`` with ``scale`` does, and claims 10⁹ examples.
    The honest clients report 80 to 116 examples."""
    generator = torch.Generator().manual_seed(1)
    direction = {
        k: torch.randn(t.shape, generator=generator) * 0.05 for k, t in global_state.items()
    }
    updates = []
    for client_id in range(10):
        attacker = client_id == ATTACKER
        sign = magnitude if attacker else 1.0
        state = {
            k: global_state[k]
            + sign * (direction[k] + torch.randn(t.shape, generator=generator) * 0.02)
            for k, t in global_state.items()
        }
        count = CLAIMED if attacker else 80 + 4 * client_id
        update = ClientUpdate(client_id, state, num_examples=count, train_loss=1.0, num_steps=1)
        if attacker:
            update.metrics[ATTACK_METRIC] = "inflate_count"
        updates.append(update)
    return updates


def _delta(global_state: AdapterState, state: AdapterState) -> torch.Tensor:
    """ΔW = B·A − B_g·A_g of every module, concatenated (the products, not the factors)."""
    parts = []
    for module in MODULES:
        a, b = f"{module}.lora_A.weight", f"{module}.lora_B.weight"
        product = state[b].double() @ state[a].double()
        parts.append((product - global_state[b].double() @ global_state[a].double()).flatten())
    return torch.cat(parts)


def _combination(global_state: AdapterState, updates, coefficients) -> torch.Tensor:
    return sum(
        float(c) * _delta(global_state, u.state) for c, u in zip(coefficients, updates, strict=True)
    )


def _honest_mean(global_state: AdapterState, updates: list[ClientUpdate]) -> torch.Tensor:
    honest = [u for u in updates if u.client_id != ATTACKER]
    return sum(_delta(global_state, u.state) for u in honest) / len(honest)


def _judge(method: str, weighting: Weighting, magnitude: float = 10.0, *overrides: str):
    global_state = _global()
    updates = _round(global_state, magnitude)
    verdict = JUDGES[method](_cfg(*overrides).robust, global_state, updates, weighting)
    assert verdict.coefficients is not None
    aggregate = _combination(global_state, updates, verdict.coefficients)
    reference = _honest_mean(global_state, updates)
    moved = float((aggregate - reference).norm() / reference.norm())
    coefficients = verdict.coefficients.tolist()
    honest = [c for i, c in enumerate(coefficients) if i != ATTACKER]
    return coefficients[ATTACKER], max(honest), moved


def test_client_weights_are_uniform_whatever_the_counts():
    updates = _round(_global(), 10.0)
    torch.testing.assert_close(client_weights(updates), torch.full((10,), 0.1, dtype=torch.float64))
    assert float(client_weights(updates, "counts")[ATTACKER]) > 1 - 1e-5  # the old weighting


def test_geometric_median_gives_the_inflated_attacker_no_more_than_an_honest_weight():
    attacker, best_honest, moved = _judge("geometric_median", "uniform")
    assert attacker <= best_honest
    assert attacker < 0.02  # Weiszfeld down-weights the far update below 1/10
    assert moved < 0.15  # the median stays near the honest mean (its own spread: the noise)
    # Weighted by reported counts, the median was the attacker's update: weight ≈ 1, ~9× away.
    attacker, best_honest, moved = _judge("geometric_median", "counts")
    assert attacker > 0.99 and best_honest < 1e-3
    assert moved > 5.0


def test_norm_bound_gives_the_inflated_attacker_no_more_than_an_honest_coefficient():
    attacker, best_honest, moved = _judge("norm_bound", "uniform")
    assert attacker <= best_honest  # clipped to τ and 1/10 of the weight
    # 1/10 of an update of norm τ = 2 × the median norm moves the mean by at most ~0.1·(2 + 1)
    # honest means; it measured 0.16 (what one honest client at norm τ could do too).
    assert moved < 0.3
    # Weighted by reported counts, the mean was the attacker's update clipped to τ = 2 × median.
    attacker, best_honest, moved = _judge("norm_bound", "counts")
    assert attacker > 50 * best_honest
    assert moved > 0.8


@pytest.mark.parametrize("weighting", ["uniform", "counts"])
def test_multi_krum_strategy_averages_a_kept_inflated_attacker_as_one_client(weighting):
    # λ = 1: the attacker sends its honest update with the inflated count, so Krum keeps it.
    cfg = _cfg("robust.method=multi_krum", "robust.num_byzantine=1")
    global_state = _global()
    updates = _round(global_state, magnitude=1.0)
    defended = Defended(cfg, build_strategy(cfg), weighting)
    state, metrics = defended.aggregate_fit(1, global_state, updates)
    assert ATTACKER not in metrics["robust"]["rejected"]
    kept = [u for u in updates if u.client_id not in metrics["robust"]["rejected"]]
    uniform = {k: sum(u.state[k] for u in kept) / len(kept) for k in global_state}
    attacker_share = metrics["robust"]["weights"][str(ATTACKER)]
    if weighting == "uniform":
        assert attacker_share == pytest.approx(1 / 9)
        for key in state:
            torch.testing.assert_close(state[key], uniform[key])
    else:  # the old weighting: FedAvg over the kept clients is the attacker's own adapter
        assert attacker_share > 1 - 1e-5
        for key in state:
            torch.testing.assert_close(state[key], updates[ATTACKER].state[key])
            assert not torch.allclose(state[key], uniform[key], atol=1e-4)
    assert updates[ATTACKER].num_examples == CLAIMED  # what it reported stays on record


@pytest.mark.parametrize("method", ["norm_bound", "geometric_median", "krum", "multi_krum"])
def test_the_round_report_gives_the_attacker_at_most_an_honest_weight(method):
    cfg = _cfg(f"robust.method={method}", "robust.num_byzantine=1")
    global_state = _global()
    _, metrics = Defended(cfg, build_strategy(cfg)).aggregate_fit(
        1, global_state, _round(global_state, 10.0)
    )
    weights = metrics["robust"]["weights"]
    honest = [w for client, w in weights.items() if client != str(ATTACKER)]
    assert weights[str(ATTACKER)] <= max(honest)
