"""Streaming averages and server optimizer steps, against two-client two-round worked examples."""

import math

import pytest
import torch

from fedit.strategy.aggregate import (
    EmptyRoundError,
    MismatchedUpdateError,
    WeightedSum,
    adaptive_step,
    momentum_step,
    pseudo_gradient,
    scaffold_server_step,
    weighted_average,
)


def _t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


def _round_delta(global_w, clients, weights):
    """Average two client models (FedAvg weights) and return Δ = average − global."""
    averaged = weighted_average([{"w": c} for c in clients], weights)
    return pseudo_gradient({"w": global_w}, averaged)


# --- WeightedSum / weighted_average -------------------------------------------------------


def test_weighted_sum_equals_stacked_mean():
    generator = torch.Generator().manual_seed(0)
    states = [
        {"a": torch.randn(3, 4, generator=generator), "b": torch.randn(5, generator=generator)}
        for _ in range(5)
    ]
    accumulator = WeightedSum()
    for state in states:
        accumulator.add(state, 2.0)
    result = accumulator.result()
    for name in ("a", "b"):
        expected = torch.stack([s[name] for s in states]).mean(dim=0)
        torch.testing.assert_close(result[name], expected)
    assert accumulator.count == 5 and accumulator.total_weight == 10.0


def test_weighted_sum_unequal_weights_by_hand():
    accumulator = WeightedSum()
    accumulator.add({"w": _t(1.0, 2.0)}, 1)
    accumulator.add({"w": _t(4.0, 8.0)}, 3)
    accumulator.add({"w": _t(100.0, 100.0)}, 0)  # weight 0 contributes nothing
    # (1*1 + 3*4) / 4 = 3.25, (1*2 + 3*8) / 4 = 6.5
    torch.testing.assert_close(accumulator.result()["w"], _t(3.25, 6.5))


def test_weighted_average_streams_a_generator_and_upcasts():
    states = ({"w": torch.full((2,), float(k), dtype=torch.bfloat16)} for k in range(1, 4))
    # (1*1 + 2*1 + 3*2) / 4 = 2.25
    out = weighted_average(states, [1, 1, 2])
    assert out["w"].dtype == torch.float32
    torch.testing.assert_close(out["w"], _t(2.25, 2.25))


def test_weighted_sum_does_not_alias_or_mutate_inputs():
    first = {"w": _t(1.0)}
    accumulator = WeightedSum()
    accumulator.add(first, 1.0)
    accumulator.add({"w": _t(3.0)}, 1.0)
    result = accumulator.result()
    result["w"] += 10
    assert first["w"].item() == 1.0
    torch.testing.assert_close(accumulator.result()["w"], _t(2.0))


def test_weighted_sum_errors():
    with pytest.raises(EmptyRoundError):
        WeightedSum().result()
    zero = WeightedSum()
    zero.add({"w": _t(1.0)}, 0)
    with pytest.raises(EmptyRoundError, match="positive"):
        zero.result()
    with pytest.raises(ValueError, match="non-negative"):
        WeightedSum().add({"w": _t(1.0)}, -1)
    mismatched = WeightedSum()
    mismatched.add({"w": _t(1.0)}, 1)
    with pytest.raises(MismatchedUpdateError, match="keys"):
        mismatched.add({"v": _t(1.0)}, 1)
    with pytest.raises(MismatchedUpdateError, match="shape"):
        mismatched.add({"w": _t(1.0, 2.0)}, 1)
    with pytest.raises(ValueError, match="equal length"):
        weighted_average([{"w": _t(1.0)}], [1, 2])


# --- server optimizers: two clients, two rounds ----------------------------------------------


def test_pseudo_gradient_is_average_minus_global():
    delta = pseudo_gradient({"w": _t(1.0, 2.0)}, {"w": _t(0.5, 3.0)})
    torch.testing.assert_close(delta["w"], _t(-0.5, 1.0))
    with pytest.raises(MismatchedUpdateError):
        pseudo_gradient({"w": _t(1.0)}, {"v": _t(1.0)})


