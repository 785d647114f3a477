"""The wide-stack path of a defence's combination: the sketched re-factorisation and its error."""

from __future__ import annotations

import math

import pytest
import torch

from fedit.robust.combine import SKETCH_ABOVE, combine_products
from fedit.robust.gram import update_grams
from fedit.strategy.lora_math import (
    SKETCH_OVERSAMPLE,
    refactor_lowrank,
    refactor_sketched,
    stack_norm_sq,
    stacked_lora_product,
)

D_OUT, D_IN, RANK = 48, 40, 4


def _decaying_stack(width: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """B (D_OUT, width), A (width, D_IN) whose product's spectrum decays like 0.7^i."""
    generator = torch.Generator().manual_seed(seed)
    left = torch.linalg.qr(torch.randn(D_OUT, width, generator=generator, dtype=torch.float64))[0]
    right = torch.linalg.qr(torch.randn(D_IN, width, generator=generator, dtype=torch.float64))[0]
    sigma = 0.7 ** torch.arange(left.shape[1], dtype=torch.float64)
    mix = torch.randn(left.shape[1], width, generator=generator, dtype=torch.float64)
    # B A = left diag(σ) rightᵀ, written through a random invertible mix so that neither
    # factor is orthogonal, as stacked client factors are not.
    return left * sigma @ mix, torch.linalg.solve(mix, right.T)


def _generator(seed: int = 3) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_sketch_is_exact_when_the_product_fits_in_the_sketch():
    b_stack, a_stack = _decaying_stack(RANK)  # rank 4 ≤ rank + oversampling
    b, a, kept = refactor_sketched(b_stack, a_stack, RANK, _generator())
    assert torch.allclose((b @ a).double(), b_stack @ a_stack, atol=1e-5)
    assert math.isclose(
        float((kept.double() ** 2).sum()), stack_norm_sq(b_stack, a_stack), rel_tol=1e-5
    )


def test_sketch_matches_the_best_approximation_on_a_decaying_spectrum():
    b_stack, a_stack = _decaying_stack(36)
    best_b, best_a, sigma, best_error = refactor_lowrank(b_stack, a_stack, RANK, _generator())
    b, a, kept = refactor_sketched(b_stack, a_stack, RANK, _generator(), oversample=4)
    assert torch.allclose(kept, sigma[:RANK], rtol=1e-5)
    error = torch.linalg.matrix_norm(b_stack @ a_stack - (b @ a).double()).item()
    assert error == pytest.approx(best_error, rel=1e-4)
    assert torch.allclose(b @ a, best_b @ best_a, atol=1e-5)


def test_sketch_repeats_with_the_same_generator_and_pads_dead_directions():
    b_stack, a_stack = _decaying_stack(2)  # rank 2 < RANK: two dead components
    first = refactor_sketched(b_stack, a_stack, RANK, _generator(5))
    second = refactor_sketched(b_stack, a_stack, RANK, _generator(5))
    assert all(torch.equal(x, y) for x, y in zip(first, second, strict=True))
    b, a, kept = first
    assert kept.shape == (2,)
    assert torch.count_nonzero(b[:, 2:]) == 0 and torch.count_nonzero(a[2:]) > 0


def test_stack_norm_is_the_frobenius_norm_of_the_product():
    b_stack, a_stack = _decaying_stack(12, seed=4)
    expected = torch.linalg.matrix_norm(b_stack @ a_stack).item() ** 2
    assert stack_norm_sq(b_stack, a_stack) == pytest.approx(expected, rel=1e-10)


def _adapter(seed: int, scale: float = 1.0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for module in ("q", "v"):
        state[f"m.{module}.lora_A.weight"] = torch.randn(RANK, D_IN, generator=generator)
        state[f"m.{module}.lora_B.weight"] = scale * torch.randn(D_OUT, RANK, generator=generator)
    return state


@pytest.mark.parametrize("with_gram", [True, False])
def test_many_clients_are_sketched_and_the_error_is_the_true_one(with_gram):
    clients = SKETCH_ABOVE * (RANK + SKETCH_OVERSAMPLE) // RANK + 1  # wide enough to sketch
    global_state = _adapter(1000)
    # Clients share a dominant update plus small noise: the spectrum decays, as after training.
    common = _adapter(2000)
    states = [
        {key: common[key] + 0.05 * noise for key, noise in _adapter(seed).items()}
        for seed in range(clients)
    ]
    coefficients = torch.full((clients,), 0.8 / clients, dtype=torch.float64)
    products = update_grams(global_state, states)[1] if with_gram else None
    state, metrics = combine_products(
        global_state, states, coefficients, RANK, _generator(), products
    )
    assert metrics["sketched_modules"] == 2.0
    squared = 0.0
    for module in ("q", "v"):
        a_key, b_key = f"m.{module}.lora_A.weight", f"m.{module}.lora_B.weight"
        factors = [(s[b_key], s[a_key]) for s in (*states, global_state)]
        b_stack, a_stack = stacked_lora_product(factors, [0.8 / clients] * clients + [0.2])
        target = b_stack.double() @ a_stack.double()
        _, _, _, best = refactor_lowrank(b_stack, a_stack, RANK, _generator())
        got = torch.linalg.matrix_norm(target - (state[b_key] @ state[a_key]).double()).item()
        assert got == pytest.approx(best, rel=1e-3)  # near-best approximation
        squared += got**2
    assert metrics["truncation_error"] == pytest.approx(math.sqrt(squared), rel=1e-3)


def test_few_clients_keep_the_exact_path():
    global_state = _adapter(1000)
    states = [_adapter(seed) for seed in range(3)]
    _, metrics = combine_products(
        global_state, states, torch.full((3,), 0.3, dtype=torch.float64), RANK, _generator()
    )
    assert metrics["sketched_modules"] == 0.0
