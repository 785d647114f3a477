"""Inner products of LoRA updates ΔW_i = B_i A_i − B_g A_g without forming any d_out×d_in matrix.

For one module, ⟨B_i A_i, B_j A_j⟩_F = tr(B_iᵀ B_j · A_j A_iᵀ). Concatenating every client's
factors, B_cat = [B_1 | … | B_K] (d_out, R) and A_cat = [A_1; …; A_K] (R, d_in) with R = Σ r_k,
the two Gram matrices G_B = B_catᵀ B_cat and G_A = A_cat A_catᵀ (R, R) hold every pair's blocks,
and the (i, j) inner product is the sum of the (i, j) block of G_B ⊙ G_A (G_A is symmetric).
Summing blocks is one product with the (R, K) one-hot matrix of rank segments, so clients of
different ranks need no special case and 100 clients are three matrix products per module,
O(R²(d_out + d_in)), not a Python loop over pairs. Then
‖ΔW_i − ΔW_j‖²_F = G_ii + G_jj − 2 G_ij, the Gram identity of the issue.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from fedit.strategy.lora_math import lora_pairs
from fedit.types import AdapterState

GRAM_DTYPE = torch.float64  # distances are differences of Gram entries: keep the digits
_ROW_BLOCKS = 8  # block rows of the upper triangle: 1/2 + 1/16 of the full products' flops


def _segments(ranks: Sequence[int], dtype: torch.dtype) -> Tensor:
    """The (Σ r_k, K) one-hot matrix that maps each factor row/column to its client."""
    owner = torch.repeat_interleave(torch.arange(len(ranks)), torch.tensor(list(ranks)))
    return torch.nn.functional.one_hot(owner, len(ranks)).to(dtype)


def product_gram(
    factors: Sequence[tuple[Tensor, Tensor]], dtype: torch.dtype = GRAM_DTYPE
) -> Tensor:
    """P_ij = ⟨B_i A_i, B_j A_j⟩_F for one module's (B_k (d_out, r_k), A_k (r_k, d_in)) pairs."""
    b_cat = torch.cat([b.detach().to("cpu", dtype) for b, _ in factors], dim=1)  # (d_out, R)
    a_cat = torch.cat([a.detach().to("cpu", dtype) for _, a in factors], dim=0)  # (R, d_in)
    total = a_cat.shape[0]
    blocks = torch.empty(total, total, dtype=dtype)  # G_B ⊙ G_A
    # G_B ⊙ G_A is symmetric: compute block rows of its upper triangle only (about half the
    # flops of the full products), and mirror them.
    step = max(1, -(-total // _ROW_BLOCKS))
    for start in range(0, total, step):
        stop = min(total, start + step)
        row = (b_cat[:, start:stop].T @ b_cat[:, start:]) * (a_cat[start:stop] @ a_cat[start:].T)
        blocks[start:stop, start:] = row  # (rows, R - start)
        blocks[start:, start:stop] = row.T
    segments = _segments([a.shape[0] for _, a in factors], dtype)  # (R, K)
    return segments.T @ blocks @ segments  # (K, K)


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
    P[:K, :K] − P[:K, K] − P[K, :K] + P[K, K], computed in ``dtype`` (float64 by default, so
    that the subtraction keeps its digits when the updates are small next to the adapter).

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
    products = torch.zeros(count + 1, count + 1, dtype=dtype)
    for a_key, b_key in pairs.values():
        factors = [(s[b_key], s[a_key]) for s in (*states, global_state)]
        products += product_gram(factors, dtype)
    gram = (
        products[:count, :count]
        - products[:count, count:]
        - products[count:, :count]
        + products[count, count]
    )
    for key in sorted(set(global_state) - lora_keys):
        reference = global_state[key].detach().to("cpu", dtype).flatten()
        flat = torch.stack([s[key].detach().to("cpu", dtype).flatten() for s in states])
        flat -= reference
        gram += flat @ flat.T
    return (gram + gram.T) / 2, products


def squared_distances(gram: Tensor) -> Tensor:
    """D_ij = ‖ΔW_i − ΔW_j‖² = G_ii + G_jj − 2 G_ij, clamped at 0 against rounding."""
    diagonal = torch.diagonal(gram)
    return (diagonal[:, None] + diagonal[None, :] - 2 * gram).clamp_min(0)


def norms(gram: Tensor) -> Tensor:
    """‖ΔW_i‖_F for every client."""
    return torch.diagonal(gram).clamp_min(0).sqrt()
