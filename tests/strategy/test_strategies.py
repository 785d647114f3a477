"""Every strategy class over two clients and two rounds, against values worked out by hand."""

from __future__ import annotations

import pytest
import torch

from fedit.config import STRATEGIES as STRATEGY_NAMES
from fedit.config import ConfigError, load_config
from fedit.strategy import STRATEGIES, build_strategy
from fedit.strategy.aggregate import AggregationError, MismatchedUpdateError
from fedit.types import CONTROL_DELTA, ClientUpdate

A_KEY = "m.layers.0.q_proj.lora_A.weight"
B_KEY = "m.layers.0.q_proj.lora_B.weight"


def _strategy(name: str, *overrides: str):
    return build_strategy(load_config(None, [f"strategy.name={name}", *overrides]))


def _scalar_update(client_id: int, value: float, n: int = 1, **extras) -> ClientUpdate:
    return ClientUpdate(client_id, {"w": torch.tensor([value])}, n, 0.0, 1, extras=extras)


def _two_rounds(strategy) -> list[float]:
    """Round 1: clients at 1 and 3 (Δ = 2); round 2: clients at x1 and x1 + 1 (Δ = 0.5)."""
    x = {"w": torch.tensor([0.0])}
    seen = []
    x, _ = strategy.aggregate_fit(1, x, [_scalar_update(0, 1.0), _scalar_update(1, 3.0)])
    seen.append(x["w"].item())
    x1 = x["w"].item()
    x, _ = strategy.aggregate_fit(2, x, [_scalar_update(0, x1), _scalar_update(1, x1 + 1.0)])
    seen.append(x["w"].item())
    return seen


def test_registry_matches_config_choices():
    assert set(STRATEGIES) == set(STRATEGY_NAMES)


def test_fedavgm_two_rounds():
    # β = 0.5, η = 1: v1 = 2, x1 = 2; Δ2 = 0.5, v2 = 0.5 * 2 + 0.5 = 1.5, x2 = 3.5
    strategy = _strategy("fedavgm", "strategy.server_momentum=0.5", "strategy.server_lr=1.0")
    assert _two_rounds(strategy) == pytest.approx([2.0, 3.5])


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        # η = 0.1, β1 = 0.9, β2 = 0.99, τ = 0.01, m0 = 0, v0 = τ² = 1e-4.
        # adam: m1 = 0.2, v1 = 0.99e-4 + 0.04 = 0.040099, x1 = 0.1 * 0.2 / (√v1 + 0.01);
        #       m2 = 0.23, v2 = 0.99 v1 + 0.01 * 0.25 = 0.04219801,
        #       x2 = x1 + 0.1 * 0.23 / (√v2 + 0.01)
        ("fedadam", [0.0951260517, 0.2018934611]),
        # yogi: v1 = 1e-4 - 0.01 * 4 * sign(1e-4 - 4) = 0.0401, v2 = v1 + 0.01 * 0.25 = 0.0426
        ("fedyogi", [0.0951249220, 0.2014107222]),
        # adagrad: v1 = 1e-4 + 4 = 4.0001, v2 = v1 + 0.25 = 4.2501
        ("fedadagrad", [0.0099501250, 0.0210527774]),
    ],
)
def test_adaptive_optimizers_two_rounds(name, expected):
    strategy = _strategy(
        name,
        "strategy.server_lr=0.1",
        "strategy.beta1=0.9",
        "strategy.beta2=0.99",
        "strategy.tau=0.01",
    )
    assert _two_rounds(strategy) == pytest.approx(expected, rel=1e-6)


def test_adaptive_state_roundtrip_continues_identically():
    first = _strategy("fedadam", "strategy.server_lr=0.1")
    x, _ = first.aggregate_fit(1, {"w": torch.zeros(1)}, [_scalar_update(0, 1.0)])
    second = _strategy("fedadam", "strategy.server_lr=0.1")
    second.load_state_dict(first.state_dict())
    again = [_scalar_update(0, 5.0)]
    torch.testing.assert_close(
        first.aggregate_fit(2, x, again)[0], second.aggregate_fit(2, x, again)[0]
    )


