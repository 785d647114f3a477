"""Exact LoRA aggregation and re-factorisation, checked against explicit d_out × d_in matrices."""

import math

import pytest
import torch

from fedit.strategy.lora_math import (
    exact_lora_aggregate,
    lora_pairs,
    lora_rank,
    lora_ranks,
    refactor_lowrank,
    stacked_lora_product,
    truncate_lora,
)

PREFIX = "base_model.model.model.layers.0.self_attn"
D_OUT, D_IN = 12, 10


def _adapter(rank: int, seed: int, modules=("q_proj", "v_proj")) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for module in modules:
        state[f"{PREFIX}.{module}.lora_A.weight"] = torch.randn(rank, D_IN, generator=generator)
        state[f"{PREFIX}.{module}.lora_B.weight"] = torch.randn(D_OUT, rank, generator=generator)
    return state


def _product(state, module="q_proj") -> torch.Tensor:
    a = state[f"{PREFIX}.{module}.lora_A.weight"]
    b = state[f"{PREFIX}.{module}.lora_B.weight"]
    return b.double() @ a.double()  # (d_out, d_in)


def _generator() -> torch.Generator:
    return torch.Generator().manual_seed(1234)


def test_lora_pairs_and_ranks():
    state = _adapter(3, seed=0)
    state["some.bias"] = torch.zeros(4)
    pairs = lora_pairs(state)
    assert pairs == {
        f"{PREFIX}.{m}": (f"{PREFIX}.{m}.lora_A.weight", f"{PREFIX}.{m}.lora_B.weight")
        for m in ("q_proj", "v_proj")
    }
    assert lora_rank(state) == 3
    assert set(lora_ranks(state).values()) == {3}


def test_lora_pairs_errors():
    state = _adapter(3, seed=0)
    del state[f"{PREFIX}.q_proj.lora_B.weight"]
    with pytest.raises(ValueError, match="q_proj.lora_A.weight has no matching lora_B"):
        lora_pairs(state)
    state = _adapter(3, seed=0)
    del state[f"{PREFIX}.v_proj.lora_A.weight"]
    with pytest.raises(ValueError, match="no matching lora_A"):
        lora_pairs(state)
    state = _adapter(3, seed=0)
    state[f"{PREFIX}.q_proj.lora_B.weight"] = torch.zeros(D_OUT, 2)
    with pytest.raises(ValueError, match="rank 3 but lora_B has rank 2"):
        lora_pairs(state)
    mixed = {**_adapter(2, 0, ("q_proj",)), **_adapter(4, 1, ("v_proj",))}
    with pytest.raises(ValueError, match=r"\[2, 4\]"):
        lora_rank(mixed)


def test_stacked_product_equals_weighted_sum_of_products():
    first, second = _adapter(2, seed=1), _adapter(3, seed=2)
    pairs = [
        (s[f"{PREFIX}.q_proj.lora_B.weight"], s[f"{PREFIX}.q_proj.lora_A.weight"])
        for s in (first, second)
    ]
    b_stack, a_stack = stacked_lora_product(pairs, [0.25, 0.75], torch.float64)
    assert b_stack.shape == (D_OUT, 5) and a_stack.shape == (5, D_IN)
    expected = 0.25 * _product(first) + 0.75 * _product(second)
    torch.testing.assert_close(b_stack @ a_stack, expected)


def test_exact_aggregate_is_exact_when_ranks_fit_and_pads_trainably():
    # ranks 2 and 3 (heterogeneous), Σ r_k = 5 <= 8: no truncation, 3 padded directions
    states = [_adapter(2, seed=1), _adapter(3, seed=2)]
    states[0]["extra.scale"] = torch.tensor([1.0])
    states[1]["extra.scale"] = torch.tensor([4.0])
    new, metrics = exact_lora_aggregate(states, [10, 30], rank=8, generator=_generator())
    for module in ("q_proj", "v_proj"):
        expected = 0.25 * _product(states[0], module) + 0.75 * _product(states[1], module)
        torch.testing.assert_close(_product(new, module), expected, atol=1e-5, rtol=1e-5)
        a = new[f"{PREFIX}.{module}.lora_A.weight"]
        b = new[f"{PREFIX}.{module}.lora_B.weight"]
        assert a.shape == (8, D_IN) and b.shape == (D_OUT, 8) and a.dtype == torch.float32
        # padded directions: zero B column, nonzero A row drawn from U(±1/√d_in)
        assert torch.all(b[:, 5:] == 0)
        assert torch.all(a[5:].abs().sum(dim=1) > 0)
        assert a[5:].abs().max() <= 1 / math.sqrt(D_IN)
        assert torch.all(b[:, :5].abs().sum(dim=0) > 0)
    torch.testing.assert_close(new["extra.scale"], torch.tensor([3.25]))  # (1*1 + 3*4) / 4
    assert metrics["truncation_error"] < 1e-5
    assert metrics["truncation_error_relative"] < 1e-6
    assert metrics["stacked_rank"] == 5.0
    assert metrics[f"truncation_error/{PREFIX}.q_proj"] < 1e-5


