"""Inner products of LoRA updates ΔW_i = B_i A_i − B_g A_g without forming any d_out×d_in matrix.

For one module, ⟨B_i A_i, B_j A_j⟩_F = tr(B_iᵀ B_j · A_j A_iᵀ). Concatenating every client's
factors, B_cat = [B_1 | … | B_K] (d_out, R) and A_cat = [A_1; …; A_K] (R, d_in) with R = Σ r_k,
the two Gram matrices G_B = B_catᵀ B_cat and G_A = A_cat A_catᵀ (R, R) hold every pair's blocks,
and the (i, j) inner product is the sum of the (i, j) block of G_B ⊙ G_A (G_A is symmetric).
Summing blocks is one product with the (R, K) one-hot matrix of rank segments, so clients of
different ranks need no special case and 100 clients are three matrix products per module,
O(R²(d_out + d_in)), not a Python loop over pairs. Then
‖ΔW_i − ΔW_j‖²_F = G_ii + G_jj − 2 G_ij, the Gram identity of the issue.

That difference cancels once the adapter is large next to a round's updates, so the big
products are taken of the factors' differences from the global ones, in float32 by default,
and the global's thin terms are added in float64 (``product_gram``'s reference): rounding is
then relative to what the clients changed (about 1e-7 of a distance), at half float64's cost.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from fedit.strategy.lora_math import lora_pairs
from fedit.types import AdapterState

GRAM_DTYPE = torch.float32  # the products' Gram matrices; centring keeps float32's digits
_ROW_BLOCKS = 8  # block rows of the upper triangle: 1/2 + 1/16 of the full products' flops


def _segments(ranks: Sequence[int], dtype: torch.dtype) -> Tensor:
    """The (Σ r_k, K) one-hot matrix that maps each factor row/column to its client."""
    owner = torch.repeat_interleave(torch.arange(len(ranks)), torch.tensor(list(ranks)))
    return torch.nn.functional.one_hot(owner, len(ranks)).to(dtype)


def _client_blocks(offsets: Sequence[int], blocks: int) -> list[tuple[int, int]]:
    """Up to ``blocks`` runs of whole clients [first, last) with about equal rank sums."""
    total = offsets[-1]
    cuts = {bisect.bisect_left(offsets, total * b / blocks) for b in range(1, blocks)}
    ends = sorted(cuts | {0, len(offsets) - 1})
    return [(first, last) for first, last in zip(ends, ends[1:], strict=False) if last > first]


def _gram_rows(
    deltas: Tensor, reference: Tensor | None, count: int
) -> Callable[[int, int], Tensor]:
    """Rows [start:stop, start:] of G = X_catᵀ X_cat, float64, for X_k = reference + delta_k.

    ``deltas`` (d, R): the columns of every X_k minus ``reference`` (d, r, float64; None: no
    centring, the deltas are the X_k). G = deltasᵀ deltas + Eᵀ(M E + C) + Cᵀ E with
    M = referenceᵀ reference, C = referenceᵀ deltas and E = [I | … | I] (r, R): the big first
    term is computed in the deltas' dtype, so its rounding is relative to the deltas, not to
    the adapter; the thin rest is float64.
    """
    if reference is None:
        return lambda start, stop: (deltas[:, start:stop].T @ deltas[:, start:]).double()
    tile = torch.eye(reference.shape[1], dtype=torch.float64).repeat(1, count)  # E (r, R)
    # C in the deltas' dtype: its rounding, ~eps·|ref|·|delta|, meets the other factor's
    # differences in a distance (≤ eps · the distance², by AM-GM), not the adapter's size.
    cross = (reference.T.to(deltas.dtype) @ deltas).double()  # C (r, R)
    right = reference.T @ reference @ tile + cross  # M E + C (r, R)

    def rows(start: int, stop: int) -> Tensor:
        thin = tile[:, start:stop].T @ right[:, start:] + cross[:, start:stop].T @ tile[:, start:]
        return (deltas[:, start:stop].T @ deltas[:, start:]).double() + thin

    return rows


def product_gram(
    factors: Sequence[tuple[Tensor, Tensor]],
    dtype: torch.dtype = GRAM_DTYPE,
    reference: tuple[Tensor, Tensor] | None = None,
) -> Tensor:
    """P_ij = ⟨B_i A_i, B_j A_j⟩_F for one module's (B_k (d_out, r_k), A_k (r_k, d_in)) pairs.

    With a ``reference`` (B_ref, A_ref) of the rank of every pair (the global adapter), the
    R²(d_out + d_in) Gram products run in ``dtype`` on the factors' differences from it and the
    reference's own terms in float64, so float32 rounds relative to what the clients changed:
    without it, distances between updates that are small next to the adapter lose their digits
    (P_ii + P_jj − 2 P_ij cancels). G_B ⊙ G_A is symmetric, so only block rows of its upper
    triangle are computed, each a run of whole clients, and summed into P straight away (no
    R × R matrix is kept). Returns P (K, K) in float64.
    """
    count = len(factors)
    ranks = [a.shape[0] for _, a in factors]
    b_cat = torch.cat([b.detach().to("cpu") for b, _ in factors], dim=1).to(dtype)  # (d_out, R)
    a_cat = torch.cat([a.detach().to("cpu") for _, a in factors], dim=0).to(dtype)  # (R, d_in)
    b_ref = a_ref = None
    if reference is not None:  # every pair has the reference's rank r: subtract it in place
        b_ref = reference[0].detach().to("cpu", torch.float64)  # (d_out, r)
        a_ref = reference[1].detach().to("cpu", torch.float64).T  # (d_in, r): columns, as B
        b_cat.view(b_cat.shape[0], count, -1).sub_(b_ref.to(dtype)[:, None, :])
        a_cat.view(count, -1, a_cat.shape[1]).sub_(a_ref.T.to(dtype)[None])
    b_rows = _gram_rows(b_cat, b_ref, count)
    a_rows = _gram_rows(a_cat.T, a_ref, count)  # a view: no copy
    offsets = [0, *itertools.accumulate(ranks)]
    segments = _segments(ranks, torch.float64)  # (R, K)
    products = torch.empty(count, count, dtype=torch.float64)
    for first, last in _client_blocks(offsets, _ROW_BLOCKS):
        start, stop = offsets[first], offsets[last]
        row = b_rows(start, stop) * a_rows(start, stop)  # (G_B ⊙ G_A)[start:stop, start:]
        block = segments[start:stop, first:last].T @ row @ segments[start:, first:]
        products[first:last, first:] = block  # (last − first, K − first)
        products[first:, first:last] = block.T
    return products


def update_gram(
    global_state: AdapterState, states: Sequence[AdapterState], dtype: torch.dtype = GRAM_DTYPE
) -> Tensor:
    """G_ij = ⟨ΔW_i, ΔW_j⟩ summed over modules (``update_grams``' first result)."""
    return update_grams(global_state, states, dtype)[0]


def update_grams(
    global_state: AdapterState, states: Sequence[AdapterState], dtype: torch.dtype = GRAM_DTYPE
) -> tuple[Tensor, Tensor]:
    """G_ij = ⟨ΔW_i, ΔW_j⟩ summed over modules, with ΔW_i = B_i A_i − B_g A_g, and the products'.

    Tensors that are not LoRA factors (none in a plain LoRA adapter) count as flat vectors
    x_i − x_g. The global adapter joins the Gram matrix as client K, so ΔW's Gram is
    P[:K, :K] − P[:K, K] − P[K, :K] + P[K, K]. The big products run in ``dtype`` (float32 by
    default) on the factors' differences from the global adapter's (``product_gram``'s
    reference), the rest in float64, so the subtraction keeps its digits when the updates are
    small next to the adapter. A module whose clients have other ranks than the global's
    cannot be centred and is computed in float64.

    Args:
        global_state: the adapter the clients started from.
        states: the clients' adapters; same modules, any ranks.

    Returns:
        (G (K, K), symmetric positive semi-definite; P (K + 1, K + 1), the LoRA products'
        ⟨B_i A_i, B_j A_j⟩ summed over modules, the global adapter last, from which the norm of
        any combination Σ w_i B_i A_i is wᵀ P w).
    """
    count = len(states)
    pairs = lora_pairs(global_state)
    lora_keys = {key for pair in pairs.values() for key in pair}
    products = torch.zeros(count + 1, count + 1, dtype=torch.float64)
    for a_key, b_key in pairs.values():
        factors = [(s[b_key], s[a_key]) for s in (*states, global_state)]
        shape = (factors[-1][0].shape, factors[-1][1].shape)
        same_rank = all((b.shape, a.shape) == shape for b, a in factors)
        if same_rank:
            products += product_gram(factors, dtype, factors[-1])
        else:  # mixed ranks cannot be centred on the global factors: keep float64's digits
            products += product_gram(factors, torch.float64)
    gram = (
        products[:count, :count]
        - products[:count, count:]
        - products[count:, :count]
        + products[count, count]
    )
    for key in sorted(set(global_state) - lora_keys):
        reference = global_state[key].detach().to("cpu", torch.float64).flatten()
        flat = torch.stack([s[key].detach().to("cpu", torch.float64).flatten() for s in states])
        flat = (flat - reference).to(dtype)  # differences: rounding relative to the update
        gram += (flat @ flat.T).double()
    return (gram + gram.T) / 2, products


def squared_distances(gram: Tensor) -> Tensor:
    """D_ij = ‖ΔW_i − ΔW_j‖² = G_ii + G_jj − 2 G_ij, clamped at 0 against rounding."""
    diagonal = torch.diagonal(gram)
    return (diagonal[:, None] + diagonal[None, :] - 2 * gram).clamp_min(0)


def norms(gram: Tensor) -> Tensor:
    """‖ΔW_i‖_F for every client."""
    return torch.diagonal(gram).clamp_min(0).sqrt()