def test_fedprox_sends_mu_and_averages_like_fedavg():
    strategy = _strategy("fedprox", "strategy.proximal_mu=0.1", "federation.num_clients=4")
    _, instructions = strategy.configure_fit(1, {"w": torch.zeros(1)}, [5, 5, 5, 5], lr=1e-3)
    assert {i.config.proximal_mu for i in instructions} == {0.1}
    updates = [_scalar_update(0, 1.0, n=1), _scalar_update(1, 5.0, n=3)]
    x, _ = strategy.aggregate_fit(1, {"w": torch.zeros(1)}, updates)
    assert x["w"].item() == pytest.approx(4.0)  # (1 * 1 + 3 * 5) / 4


def test_scaffold_two_rounds():
    # N = 4 clients, |S| = 2, η_g = 1. Round 1 from x = 0, c = 0: y = 1 and 3, Δc = 0.5 and 1.5
    # -> x = 0 + mean(1, 3) = 2; c = 0 + 2/4 * mean(0.5, 1.5) = 0.5. (c_i is the clients'.)
    strategy = _strategy("scaffold", "federation.num_clients=4", "federation.fraction_fit=0.5")
    x = {"w": torch.zeros(1)}
    _, instructions = strategy.configure_fit(1, x, [3, 3, 3, 3], lr=0.1)
    assert all(i.extras["server_control"]["w"].item() == 0 for i in instructions)
    updates = [
        _scalar_update(0, 1.0, **{CONTROL_DELTA: {"w": torch.tensor([0.5])}}),
        _scalar_update(1, 3.0, **{CONTROL_DELTA: {"w": torch.tensor([1.5])}}),
    ]
    x, _ = strategy.aggregate_fit(1, x, updates)
    assert x["w"].item() == pytest.approx(2.0)
    assert strategy.control["w"].item() == pytest.approx(0.5)
    assert set(strategy.client_extras(1, x)) == {"server_control"}  # c only, never c_i
    assert strategy.client_extras(1, x)["server_control"]["w"].item() == pytest.approx(0.5)
    assert set(strategy.state_dict()) == {"control/w"}
    # Round 2: y = 2 and 4 (mean Δy = 1), Δc = -0.5 and 0.5 (mean 0) -> x = 3, c = 0.5
    restored = _strategy("scaffold", "federation.num_clients=4")
    restored.load_state_dict(strategy.state_dict())
    updates = [
        _scalar_update(0, 2.0, **{CONTROL_DELTA: {"w": torch.tensor([-0.5])}}),
        _scalar_update(1, 4.0, **{CONTROL_DELTA: {"w": torch.tensor([0.5])}}),
    ]
    x, _ = restored.aggregate_fit(2, x, updates)
    assert x["w"].item() == pytest.approx(3.0)
    assert restored.control["w"].item() == pytest.approx(0.5)


def test_scaffold_refuses_a_checkpoint_that_holds_c_i():
    strategy = _strategy("scaffold", "federation.num_clients=2")
    old = {"control/w": torch.zeros(1), "client_control/0/w": torch.zeros(1)}
    with pytest.raises(ConfigError, match="keeps c_i on the server"):
        strategy.load_state_dict(old)


def test_scaffold_rejects_update_without_control_delta():
    strategy = _strategy("scaffold", "federation.num_clients=2")
    with pytest.raises(AggregationError, match="client 0"):
        strategy.aggregate_fit(1, {"w": torch.zeros(1)}, [_scalar_update(0, 1.0)])


def _lora_state(a: list[list[float]], b: list[list[float]]):
    return {A_KEY: torch.tensor(a), B_KEY: torch.tensor(b)}


