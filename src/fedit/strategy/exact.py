"""Exact LoRA aggregation: average the products B·A, then re-factorise to rank r."""

from __future__ import annotations

import torch

from fedit.strategy.aggregate import validate_updates
from fedit.strategy.fedavg import FedAvg
from fedit.strategy.lora_math import exact_lora_aggregate, truncate_lora
from fedit.types import COMBINED_CLIENT_ID, AdapterState, ClientUpdate


def _rank_shapes(global_state: AdapterState, rank: int) -> AdapterState:
    """Empty (meta) tensors with the shapes of ``global_state`` at LoRA rank ``rank``."""
    shapes: AdapterState = {}
    for name, tensor in global_state.items():
        shape = list(tensor.shape)
        if ".lora_A." in name:
            shape[0] = rank  # A: (r, d_in)
        elif ".lora_B." in name:
            shape[1] = rank  # B: (d_out, r)
        shapes[name] = torch.empty(shape, device="meta")
    return shapes


class Exact(FedAvg):
    """ΔW = Σ_k p_k B_k A_k per adapted matrix, re-factorised to the global rank r.

    Averaging A and B separately gives (Σ p_k B_k)(Σ p_k A_k), which is not Σ p_k B_k A_k: the
    "aggregation noise" of FLoRA (Wang et al. 2024) and FFA-LoRA. Here the factors are stacked
    (FLoRA), [p_1 B_1 | … | p_K B_K] · [A_1; …; A_K], and re-factorised through a QR/SVD of the
    stacked factors (FlexLoRA, FLoRIST) without forming d×d matrices. The result is exact when
    Σ r_k ≤ r; otherwise the truncation error ‖ΔW − B A‖_F is reported in the round metrics.

    Clients may train different ranks (``lora.client_ranks``): each receives the global update
    truncated to its own rank, as in FlexLoRA and HetLoRA.
    """

    def _generator(self, server_round: int, salt: int) -> torch.Generator:
        # Fresh A rows for null directions are drawn from here: seeded, so resumes agree.
        return torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + server_round * 101 + salt)

    def client_state(
        self, server_round: int, global_state: AdapterState, client_id: int
    ) -> AdapterState:
        rank = self.cfg.lora.rank_of(client_id)
        if rank == self.cfg.lora.r:
            return global_state
        state, _ = truncate_lora(global_state, rank, self._generator(server_round, client_id + 1))
        return state

    def aggregate_fit(
        self, server_round: int, global_state: AdapterState, updates: list[ClientUpdate]
    ) -> tuple[AdapterState, dict[str, float]]:
        for update in updates:
            # A defence's combined reply (fedit.robust) is at the global rank.
            rank = (
                self.cfg.lora.r
                if update.client_id == COMBINED_CLIENT_ID
                else self.cfg.lora.rank_of(update.client_id)
            )
            expected = _rank_shapes(global_state, rank)
            validate_updates(expected, [update])
        state, errors = exact_lora_aggregate(
            [u.state for u in updates],
            [u.num_examples for u in updates],
            self.cfg.lora.r,
            self._generator(server_round, 0),
        )
        summary = {key: value for key, value in errors.items() if "/" not in key}
        return state, summary