def test_exact_aggregate_truncation_error_is_the_discarded_singular_values():
    states = [_adapter(4, seed=s) for s in range(3)]
    weights = [1.0, 2.0, 5.0]
    new, metrics = exact_lora_aggregate(iter(states), weights, rank=3, generator=_generator())
    squared_errors, squared_norms = [], []
    for module in ("q_proj", "v_proj"):
        delta_w = sum(w / 8 * _product(s, module) for s, w in zip(states, weights, strict=True))
        sigma = torch.linalg.svdvals(delta_w)  # Σ r_k = 12 > min(12, 10): full rank 10
        discarded = math.sqrt(float((sigma[3:] ** 2).sum()))
        measured = float(torch.linalg.norm(delta_w - _product(new, module)))
        reported = metrics[f"truncation_error/{PREFIX}.{module}"]
        assert reported == pytest.approx(discarded, rel=1e-5)
        assert measured == pytest.approx(discarded, rel=1e-5)
        squared_errors.append(discarded**2)
        squared_norms.append(float((sigma**2).sum()))
    total = math.sqrt(sum(squared_errors))
    assert metrics["truncation_error"] == pytest.approx(total, rel=1e-5)
    relative = total / math.sqrt(sum(squared_norms))
    assert metrics["truncation_error_relative"] == pytest.approx(relative, rel=1e-5)


def test_zero_products_come_back_trainable():
    # the first round: every client's B is still zero, so ΔW = 0 and all σ = 0
    states = [_adapter(2, seed=s) for s in range(2)]
    for state in states:
        for key in state:
            if "lora_B" in key:
                state[key] = torch.zeros_like(state[key])
    new, metrics = exact_lora_aggregate(states, [1, 1], rank=4, generator=_generator())
    a = new[f"{PREFIX}.q_proj.lora_A.weight"]
    assert torch.all(new[f"{PREFIX}.q_proj.lora_B.weight"] == 0)
    assert torch.all(a.abs().sum(dim=1) > 0)
    assert metrics["truncation_error"] == 0.0 and metrics["truncation_error_relative"] == 0.0


def test_refactor_zero_sigma_inside_the_rank_is_replaced():
    # B_stack @ A_stack has rank 1 although s = 2: the second σ is 0 and must not stay dead
    b_stack = torch.tensor([[1.0, 2.0], [2.0, 4.0], [0.0, 0.0]])  # (3, 2), columns parallel
    a_stack = torch.tensor([[1.0, 0.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]])  # (2, 4)
    b, a, sigma, error = refactor_lowrank(b_stack, a_stack, 2, _generator())
    torch.testing.assert_close(b @ a, b_stack @ a_stack)
    assert sigma[1] < 1e-6 and error < 1e-6
    assert torch.all(b[:, 1] == 0) and a[1].abs().sum() > 0


def test_refactor_is_seeded():
    b_stack, a_stack = torch.randn(6, 2), torch.randn(2, 5)
    first = refactor_lowrank(b_stack, a_stack, 4, torch.Generator().manual_seed(7))
    second = refactor_lowrank(b_stack, a_stack, 4, torch.Generator().manual_seed(7))
    torch.testing.assert_close(first[1], second[1])


def test_truncate_lora_is_the_best_rank_k_approximation():
    state = _adapter(6, seed=3)
    state["extra.scale"] = torch.tensor([2.0])
    small, error = truncate_lora(state, rank=2, generator=_generator())
    assert lora_rank(small) == 2
    squared = 0.0
    for module in ("q_proj", "v_proj"):
        u, sigma, vh = torch.linalg.svd(_product(state, module))
        best = (u[:, :2] * sigma[:2]) @ vh[:2]  # Eckart–Young: top-2 SVD components
        torch.testing.assert_close(_product(small, module), best, atol=1e-5, rtol=1e-5)
        squared += float((sigma[2:] ** 2).sum())
    assert error == pytest.approx(math.sqrt(squared), rel=1e-5)
    assert small["extra.scale"] is not state["extra.scale"]
    torch.testing.assert_close(small["extra.scale"], torch.tensor([2.0]))


def test_exact_aggregate_rejects_mismatched_modules_and_empty_rounds():
    with pytest.raises(ValueError, match="LoRA modules differ"):
        exact_lora_aggregate([_adapter(2, 0), _adapter(2, 1, ("q_proj",))], [1, 1], 4, _generator())
    with pytest.raises(ValueError, match="no client states"):
        exact_lora_aggregate([], [], 4, _generator())
    wide = _adapter(2, 1)
    wide[f"{PREFIX}.q_proj.lora_A.weight"] = torch.randn(2, D_IN + 1)
    with pytest.raises(ValueError, match="expected 12x10"):
        exact_lora_aggregate([_adapter(2, 0), wide], [1, 1], 4, _generator())