def test_ffa_lora_averages_b_keeps_a():
    strategy = _strategy("ffa_lora")
    global_state = _lora_state([[1.0, 2.0]], [[0.0], [0.0]])
    _, instructions = strategy.configure_fit(1, global_state, [1] * 100, lr=0.1)
    assert {i.config.trainable for i in instructions} == {"lora_B"}
    updates = [
        ClientUpdate(0, _lora_state([[1.0, 2.0]], [[1.0], [2.0]]), 1, 0.0, 1),
        ClientUpdate(1, _lora_state([[1.0, 2.0]], [[3.0], [6.0]]), 3, 0.0, 1),
    ]
    new, _ = strategy.aggregate_fit(1, global_state, updates)
    torch.testing.assert_close(new[A_KEY], global_state[A_KEY])
    torch.testing.assert_close(
        new[B_KEY], torch.tensor([[2.5], [5.0]])
    )  # (1 + 9) / 4, (2 + 18) / 4
    # With A shared, averaging B is the exact average of the products B_k A.
    exact = (
        updates[0].state[B_KEY] @ global_state[A_KEY]
        + 3 * updates[1].state[B_KEY] @ global_state[A_KEY]
    ) / 4
    torch.testing.assert_close(new[B_KEY] @ new[A_KEY], exact)


def test_exact_heterogeneous_ranks_aggregate_exactly():
    strategy = _strategy("exact", "lora.r=4", "lora.client_ranks=[1,2]")
    generator = torch.Generator().manual_seed(0)
    d_in, d_out = 5, 6
    global_state = {A_KEY: torch.randn(4, d_in, generator=generator), B_KEY: torch.zeros(d_out, 4)}
    # Client 1 has rank 2: it is sent the global update truncated to rank 2.
    sent = strategy.client_state(1, global_state, client_id=1)
    assert sent[A_KEY].shape == (2, d_in) and sent[B_KEY].shape == (d_out, 2)
    updates = [
        ClientUpdate(
            0,
            {
                A_KEY: torch.randn(1, d_in, generator=generator),
                B_KEY: torch.randn(d_out, 1, generator=generator),
            },
            2,
            0.0,
            1,
        ),
        ClientUpdate(
            1,
            {
                A_KEY: torch.randn(2, d_in, generator=generator),
                B_KEY: torch.randn(d_out, 2, generator=generator),
            },
            6,
            0.0,
            1,
        ),
    ]
    new, metrics = strategy.aggregate_fit(1, global_state, updates)
    expected = 0.25 * updates[0].state[B_KEY] @ updates[0].state[A_KEY] + 0.75 * (
        updates[1].state[B_KEY] @ updates[1].state[A_KEY]
    )
    assert new[A_KEY].shape == (4, d_in)
    torch.testing.assert_close(new[B_KEY] @ new[A_KEY], expected, atol=1e-5, rtol=1e-5)
    assert metrics["truncation_error"] == pytest.approx(0.0, abs=1e-5)
    assert all("/" not in key for key in metrics)  # per-module errors stay out of the summary


def test_exact_rejects_update_of_wrong_rank():
    strategy = _strategy("exact", "lora.r=4", "lora.client_ranks=[2]")
    global_state = {A_KEY: torch.zeros(4, 3), B_KEY: torch.zeros(3, 4)}
    wrong = ClientUpdate(0, {A_KEY: torch.zeros(4, 3), B_KEY: torch.zeros(3, 4)}, 1, 0.0, 1)
    with pytest.raises(MismatchedUpdateError, match="client 0"):
        strategy.aggregate_fit(1, global_state, [wrong])


@pytest.mark.parametrize(
    "wrapped",
    ["robust.method=norm_bound", "personalization.method=ditto"],
    ids=["Defended", "Personalized"],
)
def test_a_wrapper_selects_only_among_online_clients_whatever_the_wrapping_order(wrapped):
    """select_among on the wrapper reaches the inner strategy, which is the one that selects."""
    from fedit.robust.defended import defend
    from fedit.strategy.personalized import personalize

    cfg = load_config(None, ["federation.num_clients=6", "federation.fraction_fit=0.5", wrapped])
    strategy = personalize(cfg, defend(cfg, build_strategy(cfg)))
    assert strategy.inner is not None  # the config above wraps it
    strategy.select_among(lambda server_round: [1, 4])
    for server_round in (1, 2, 3):
        selection, instructions = strategy.configure_fit(
            server_round, {"w": torch.zeros(1)}, [10] * 6, lr=1e-3
        )
        assert set(selection.participants) <= {1, 4}
        assert {i.client_id for i in instructions} <= {1, 4}