def test_fedavgm_two_rounds_by_hand():
    x0 = _t(1.0, 2.0)
    # round 1: clients [2, 2] and [0, 4], equal weights -> average [1, 3] -> Δ1 = [0, 1]
    delta = _round_delta(x0, [_t(2.0, 2.0), _t(0.0, 4.0)], [5, 5])
    state, momentum = momentum_step({"w": x0}, delta, None, server_lr=0.5, beta=0.9)
    # v1 = 0.9 * 0 + [0, 1] = [0, 1];  x1 = [1, 2] + 0.5 * [0, 1] = [1, 2.5]
    torch.testing.assert_close(momentum["w"], _t(0.0, 1.0))
    torch.testing.assert_close(state["w"], _t(1.0, 2.5))
    # round 2: clients x1 + [2, 2] (weight 3) and x1 + [-2, -2] (weight 1) -> Δ2 = [1, 1]
    x1 = state["w"]
    delta = _round_delta(x1, [x1 + 2, x1 - 2], [3, 1])
    state, momentum = momentum_step(state, delta, momentum, server_lr=0.5, beta=0.9)
    # v2 = 0.9 * [0, 1] + [1, 1] = [1, 1.9];  x2 = [1, 2.5] + 0.5 * [1, 1.9] = [1.5, 3.45]
    torch.testing.assert_close(momentum["w"], _t(1.0, 1.9))
    torch.testing.assert_close(state["w"], _t(1.5, 3.45))
    assert x0.tolist() == [1.0, 2.0]  # inputs untouched


def test_fedavgm_without_momentum_is_fedavg():
    state, _ = momentum_step({"w": _t(1.0)}, {"w": _t(0.25)}, {"w": _t(9.0)}, 1.0, beta=0.0)
    torch.testing.assert_close(state["w"], _t(1.25))


def test_fedadam_two_rounds_by_hand():
    eta, beta1, beta2, tau = 1.0, 0.5, 0.5, 1.0  # v starts at τ² = 1
    x0 = _t(0.0, 0.0)
    # round 1: clients [6, 3] and [8, -1], equal weights -> Δ1 = [7, 1]
    delta = _round_delta(x0, [_t(6.0, 3.0), _t(8.0, -1.0)], [1, 1])
    state, m, v = adaptive_step("adam", {"w": x0}, delta, None, None, eta, beta1, beta2, tau)
    # m1 = 0.5*0 + 0.5*[7, 1] = [3.5, 0.5];  v1 = 0.5*1 + 0.5*[49, 1] = [25, 1]
    # x1 = 0 + [3.5 / (5 + 1), 0.5 / (1 + 1)] = [7/12, 0.25]
    torch.testing.assert_close(m["w"], _t(3.5, 0.5))
    torch.testing.assert_close(v["w"], _t(25.0, 1.0))
    torch.testing.assert_close(state["w"], _t(7 / 12, 0.25))
    # round 2: clients x1 + [-8, 4] (weight 1) and x1 + [-4, 8] (weight 3) -> Δ2 = [-5, 7]
    x1 = state["w"]
    delta = _round_delta(x1, [x1 + _t(-8.0, 4.0), x1 + _t(-4.0, 8.0)], [1, 3])
    state, m, v = adaptive_step("adam", state, delta, m, v, eta, beta1, beta2, tau)
    # m2 = 0.5*[3.5, 0.5] + 0.5*[-5, 7] = [-0.75, 3.75];  v2 = 0.5*[25, 1] + 0.5*[25, 49]
    #    = [25, 25];  x2 = [7/12 - 0.75/6, 0.25 + 3.75/6] = [11/24, 0.875]
    torch.testing.assert_close(m["w"], _t(-0.75, 3.75))
    torch.testing.assert_close(v["w"], _t(25.0, 25.0))
    torch.testing.assert_close(state["w"], _t(11 / 24, 0.875))


def test_fedadagrad_two_rounds_by_hand():
    eta, beta1, tau = 1.0, 0.5, 3.0  # v starts at τ² = 9; β2 is unused
    x0 = _t(0.0, 0.0)
    # round 1: clients [5, 1] and [3, -1] -> Δ1 = [4, 0]
    delta = _round_delta(x0, [_t(5.0, 1.0), _t(3.0, -1.0)], [2, 2])
    state, m, v = adaptive_step("adagrad", {"w": x0}, delta, None, None, eta, beta1, 0.99, tau)
    # m1 = [2, 0];  v1 = [9 + 16, 9 + 0] = [25, 9];  x1 = [2 / (5 + 3), 0] = [0.25, 0]
    torch.testing.assert_close(v["w"], _t(25.0, 9.0))
    torch.testing.assert_close(state["w"], _t(0.25, 0.0))
    # round 2: clients x1 + [-12, 4] and x1 + [-12, 4] -> Δ2 = [-12, 4]
    x1 = state["w"]
    delta = _round_delta(x1, [x1 + _t(-12.0, 4.0)] * 2, [1, 1])
    state, m, v = adaptive_step("adagrad", state, delta, m, v, eta, beta1, 0.99, tau)
    # m2 = 0.5*[2, 0] + 0.5*[-12, 4] = [-5, 2];  v2 = [25 + 144, 9 + 16] = [169, 25]
    # x2 = [0.25 - 5 / (13 + 3), 0 + 2 / (5 + 3)] = [-0.0625, 0.25]
    torch.testing.assert_close(m["w"], _t(-5.0, 2.0))
    torch.testing.assert_close(v["w"], _t(169.0, 25.0))
    torch.testing.assert_close(state["w"], _t(-0.0625, 0.25))


