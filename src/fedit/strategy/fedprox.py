"""FedProx: FedAvg whose clients add a proximal term that keeps them near the global adapter."""

from __future__ import annotations

from typing import Any

from fedit.strategy.fedavg import FedAvg


class FedProx(FedAvg):
    """Li et al. 2020, "Federated Optimization in Heterogeneous Networks".

    Each client minimises ``h_k(w) = F_k(w) + μ/2 ‖w − w^t‖²`` over the LoRA parameters, with
    ``w^t`` the global adapter it received and ``μ = strategy.proximal_mu`` (the paper tries
    0.001, 0.01, 0.1 and 1; default 0.01). The server aggregates as FedAvg.
    """

    def fit_config(self, client_id: int, lr: float) -> dict[str, Any]:
        config = super().fit_config(client_id, lr)
        config["proximal_mu"] = self.cfg.strategy.proximal_mu
        return config
