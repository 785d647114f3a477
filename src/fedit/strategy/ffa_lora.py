"""FFA-LoRA: A stays frozen at its shared initialisation; only B is trained and averaged."""

from __future__ import annotations

import dataclasses

from fedit.strategy.aggregate import validate_updates, weighted_average
from fedit.strategy.fedavg import FedAvg
from fedit.types import AdapterState, ClientUpdate, FitConfig


def is_lora_b(name: str) -> bool:
    """Whether a peft state-dict key is a LoRA B matrix."""
    return ".lora_B." in name


class FfaLora(FedAvg):
    """Sun et al., ICLR 2024, "Improving LoRA in Privacy-preserving Federated Learning".

    Every client shares the same A (the seeded initialisation), so Σ p_k B_k A = (Σ p_k B_k) A:
    averaging B alone is the exact average of the updates, and the upload is halved because
    clients send only B. The paper also scales alpha up to compensate for the frozen A; that is
    left to ``lora.alpha``.
    """

    def fit_config(self, server_round: int, client_id: int, lr: float) -> FitConfig:
        return dataclasses.replace(
            super().fit_config(server_round, client_id, lr), trainable="lora_B"
        )

    def aggregate_fit(
        self, server_round: int, global_state: AdapterState, updates: list[ClientUpdate]
    ) -> tuple[AdapterState, dict[str, float]]:
        validate_updates(global_state, updates)
        names = [name for name in global_state if is_lora_b(name)]
        averaged = weighted_average(
            [{name: u.state[name] for name in names} for u in updates],
            [u.num_examples for u in updates],
        )
        return {**global_state, **averaged}, {}