def test_fedyogi_two_rounds_by_hand():
    eta, beta1, beta2, tau = 1.0, 0.5, 0.5, 1.0  # v starts at τ² = 1
    x0 = _t(0.0, 0.0)
    # round 1: clients [3, 0] and [5, 1] -> Δ1 = [4, 0.5], Δ1² = [16, 0.25]
    delta = _round_delta(x0, [_t(3.0, 0.0), _t(5.0, 1.0)], [1, 1])
    state, m, v = adaptive_step("yogi", {"w": x0}, delta, None, None, eta, beta1, beta2, tau)
    # sign(v0 - Δ1²) = [-1, +1]: v1 = [1 + 0.5*16, 1 - 0.5*0.25] = [9, 0.875]
    # m1 = [2, 0.25];  x1 = [2 / (3 + 1), 0.25 / (√0.875 + 1)]
    x1_expected = _t(0.5, 0.25 / (math.sqrt(0.875) + 1))
    torch.testing.assert_close(v["w"], _t(9.0, 0.875))
    torch.testing.assert_close(state["w"], x1_expected)
    # round 2: clients x1 + [0, 1] (weight 1) and x1 + [2, 3] (weight 1) -> Δ2 = [1, 2]
    x1 = state["w"]
    delta = _round_delta(x1, [x1 + _t(0.0, 1.0), x1 + _t(2.0, 3.0)], [1, 1])
    state, m, v = adaptive_step("yogi", state, delta, m, v, eta, beta1, beta2, tau)
    # sign(v1 - Δ2²) = sign([8, -3.125]) = [+1, -1]: v2 = [9 - 0.5, 0.875 + 0.5*4] = [8.5, 2.875]
    # m2 = 0.5*[2, 0.25] + 0.5*[1, 2] = [1.5, 1.125]
    expected = x1_expected + _t(1.5 / (math.sqrt(8.5) + 1), 1.125 / (math.sqrt(2.875) + 1))
    torch.testing.assert_close(m["w"], _t(1.5, 1.125))
    torch.testing.assert_close(v["w"], _t(8.5, 2.875))
    torch.testing.assert_close(state["w"], expected)


def test_adaptive_step_rejects_unknown_kind_and_bad_tau():
    state = {"w": _t(0.0)}
    with pytest.raises(ValueError, match="adam"):
        adaptive_step("sgd", state, state, None, None, 1.0, 0.9, 0.99, 1e-3)
    with pytest.raises(ValueError, match="tau"):
        adaptive_step("adam", state, state, None, None, 1.0, 0.9, 0.99, 0.0)


def test_scaffold_two_rounds_by_hand():
    x0 = _t(1.0, 1.0)
    # N = 4 clients, |S| = 2 per round, η_g = 0.5, c starts at 0
    # round 1: Δy = [1, 0] and [3, 2] -> mean [2, 1];  Δc = [0.4, 0] and [0.8, -0.4] -> [0.6, -0.2]
    state, control = scaffold_server_step(
        {"w": x0}, {"w": _t(2.0, 1.0)}, None, {"w": _t(0.6, -0.2)}, 0.5, 2, 4
    )
    # x1 = [1, 1] + 0.5*[2, 1] = [2, 1.5];  c1 = 0 + (2/4)*[0.6, -0.2] = [0.3, -0.1]
    torch.testing.assert_close(state["w"], _t(2.0, 1.5))
    torch.testing.assert_close(control["w"], _t(0.3, -0.1))
    # round 2: mean Δy = [-2, 1], mean Δc = [0.2, 0.2]
    state, control = scaffold_server_step(
        state, {"w": _t(-2.0, 1.0)}, control, {"w": _t(0.2, 0.2)}, 0.5, 2, 4
    )
    # x2 = [2, 1.5] + 0.5*[-2, 1] = [1, 2];  c2 = [0.3, -0.1] + 0.5*[0.2, 0.2] = [0.4, 0]
    torch.testing.assert_close(state["w"], _t(1.0, 2.0))
    torch.testing.assert_close(control["w"], _t(0.4, 0.0))
    with pytest.raises(ValueError, match="num_selected"):
        scaffold_server_step(state, state, None, state, 1.0, 5, 4)
