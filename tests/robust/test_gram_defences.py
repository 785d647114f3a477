"""The Gram identity against materialised products, and each defence against hand-worked values."""

from __future__ import annotations

import pytest
import torch

from fedit.robust.defences import (
    DefenceError,
    coordinate_median,
    geometric_median_weights,
    krum_scores,
    multi_krum_selection,
    norm_bound_factors,
    trimmed_mean,
)
from fedit.robust.gram import norms, product_gram, squared_distances, update_gram

A, B = "m.lora_A.weight", "m.lora_B.weight"


def _state(b: torch.Tensor, a: torch.Tensor, prefix: str = "m") -> dict[str, torch.Tensor]:
    return {f"{prefix}.lora_A.weight": a, f"{prefix}.lora_B.weight": b}


def _random_state(generator: torch.Generator, rank: int) -> dict[str, torch.Tensor]:
    state = {}
    for prefix, (d_out, d_in) in {"q": (12, 7), "v": (5, 9)}.items():
        state[f"{prefix}.lora_B.weight"] = torch.randn(d_out, rank, generator=generator)
        state[f"{prefix}.lora_A.weight"] = torch.randn(rank, d_in, generator=generator)
    return state


def _materialised(state, global_state) -> torch.Tensor:
    """ΔW of every module, flattened and concatenated: what the Gram trick avoids forming."""
    parts = []
    for prefix in ("q", "v"):
        a, b = f"{prefix}.lora_A.weight", f"{prefix}.lora_B.weight"
        product = state[b].double() @ state[a].double()
        parts.append((product - global_state[b].double() @ global_state[a].double()).flatten())
    return torch.cat(parts)


@pytest.mark.parametrize("ranks", [[4, 4, 4, 4], [1, 3, 4, 2, 4]])
def test_gram_distances_equal_the_materialised_products(ranks):
    generator = torch.Generator().manual_seed(0)
    global_state = _random_state(generator, 4)
    states = [_random_state(generator, rank) for rank in ranks]
    flat = torch.stack([_materialised(s, global_state) for s in states])  # (K, Σ d_out d_in)
    gram = update_gram(global_state, states)
    expected = torch.cdist(flat, flat)
    torch.testing.assert_close(squared_distances(gram).sqrt(), expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(norms(gram), flat.norm(dim=1), atol=1e-5, rtol=0)


@pytest.mark.parametrize(("dtype", "tolerance"), [(torch.float64, 1e-9), (torch.float32, 1e-5)])
@pytest.mark.parametrize("step", [1.0, 1e-3])
def test_gram_distances_keep_their_digits_for_small_updates(dtype, tolerance, step):
    # Clients a small step from a large global adapter: P_ii + P_jj − 2 P_ij cancels, and only
    # the centring on the global factors keeps float32's relative precision.
    generator = torch.Generator().manual_seed(2)
    global_state = _random_state(generator, 4)
    states = [
        {
            key: value + step * torch.randn(value.shape, generator=generator)
            for key, value in global_state.items()
        }
        for _ in range(5)
    ]
    flat = torch.stack([_materialised(s, global_state) for s in states])
    expected = torch.cdist(flat, flat)
    got = squared_distances(update_gram(global_state, states, dtype)).sqrt()
    off_diagonal = ~torch.eye(5, dtype=torch.bool)
    relative = ((got - expected).abs()[off_diagonal] / expected[off_diagonal]).max()
    assert relative < tolerance


def test_uncentred_float32_gram_loses_the_small_updates():
    # What the centring prevents: the same products without a reference, in float32.
    generator = torch.Generator().manual_seed(2)
    b, a = torch.randn(64, 4, generator=generator), torch.randn(4, 48, generator=generator)
    steps = [
        (
            1e-3 * torch.randn(64, 4, generator=generator),
            1e-3 * torch.randn(4, 48, generator=generator),
        )
        for _ in range(2)
    ]
    factors = [(b + db, a + da) for db, da in steps]
    exact = (
        (factors[0][0].double() @ factors[0][1].double())
        - (factors[1][0].double() @ factors[1][1].double())
    ).norm() ** 2
    for reference, bad in ((None, True), ((b, a), False)):
        p = product_gram(factors, torch.float32, reference)
        error = abs(float(p[0, 0] + p[1, 1] - 2 * p[0, 1]) - float(exact)) / float(exact)
        assert (error > 1e-3) is bad


def test_gram_sees_equal_products_of_different_factors_as_equal():
    # B·Q and Q⁻¹·A are the same update: far apart as factors, at distance 0 as products.
    generator = torch.Generator().manual_seed(1)
    b, a = torch.randn(6, 3, generator=generator), torch.randn(3, 5, generator=generator)
    q = torch.randn(3, 3, generator=generator) + 3 * torch.eye(3)
    zero = _state(torch.zeros(6, 3), torch.zeros(3, 5))
    gram = update_gram(zero, [_state(b, a), _state(b @ q, torch.linalg.solve(q, a))])
    assert squared_distances(gram)[0, 1].sqrt() < 1e-5
    assert (b - b @ q).norm() > 1


def _points(values: list[float]) -> tuple[dict, list[dict]]:
    """1×1 rank-1 updates ΔW_i = values[i] around a zero global adapter."""
    zero = _state(torch.zeros(1, 1), torch.zeros(1, 1))
    return zero, [_state(torch.tensor([[v]]), torch.ones(1, 1)) for v in values]


def test_krum_and_multi_krum_match_the_worked_example():
    # Points 0, 1, 2, 3, 10 and f = 1: each score sums the K − f − 2 = 2 smallest squared
    # distances. 0: 1+4=5; 1: 1+1=2; 2: 1+1=2; 3: 1+4=5; 10: 49+64=113.
    zero, states = _points([0, 1, 2, 3, 10])
    gram = update_gram(zero, states)
    torch.testing.assert_close(krum_scores(gram, 1), torch.tensor([5.0, 2, 2, 5, 113]).double())
    assert multi_krum_selection(gram, 1, keep=1).tolist() == [1]  # Krum: the first best
    assert multi_krum_selection(gram, 1).tolist() == [0, 1, 2, 3]  # keeps K − f = 4


def test_krum_refuses_too_few_replies_for_f():
    zero, states = _points([0, 1, 2, 3])
    with pytest.raises(DefenceError, match="at least 5 replies"):
        krum_scores(update_gram(zero, states), 1)


def test_geometric_median_of_a_square_is_its_centre():
    zero = _state(torch.zeros(2, 1), torch.zeros(1, 1))
    corners = [(0, 0), (4, 0), (0, 4), (4, 4), (4, 4), (0, 0)]
    states = [
        _state(torch.tensor([[x], [y]], dtype=torch.float32), torch.ones(1, 1)) for x, y in corners
    ]
    alpha, _ = geometric_median_weights(update_gram(zero, states), torch.ones(len(states)))
    points = torch.tensor(corners, dtype=torch.float64)
    torch.testing.assert_close(alpha @ points, torch.tensor([2.0, 2.0]).double(), atol=1e-4, rtol=0)


def test_geometric_median_of_collinear_points_is_the_middle_one_and_ignores_the_outlier():
    zero, states = _points([0, 1, 1000])
    alpha, _ = geometric_median_weights(update_gram(zero, states), torch.ones(3))
    median = float(alpha @ torch.tensor([0.0, 1, 1000]).double())
    assert median == pytest.approx(1.0, abs=1e-3)
    assert float(alpha[2]) < 1e-3


def test_norm_bound_clips_to_a_fixed_bound_or_a_median_multiple():
    zero, states = _points([1, -2, 3, 30])
    gram = update_gram(zero, states)
    torch.testing.assert_close(
        norm_bound_factors(gram, 2.0, 0), torch.tensor([1, 1, 2 / 3, 2 / 30]).double()
    )
    # Median (upper) of 1, 2, 3, 30 is 3; twice that is 6: only 30 is clipped, to 6.
    torch.testing.assert_close(
        norm_bound_factors(gram, None, 2.0), torch.tensor([1, 1, 1, 6 / 30]).double()
    )


def test_trimmed_mean_and_median_by_hand():
    stacked = torch.tensor([[1.0, 10], [2, 20], [3, 30], [100, -5], [-50, 40]])
    # β = 0.2 of 5 drops one each side: column 0 keeps 1, 2, 3; column 1 keeps 10, 20, 30.
    torch.testing.assert_close(trimmed_mean(stacked, 0.2), torch.tensor([2.0, 20]))
    torch.testing.assert_close(coordinate_median(stacked), torch.tensor([2.0, 20]))
    torch.testing.assert_close(
        coordinate_median(torch.tensor([[1.0], [5], [3], [2]])), torch.tensor([2.5])
    )
    with pytest.raises(DefenceError, match="trims all"):
        trimmed_mean(stacked[:4], 0.5)
